"""`heimdall demo` as the README runs it: every step really happens, summary.json says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    out = tmp_path / "heimdall-demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "HEIMDALL_STAGE"}
    done = subprocess.run(
        [sys.executable, "-m", "heimdall.cli", "demo", "--out", str(out), "--emulator-port", "0"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["export_job_status"] == "SUCCEEDED"
    assert (
        summary["model_id"]
        and summary["imported_model_id"]
        and summary["model_id"] != summary["imported_model_id"]
    )
    assert len(summary["bundle_sha256"]) == 64
    events = summary["events"]
    assert events.count("Checkpoint Received") == 1, events
    # The checkpoint's job, then the imported model's (its bundle converted on this instance).
    for expected in ("Export Job Submitted", "Export Job Started", "Export Job Succeeded"):
        assert events.count(expected) == 2, events
    assert events.count("Bundle Indexed") == 2  # the job's bundle, then the re-import
    assert summary["imported_entry"]["display_name"].endswith(" (Imported)")
    assert summary["imported_entry"]["onnx_sha256"] == summary["registry_entry"]["onnx_sha256"]
    assert summary["fp32_max_abs_err"] <= 1e-5
    assert summary["formats"]["tensorrt"]["status"] == "skipped"
    assert (out / "bundle" / "export-package.zip").is_file()
    assert summary["elapsed_s"] > 0
    deployment = summary["deployment"]
    assert deployment["endpoint"] == f"/v1/infer/{deployment['deployment_id']}"
    assert deployment["max_abs_err_vs_pytorch"] <= 1e-4 and deployment["latency_ms"] > 0
    assert events.count("Deployment Activated") == 1, events
    for step in ("rebuilt", "deployed", "inferred"):
        assert f"✓ {step}" in done.stdout, done.stdout
    rebuilt = summary["rebuilt"]
    assert rebuilt["source"] == "bundle" and rebuilt["formats"]["onnx_int8"]["status"] == "built"
    assert 0 < rebuilt["int8_max_abs_err_vs_onnx"] <= 0.1
    assert rebuilt["formats"]["tensorrt"]["status"] == "skipped"
