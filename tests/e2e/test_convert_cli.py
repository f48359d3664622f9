"""`heimdall convert` as a user runs it: a checkpoint in, every format, the bundle verified, exit codes."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from tests.support.e2e import heimdall

from heimdall.contracts.jobs import ConversionResult
from heimdall_batch.architectures import resolve

MANIFEST: dict[str, Any] = {
    "model_name": "localization-net",
    "version": "2.1.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
    "normalization_stats": {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]},
    "training_config": {"epochs": 3, "optimizer": "adam"},
    "sample_predictions": [
        {"sample_id": "s1", "input_metadata": {"frequency_mhz": 145.0}, "ground_truth": {"latitude": 1.0}}
    ],
}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in resolve("localization_net")().state_dict().items()}


def test_convert_every_format_then_verify_the_bundle(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    checkpoint = tmp_path / "in" / "model.safetensors"
    checkpoint.parent.mkdir()
    save_file(weights, str(checkpoint))
    (checkpoint.parent / "heimdall.json").write_text(json.dumps(MANIFEST))  # found beside the checkpoint
    out = tmp_path / "out"
    done = heimdall(
        "convert", checkpoint, "-o", out, "--formats", "onnx,torchscript,onnx_fp16,onnx_int8,tensorrt"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    statuses = {o.format.value: o.status.value for o in result.formats}
    assert statuses == {
        "onnx": "built",
        "torchscript": "built",
        "onnx_fp16": "built",
        "onnx_int8": "built",
        "tensorrt": "skipped",
    }
    tensorrt = result.formats[-1]
    assert tensorrt.reason and ("CUDA" in tensorrt.reason or "TensorRT" in tensorrt.reason)
    assert not list(out.glob("*.engine"))  # skipped means no engine, not a pretend one
    stages = {s.name: s.status for s in result.stages}
    assert stages["tensorrt"] == "skipped" and stages["onnx_int8"] == "ok" and stages["bundle"] == "ok"
    onnx = result.formats[0]
    assert {c.batch_size for c in onnx.parity} == {1, 8}
    assert max(c.max_abs_err for c in onnx.parity) <= 1e-5
    assert result.benchmark is not None and set(result.benchmark.speedup) == {"1", "32"}
    # Every output is listed with its hash; result.json itself is written last and not listed.
    assert "result.json" not in result.outputs
    assert {p.name for p in out.iterdir() if p.is_file()} == set(result.outputs) | {"result.json"}
    with zipfile.ZipFile(out / "export-package.zip") as package:
        names = set(package.namelist())
    assert {
        "model.onnx",
        "model_int8.onnx",
        "metadata.json",
        "runtimes/python/model_wrapper.py",
        "triton/localization-net/config.pbtxt",
        "triton/localization-net/1/model.onnx",
    } <= names
    bundle = out / "localization-net-v2.1.0.heimdall"
    verify = heimdall("bundle", "verify", bundle, "--json")
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["valid"] and report["onnx_sha256"] == onnx.sha256
    inspect = json.loads(heimdall("bundle", "inspect", bundle, "--json").stdout)
    assert set(inspect["components"]) >= {"training_config", "normalization_stats", "sample_predictions"}


def test_embedded_manifest_in_a_pt_checkpoint(tmp_path: Path, weights: dict[str, torch.Tensor]) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save({"state_dict": weights, "heimdall": MANIFEST, "epoch": 3}, checkpoint)
    done = heimdall("convert", checkpoint, "-o", tmp_path / "out", "--no-benchmark", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] == "SUCCEEDED" and result["version"] == "2.1.0"


class Gadget:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize(
    ("case", "exit_code", "code"),
    [
        ("gadget", 3, "UNSAFE_CHECKPOINT"),
        ("unknown", 4, "UNSUPPORTED_ARCHITECTURE"),
        ("shapes", 4, "SHAPE_MISMATCH"),
        ("no-manifest", 3, "INVALID_MANIFEST"),
    ],
)
def test_refusals_exit_with_the_design_codes(
    tmp_path: Path, weights: dict[str, torch.Tensor], case: str, exit_code: int, code: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    manifest = dict(MANIFEST)
    checkpoint = folder / "model.pt"
    if case == "gadget":
        torch.save({"state_dict": weights, "evil": Gadget()}, checkpoint)
    elif case == "shapes":
        torch.save({k: (v[:1] if v.ndim else v) for k, v in weights.items()}, checkpoint)
    else:
        torch.save(weights, checkpoint)
    if case == "unknown":
        manifest["architecture"] = "resnet9000"
    if case != "no-manifest":
        (folder / "heimdall.json").write_text(json.dumps(manifest))
    done = heimdall("convert", checkpoint, "-o", tmp_path / "out", "--no-benchmark", timeout=300)
    assert done.returncode == exit_code, done.stderr[-2000:]
    assert code in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (result["status"], result["error_code"], result["exit_code"]) == ("FAILED", code, exit_code)
    assert not (Path.cwd() / "PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_a_failed_format_fails_the_run_as_result_json_says(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    manifest = dict(MANIFEST, tolerances={"onnx_fp16": 1e-12})  # no FP16 model meets it
    (folder / "heimdall.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    done = heimdall(
        "convert", folder / "model.safetensors", "-o", out, "--formats", "onnx,onnx_fp16", "--no-benchmark"
    )
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["error_code"], result["exit_code"]) == ("FAILED", "FORMAT_FAILED", 4)
    assert done.returncode == result["exit_code"], done.stderr[-2000:]
    assert "FORMAT_FAILED" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert (out / "model.onnx").is_file() and not (out / "model_fp16.onnx").exists()


def test_a_lightning_checkpoint_under_its_own_name_converts(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    checkpoint = folder / "epoch=1-step=4.ckpt"  # Lightning's name; torch names the zip's folder after it
    torch.save(
        {
            "epoch": 1,
            "global_step": 4,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in weights.items()},
            "hyper_parameters": {"lr": 0.001, "channels": [16, 32, 64, 128]},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        checkpoint,
    )
    (folder / "heimdall.json").write_text(json.dumps(MANIFEST))
    out = tmp_path / "out"
    done = heimdall("convert", checkpoint, "-o", out, "--no-benchmark", "--formats", "onnx", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "weights: 'state_dict', prefix 'model.' removed" in done.stdout
    result = ConversionResult.model_validate_json((out / "result.json").read_text())
    assert result.weights is not None
    assert (result.weights.key_path, result.weights.stripped_prefix) == ("state_dict", "model.")


def test_model_and_model_ema_are_refused_until_the_manifest_names_one(
    tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    checkpoint = folder / "model (1).pt"
    torch.save({"model": weights, "model_ema": weights, "epoch": 9}, checkpoint)
    (folder / "heimdall.json").write_text(json.dumps(MANIFEST))
    done = heimdall("convert", checkpoint, "-o", tmp_path / "out", "--no-benchmark", "--formats", "onnx")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "AMBIGUOUS_WEIGHTS" in done.stderr and "model_ema" in done.stderr
    (folder / "heimdall.json").write_text(json.dumps({**MANIFEST, "state_dict_key": "model_ema"}))
    done = heimdall(
        "convert", checkpoint, "-o", tmp_path / "out", "--no-benchmark", "--formats", "onnx", "--json"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["weights"] == {
        "key_path": "model_ema", "stripped_prefix": "", "ema": True, "chosen_by": "manifest"
    }
