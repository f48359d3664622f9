"""Schemathesis against the local stack's real HTTP API (``make fuzz-api``; CI runs it).

Starts the embedded local stack with the API on a free port, registers a model (so that generated
requests for real ids reach real records, not only 404s), and runs ``schemathesis run`` on the served
OpenAPI document with the stack's bearer token; then deploys the model as a platform endpoint and runs
it again on the inference endpoint's document (``/v1/openapi.json``, its ``deployment_id`` pinned to
that endpoint) with the endpoint's API key, so that generated bodies reach the model. The checks are
the ones the issues ask for: no 5xx, every status code, content type, header and body as the document
declares. Exit status: 0 when both runs found nothing, else schemathesis' own.

Usage: ``python tests/e2e/fuzz_api.py [--max-examples N] [--seed S] [extra schemathesis options]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from heimdall.bundle import parse_metadata, write_bundle
from heimdall.local.stack import LocalStack
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.sample_models import localization_net_onnx

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
    s3 = stack.client("s3")
    names = stack.names
    assert names is not None, "the stack is started"
    api_url, token = _served(stack)
    s3.upload_file(str(path), names.ingest_bucket, "bundles/fuzz/seed.heimdall")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listing = httpx.get(
            f"{api_url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        items = listing.json().get("items", []) if listing.status_code == 200 else []
        if items:
            return str(items[0]["model_id"])
        time.sleep(0.5)
    raise SystemExit("the seed bundle was not indexed within 120 s")


def _served(stack: LocalStack) -> tuple[str, str]:
    """The started stack's API base URL and default bearer token (it is started with an API port)."""
    api_url, token = stack.api_url, stack.api_token
    if api_url is None or token is None:
        raise SystemExit("the local stack serves no HTTP API")
    return api_url, token


def _endpoint(stack: LocalStack, model_id: str) -> tuple[str, str]:
    """An enterprise platform endpoint of the seed model: (deployment id, API key)."""
    api_url, token = _served(stack)
    created = httpx.post(
        f"{api_url}/api/v1/deployments",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "type": "platform_endpoint",
            "name": "fuzz",
            "model_id": model_id,
            "options": {"tier": "enterprise"},
        },
        timeout=60,
    )
    if created.status_code != 201:
        raise SystemExit(f"creating the fuzz endpoint answered {created.status_code}: {created.text}")
    return str(created.json()["deployment"]["deployment_id"]), str(created.json()["api_key"])


def _pinned_document(url: str, deployment_id: str, workdir: Path) -> Path:
    """The served inference document with every ``deployment_id`` pinned to the fuzz endpoint's id,
    so that generated requests carry its key to its model (bodies, not ids, are what is fuzzed)."""
    document = httpx.get(url, timeout=60).raise_for_status().json()
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "deployment_id":
                    parameter["schema"] = {"type": "string", "enum": [deployment_id]}
    path = workdir / "inference-openapi.json"
    path.write_text(json.dumps(document))
    return path


def _schemathesis(schema: str, token: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        schema,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261125)
    args, extra = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory(prefix="heimdall-fuzz-") as tmp:
        workdir = Path(tmp)
        with LocalStack(port=0, api_port=0, workdir=workdir, log_level="ERROR") as stack:
            model_id = _seed_model(stack, workdir)
            api_url, token = _served(stack)
            print(f"local API on {api_url}, seed model {model_id}", flush=True)
            # The inference endpoint first: the API's run may delete what it finds (the model too).
            deployment_id, key = _endpoint(stack, model_id)
            document = _pinned_document(f"{api_url}/v1/openapi.json", deployment_id, workdir)
            print(f"inference endpoint {deployment_id}", flush=True)
            inference = subprocess.run(
                _schemathesis(str(document), key, args, ["--url", api_url, *extra]), check=False
            ).returncode
            api = subprocess.run(
                _schemathesis(f"{api_url}/api/v1/openapi.json", token, args, extra), check=False
            ).returncode
            return inference or api


if __name__ == "__main__":
    sys.exit(main())
