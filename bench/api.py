"""Benchmark the HTTP API on the embedded local stack: listing and export, over HTTP and in-process.

Starts :class:`heimdall.local.stack.LocalStack` in this process (moto's server, the local gateway on a
free port calling ``functions/api/app.py``), then:

* registers ``--models`` models (default 100): one real bundle around a ``--onnx-mb`` MiB ONNX model
  (:func:`heimdall.testing.sample_models.padded_onnx`, default 1 MiB) imported through
  ``POST /api/v1/models/import``,
  and the rest as registry records written through the registry adapter (what indexing writes);
* ``list``: ``GET /api/v1/models`` (the first page at the default page size, 50 models) through real
  HTTP from ``--clients`` concurrent clients (default 8), ``--requests`` requests in all (default 200),
  after a warm-up; p50/p99 latency per request as each client sees it, and requests per second;
* ``export``: ``GET /api/v1/models/{id}/export`` of the 1 MiB model the same way
  (``--export-requests``, default 160): each answer is the whole bundle (about 1.4 MB);
* ``inprocess_*``: the same two requests handed to the same handler as API Gateway v2 events in this
  process, one at a time (no HTTP, no gateway): what the handler and the emulator cost without the
  local HTTP server;
* ``handler_only_*``: the same again with the registry and object store swapped for in-memory copies
  of the same records and bundle: the handler's own cost, without the emulator (moto's response
  serialisation costs about 8 ms per DynamoDB item here, which dominates the listing).

It prints a table, then one JSON object on the last line with at least ``list_p50_ms``,
``list_p99_ms``, ``export_p50_ms``, ``export_p99_ms`` and ``inprocess_list_p50_ms``.

    .venv/bin/python bench/api.py [--models 100] [--clients 8] [--requests 400] [--onnx-mb 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from heimdall import wiring
from heimdall.api.deps import use_deps
from heimdall.bundle.reader import parse_metadata
from heimdall.bundle.writer import write_bundle
from heimdall.domain.records import ModelRecord, utcnow
from heimdall.local.payload_format import HttpRequest, build_event
from heimdall.local.stack import LocalStack, invoker, load_function
from heimdall.logic.api import ApiDeps
from heimdall.settings import MIB
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.sample_models import padded_onnx
from heimdall.testing.storage import InMemoryObjectStore


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _summary(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies_ms), 3),
        "p99_ms": round(_percentile(latencies_ms, 99), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
    }


def _bundle(onnx_mb: float, path: Path) -> Path:
    """A canonical bundle around a padded ONNX model whose metadata describes that model's shapes."""
    import onnx as onnx_lib

    onnx = padded_onnx(int(onnx_mb * MIB))
    graph = onnx_lib.load_model_from_string(onnx).graph

    def shape(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    doc = sample_bundle_metadata(
        onnx,
        model={
            "model_name": "bench-api",
            "version": "1.0.0",
            "architecture": "padded",
            "input_shape": shape(graph.input[0]),
            "output_shape": [shape(graph.output[0])],
        },
    )
    bundle, _ = parse_metadata(doc)
    write_bundle(bundle, onnx, path)
    return path


def _seed_records(count: int, owner: str) -> None:
    """``count`` model records, as indexing writes them (listing reads records, not objects)."""
    registry = wiring.api_deps().registry
    for i in range(count):
        registry.put_model(
            ModelRecord(
                model_id=str(uuid.uuid4()),
                owner=owner,
                model_name=f"bench-listed-{i:03d}",
                version="1.0.0",
                architecture="mlp",
                onnx_sha256="0" * 64,
                onnx_size_bytes=1024,
                components=["training_config", "performance_metrics"],
                created_at=utcnow(),
            )
        )


def _in_memory_copy(owner: str, model_id: str) -> Callable[[], ApiDeps]:
    """The wired collaborators with the registry and the store replaced by in-memory copies.

    The same records and the same stored bundle, without the emulator: what the handler itself costs.
    """
    real = wiring.api_deps()
    registry, store = InMemoryRegistry(), InMemoryObjectStore()
    for record in real.registry.list_models(owner, limit=1000).items:
        registry.put_model(record)
    bundle_uri = f"s3://{real.names.artifacts_bucket}/{real.registry.get_model(owner, model_id).bundle_key}"
    store.put_bytes(bundle_uri, real.store.get_bytes(bundle_uri, max_bytes=64 * MIB))
    deps = replace(real, registry=registry, claims=registry, store=store)
    return lambda: deps


def _load(
    url: str, headers: dict[str, str], *, clients: int, requests: int, expect: int
) -> tuple[list[float], float, int]:
    """``requests`` GETs of ``url`` from ``clients`` threads; latencies (ms), wall seconds, bytes/answer."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    sizes: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as http:
            barrier.wait()
            for _ in range(n):
                start = time.perf_counter()
                response = http.get(url)
                elapsed = (time.perf_counter() - start) * 1000
                if response.status_code != expect:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                with lock:
                    latencies.append(elapsed)
                    sizes.append(len(response.content))

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{url}: unexpected answer {errors[0]}")
    return latencies, wall, sizes[0] if sizes else 0


def _inprocess(handler: Callable[..., Any], target: str, token_sub: str, runs: int) -> list[float]:
    """The handler called with the gateway's own event for ``GET target``, ``runs`` times (ms each)."""
    from heimdall.local.api_tokens import ApiIdentity

    identity = ApiIdentity(sub=token_sub, scopes=("heimdall/read", "heimdall/write"))
    request = HttpRequest(
        method="GET", target=target, headers=[("host", "127.0.0.1")], body=b"", source_ip="127.0.0.1"
    )

    class _Context:
        function_name = "api"
        memory_limit_in_mb = 2048
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
        aws_request_id = "bench"

    out: list[float] = []
    for i in range(runs):
        event = build_event(request, identity=identity, request_id=f"bench-{i}")
        start = time.perf_counter()
        response = handler(event, _Context())
        out.append((time.perf_counter() - start) * 1000)
        if response["statusCode"] != 200:
            raise SystemExit(
                f"in-process {target}: {response['statusCode']} {str(response.get('body'))[:200]}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--export-requests", type=int, default=160)
    parser.add_argument("--inprocess-runs", type=int, default=100)
    parser.add_argument("--onnx-mb", type=float, default=1.0)
    args = parser.parse_args(argv)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="heimdall-bench-api-") as tmp:
        workdir = Path(tmp)
        with LocalStack(port=0, api_port=0, workdir=workdir / "stack", log_level="ERROR") as stack:
            base, token = stack.api_url, stack.api_token
            assert base is not None and token is not None, "started with an API port"
            headers = {"Authorization": f"Bearer {token}"}
            owner = stack.tokens.table[token].sub if stack.tokens else "local-user"
            say(f"local API on {base}; importing a {args.onnx_mb} MiB model")
            bundle = _bundle(args.onnx_mb, workdir / "bench.heimdall")
            imported = httpx.post(
                f"{base}/api/v1/models/import",
                content=bundle.read_bytes(),
                headers={**headers, "Content-Type": "application/json"},
                timeout=120,
            )
            if imported.status_code != 201:
                raise SystemExit(f"import failed: {imported.status_code} {imported.text[:300]}")
            model_id = imported.json()["model"]["model_id"]
            say(f"registering {args.models - 1} more models")
            _seed_records(args.models - 1, owner)
            # The request as a client makes it: the first page, at the default page size.
            list_path = "/api/v1/models"
            export_path = f"/api/v1/models/{model_id}/export"
            everything = httpx.get(f"{base}/api/v1/models?limit=1000", headers=headers, timeout=60)
            if len(everything.json()["items"]) != args.models:
                raise SystemExit(f"expected {args.models} models, got {len(everything.json()['items'])}")
            page_items = len(httpx.get(f"{base}{list_path}", headers=headers, timeout=60).json()["items"])

            say("warming up")
            _load(f"{base}{list_path}", headers, clients=args.clients, requests=args.clients * 2, expect=200)
            _load(f"{base}{export_path}", headers, clients=args.clients, requests=args.clients, expect=200)
            say(f"list: {args.requests} requests from {args.clients} clients")
            list_lat, list_wall, list_bytes = _load(
                f"{base}{list_path}", headers, clients=args.clients, requests=args.requests, expect=200
            )
            say(f"export: {args.export_requests} requests from {args.clients} clients")
            export_lat, export_wall, export_bytes = _load(
                f"{base}{export_path}",
                headers,
                clients=args.clients,
                requests=args.export_requests,
                expect=200,
            )
            say("in-process")
            handler = invoker(load_function("api"))
            _inprocess(handler, list_path, owner, 5)
            inproc_list = _inprocess(handler, list_path, owner, args.inprocess_runs)
            inproc_export = _inprocess(handler, export_path, owner, max(10, args.inprocess_runs // 4))
            say("in-process, in-memory fakes")
            use_deps(_in_memory_copy(owner, model_id))
            try:
                _inprocess(handler, list_path, owner, 5)
                fake_list = _inprocess(handler, list_path, owner, args.inprocess_runs)
                fake_export = _inprocess(handler, export_path, owner, max(10, args.inprocess_runs // 4))
            finally:
                use_deps(None)

    listing, exporting = _summary(list_lat), _summary(export_lat)
    in_list, in_export = _summary(inproc_list), _summary(inproc_export)
    fake_l, fake_e = _summary(fake_list), _summary(fake_export)
    result: dict[str, Any] = {
        "list_p50_ms": listing["p50_ms"],
        "list_p99_ms": listing["p99_ms"],
        "list_rps": round(len(list_lat) / list_wall, 1),
        "list_response_bytes": list_bytes,
        "export_p50_ms": exporting["p50_ms"],
        "export_p99_ms": exporting["p99_ms"],
        "export_rps": round(len(export_lat) / export_wall, 1),
        "export_response_bytes": export_bytes,
        "inprocess_list_p50_ms": in_list["p50_ms"],
        "inprocess_list_p99_ms": in_list["p99_ms"],
        "inprocess_export_p50_ms": in_export["p50_ms"],
        "inprocess_export_p99_ms": in_export["p99_ms"],
        "handler_only_list_p50_ms": fake_l["p50_ms"],
        "handler_only_export_p50_ms": fake_e["p50_ms"],
        "models": args.models,
        "models_per_page": page_items,
        "clients": args.clients,
        "requests": args.requests,
        "export_requests": args.export_requests,
        "onnx_mb": args.onnx_mb,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
    rows = [
        (f"GET models (HTTP, {args.clients} clients)", listing, result["list_rps"]),
        (f"GET export (HTTP, {args.clients} clients)", exporting, result["export_rps"]),
        ("GET models (in-process)", in_list, ""),
        ("GET export (in-process)", in_export, ""),
        ("GET models (in-memory fakes)", fake_l, ""),
        ("GET export (in-memory fakes)", fake_e, ""),
    ]
    print(f"{'measure':<30}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, figures, rps in rows:
        print(f"{name:<30}{figures['p50_ms']:>10.2f}{figures['p99_ms']:>10.2f}{rps:>10}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
