"""Schemathesis against the local stack's real HTTP API (``make fuzz-api``; CI runs it).

Starts the embedded local stack with the API on a free port, registers a model (so that generated
requests for real ids reach real records, not only 404s), and runs ``schemathesis run`` on the served
OpenAPI document with the stack's bearer token. The checks are the ones the issue asks for: no 5xx,
every status code, content type, header and body as the document declares. Exit status is
schemathesis' own (0 when nothing failed).

Usage: ``python tests/e2e/fuzz_api.py [--max-examples N] [--seed S] [extra schemathesis options]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from heimdall.bundle import parse_metadata, write_bundle
from heimdall.local.stack import LocalStack
from heimdall.samples import localization_net_onnx, sample_bundle_metadata

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


def _seed_model(stack: LocalStack, workdir: Path) -> str:
    """Drop a real bundle into the ingest bucket and wait until it is indexed; returns its model id."""
    onnx = localization_net_onnx()
    bundle, _ = parse_metadata(sample_bundle_metadata(onnx))
    path = workdir / "seed.heimdall"
    write_bundle(bundle, onnx, path)
    s3 = stack.client("s3")  # type: ignore[attr-defined]
    names = stack.names  # type: ignore[attr-defined]
    s3.upload_file(str(path), names.ingest_bucket, "bundles/fuzz/seed.heimdall")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listing = httpx.get(
            f"{stack.api_url}/api/v1/models",  # type: ignore[attr-defined]
            headers={"Authorization": f"Bearer {stack.api_token}"},  # type: ignore[attr-defined]
            timeout=30,
        )
        items = listing.json().get("items", []) if listing.status_code == 200 else []
        if items:
            return str(items[0]["model_id"])
        time.sleep(0.5)
    raise SystemExit("the seed bundle was not indexed within 120 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261125)
    args, extra = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory(prefix="heimdall-fuzz-") as tmp:
        workdir = Path(tmp)
        with LocalStack(port=0, api_port=0, workdir=workdir, log_level="ERROR") as stack:
            model_id = _seed_model(stack, workdir)
            api_url = stack.api_url  # type: ignore[attr-defined]
            token = stack.api_token  # type: ignore[attr-defined]
            print(f"local API on {api_url}, seed model {model_id}", flush=True)
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{api_url}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                CHECKS,
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--phases",
                "examples,coverage,fuzzing",
                "--workers",
                "1",
                "--request-timeout",
                "60",
                "--max-redirects",
                "0",
                "--suppress-health-check",
                "all",
                *extra,
            ]
            return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
