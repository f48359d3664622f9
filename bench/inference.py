"""Benchmark the inference endpoint (``POST /v1/infer/{id}``) on the real localization net.

The model is the reference ``localization_net`` (``heimdall_batch.architectures.resolve``), built with
seeded weights in eval mode and exported with ``torch.onnx.export`` (opset 17, input ``input``
float32 ``[batch, 3, 128, 32]`` with the symbolic ``batch`` axis, outputs ``positions`` and
``uncertainties``). Requests carry ``{"input": nested list}`` of seeded random values in [0, 1),
rounded to ``--decimals`` places (default 4, about 7 bytes a value: 85 kB at batch 1, 2.7 MB at
batch 32; the full float repr would be 7.6 MB at batch 32, over the endpoint's 6 MiB body limit).
For each ``--batch`` size (default 1 and 32) it measures:

* ``bare_run_ms``: ``InferenceSession.run`` alone on the same model and input, with the session the
  endpoint creates (``heimdall.inference.sessions.create_session``: same options, same provider).
* ``inprocess_ms``: ``functions/infer/app.py``'s ``lambda_handler`` called in this process with the
  gateway's own API Gateway v2 event (:func:`heimdall.local.payload_format.build_event`, built outside the
  timer), as the local stack calls it (:func:`heimdall.local.stack.invoker`, metrics disabled as
  there). Its collaborators (``use_serving_deps``) are an ``InMemoryDeploymentStore`` holding one
  enterprise platform endpoint and its key, and an ``InMemoryObjectStore`` holding the model: the
  handler's own cost (key check, rate limit, JSON parse, input check, run, usage, JSON encode,
  Powertools) without the emulator. The serving deps' clock (``ServingDeps.now``, what the rate
  limit and the usage read) is a fake one that moves one minute per reading, so every request falls
  in a fresh rate-limit window and 1000/min never refuses one; the key's rate log is still read,
  checked and written as usual. The session is loaded by a warm-up request first (reported as
  ``inprocess_cold_ms``). Bare runs and handler calls are interleaved (one of each per round) so
  that background load slows both alike; ``inprocess_overhead_ms = inprocess_ms - bare_run_ms``.
* the **breakdown** of that overhead: each step of the handler timed on its own on the same request
  (medians, interleaved rounds): the key and the deployment (``authorize_request``: one
  ``BatchGetItem`` on DynamoDB), the rate limit, the body and its JSON decode (``raw_body`` + the
  handler's ``_payload``), ``prepare_inputs``, ``session.run``, ``tolist`` of the outputs, the usage
  counters, the JSON encode of the answer; ``powertools_wrappers`` is the handler minus
  ``app.resolve`` (Logger, Tracer, Metrics decorators), ``resolver_and_rest`` is ``app.resolve``
  minus the steps (routing, the event data class, the session cache lookup, the response).
  At batch 1 the same handler is also timed on a full-precision body (``x.tolist()``, as numpy
  clients send it: ``inprocess_full_precision_ms``). The target is an overhead of at most 2 ms at
  batch 1 (``target_met``).
* ``http_ms``: the same request through the local stack's HTTP server, one client with keep-alive
  (``LocalStack(port=0, api_port=0)`` in this process: moto's server, the local gateway calling the
  infer function with its wired collaborators, DynamoDB and S3 on the emulator). The model is
  imported as a bundle (``POST /api/v1/models/import``) and served by enterprise platform endpoints
  made with ``POST /api/v1/deployments``. The wired serving deps are used with one change: model
  files are fetched to a directory of the benchmark's own (``ServingDeps.workdir``), not the shared
  ``/tmp/heimdall-models``.
* ``cold_first_ms``: the first request (batch 1, over HTTP) after the endpoint's session cache and
  model directory were emptied (a fresh ``ModelCache`` and an empty ``workdir`` in the wired deps):
  the fetch from the emulator's S3, sha256, the structural pass (a child process), the session,
  the run. ``--cold-runs`` of them (default 3), median; ``cold_breakdown_ms`` times those steps in
  this process on the same objects. onnxruntime is already imported here: a Lambda cold start adds
  the import and the container's init on top.
* ``rps_8_clients``: requests per second with ``--clients`` (default 8) threads, each with its own
  ``httpx.Client``, ``--requests`` requests in all. Inference requests run concurrently in the local
  gateway; only their rate-limit and usage writes take the stack's lock (moto's DynamoDB does not make
  conditional writes atomic under concurrency). In AWS each concurrent request gets its own Lambda
  container: this is the local stack's ceiling on two cores, not the endpoint's.
* ``inprocess_binary_ms``: the in-process handler with the input sent as a binary tensor (base64 of
  the raw float32 values) instead of nested lists.

Rate limits over HTTP are real (1000 requests a minute per enterprise key, counted in DynamoDB): each
phase gets its own deployments, one per 900 requests, and spreads its requests over their keys, so
no key reaches its limit whatever ``--requests`` is.

Reading the numbers (2 cores, measured here): the in-process overhead at batch 1 with a nested-list
body is about 2 ms: the body's JSON decode (orjson, about 0.5 ms for 12 288 numbers), ``prepare_inputs``
(about 0.7 ms, most of it ``np.asarray`` of the nested lists) and Powertools (routing, the Logger,
Tracer and Metrics wrappers, about 0.5 ms). The same request as a binary tensor
(``{"dtype", "shape", "data_b64"}``: ``inprocess_binary_ms``) skips the number lists and costs well
under 1 ms over the bare run; at batch 32 the list body's decode and walk are most of the request, the
binary one a few ms. Over HTTP, the emulator's DynamoDB calls (the key and the deployment, the
rate-limit log, the usage counters: ``wired_store_calls_ms``, each timed alone) are most of
``http_ms``. The local gateway runs inference requests concurrently (only the rate-limit and usage
writes take the stack's lock), but moto's server and the handler share this process's two cores and the GIL:
``rps_8_clients`` is this machine's ceiling, not the endpoint's. The cold request is mostly the
structural pass's child process (an interpreter, ``import onnx``, the checker).

It prints a table, then one JSON object on the last line with at least ``bare_run_ms``,
``inprocess_ms``, ``inprocess_overhead_ms``, ``http_ms``, ``cold_first_ms`` and ``rps_8_clients``
(batch 1's figures), ``batch_1``/``batch_32`` with every figure of each batch, and ``machine``.
Progress goes to stderr.

    .venv/bin/python bench/inference.py [--requests 100] [--batch 1 32] [--inprocess-runs 200]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import io
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from heimdall import wiring
from heimdall.api.bodies import raw_body
from heimdall.bundle.reader import parse_metadata
from heimdall.bundle.structural import check_structure
from heimdall.bundle.writer import write_bundle
from heimdall.domain.api_keys import authorize_request, generate_api_key, hash_api_key
from heimdall.domain.deployments import RATE_LIMITS, ApiKeyRecord, Deployment, DeploymentType, Tier
from heimdall.inference import app as serving
from heimdall.inference.deps import ServingDeps, use_serving_deps
from heimdall.inference.inputs import prepare_inputs, read_payload
from heimdall.inference.sessions import ModelCache, check_model_file, create_session, run
from heimdall.local.payload_format import HttpRequest, build_event
from heimdall.local.stack import LocalStack, invoker, load_function
from heimdall.settings import get_settings
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.storage import InMemoryObjectStore

INPUT_CHW = (3, 128, 32)
OUTPUT_NAMES = ("positions", "uncertainties")
OPSET = 17
#: Requests per key and phase over HTTP: under the enterprise tier's 1000 a minute, with room.
KEY_BUDGET = 900
TARGET_OVERHEAD_MS = 2.0
#: In-process requests with the wired (emulator) collaborators, at batch 1.
WIRED_RUNS = 20
OWNER = "bench-owner"


# --- the model ---------------------------------------------------------------------------------------


def _localization_onnx(seed: int) -> bytes:
    """The reference localization net with seeded weights, exported as the conversion job exports it."""
    import torch

    from heimdall_batch.architectures import resolve

    torch.manual_seed(seed)
    model = resolve("localization_net")()
    model.eval()
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (torch.zeros(1, *INPUT_CHW, dtype=torch.float32),),
            str(path),
            opset_version=OPSET,
            input_names=["input"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in ("input", *OUTPUT_NAMES)},
            do_constant_folding=True,
            dynamo=False,
        )
        return path.read_bytes()


def _bundle(onnx: bytes) -> bytes:
    """A canonical bundle around the model, its metadata describing the model's shapes."""
    doc = sample_bundle_metadata(
        onnx,
        model={
            "model_name": "bench-inference",
            "version": "1.0.0",
            "architecture": "localization_net",
            "onnx_opset": OPSET,
            "input_shape": [1, *INPUT_CHW],
            "output_shape": [[1, 2], [1, 2]],
        },
    )
    bundle, _ = parse_metadata(doc)
    out = io.BytesIO()
    write_bundle(bundle, onnx, out)
    return out.getvalue()


def _input(batch: int, decimals: int | None) -> tuple[np.ndarray, bytes]:
    """The request's array (float32, as the model receives it) and its JSON body."""
    values = np.random.default_rng(batch).random((batch, *INPUT_CHW), dtype=np.float32)
    source = values if decimals is None else np.round(values.astype(np.float64), decimals)
    listed = source.tolist()
    body = json.dumps({"input": listed}, separators=(",", ":")).encode()
    return np.asarray(listed, dtype=np.float32), body


# --- figures -----------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


# --- in process --------------------------------------------------------------------------------------


class _Context:
    """The parts of Lambda's context the handler's Powertools decorators read."""

    function_name = "infer"
    memory_limit_in_mb = 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:infer"
    aws_request_id = "bench"


def _minute_clock() -> Callable[[], datetime]:
    """A clock that moves one minute per reading: every request gets a fresh rate-limit window."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ticks = itertools.count()
    return lambda: start + timedelta(minutes=next(ticks))


def _inprocess_deps(onnx: bytes, workdir: Path) -> tuple[ServingDeps, str, str]:
    """In-memory serving deps holding one enterprise endpoint of the model; its id and key."""
    settings = get_settings()
    names = settings.resource_names()
    store = InMemoryObjectStore()
    onnx_key = "models/bench-inference/1.0.0/model.onnx"
    store.put_bytes(f"s3://{names.artifacts_bucket}/{onnx_key}", onnx)
    deployments = InMemoryDeploymentStore()
    key_id, key = generate_api_key()
    deployment = Deployment(
        deployment_id=str(uuid.uuid4()),
        owner=OWNER,
        model_id=str(uuid.uuid4()),
        type=DeploymentType.PLATFORM_ENDPOINT,
        name="bench-inprocess",
        tier=Tier.ENTERPRISE,
        key_id=key_id,
        model_version="1.0.0",
        onnx_key=onnx_key,
        onnx_sha256=hashlib.sha256(onnx).hexdigest(),
    )
    deployments.put_deployment(
        deployment,
        api_key=ApiKeyRecord(
            key_id=key_id, deployment_id=deployment.deployment_id, owner=OWNER, key_hash=hash_api_key(key)
        ),
    )
    deps = ServingDeps(
        deployments=deployments,
        store=store,
        names=names,
        limits=settings.bundle_limits(),
        cache=ModelCache(),
        workdir=workdir,
        now=_minute_clock(),
    )
    return deps, deployment.deployment_id, key


def _infer_event(deployment_id: str, key: str, body: bytes, n: int) -> dict[str, Any]:
    request = HttpRequest(
        method="POST",
        target=f"/v1/infer/{deployment_id}",
        headers=[
            ("host", "127.0.0.1"),
            ("content-type", "application/json"),
            ("authorization", f"Bearer {key}"),
        ],
        body=body,
        source_ip="127.0.0.1",
    )
    return build_event(request, identity=None, request_id=f"bench-{n}")


def _checked(response: dict[str, Any], what: str) -> dict[str, Any]:
    if response["statusCode"] != 200:
        raise SystemExit(f"{what}: {response['statusCode']} {str(response.get('body'))[:300]}")
    return response


def _inprocess(
    handler: Callable[..., Any],
    deps: ServingDeps,
    *,
    deployment_id: str,
    key: str,
    batch: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Bare runs, the handler, and the handler's steps one by one, interleaved; medians in ms."""
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

    x, body = _input(batch, args.decimals)
    counter = itertools.count()

    def event() -> dict[str, Any]:
        return _infer_event(deployment_id, key, body, next(counter))

    context: Any = _Context()
    cold = _timed(lambda: _checked(handler(event(), context), "in-process warm-up"))
    answer = json.loads(_checked(handler(event(), context), "in-process")["body"])
    deployment = deps.deployments.get_deployment_any_owner(deployment_id)
    assert deployment.onnx_sha256 is not None
    loaded = deps.cache.get(deployment.model_id, deployment.onnx_sha256)
    assert loaded is not None
    session = loaded.session
    names = [output.name for output in session.get_outputs()]
    expected = session.run(names, {"input": x})
    for name, value in zip(names, expected, strict=True):
        np.testing.assert_allclose(np.asarray(answer["outputs"][name]), value, rtol=1e-6, atol=1e-6)

    proxy = APIGatewayProxyEventV2(event())
    payload = read_payload(raw_body(proxy, max_bytes=deps.max_request_bytes))
    arrays = prepare_inputs(session.get_inputs(), payload)
    values = session.run(names, arrays)
    result = run(session, arrays)
    limit = RATE_LIMITS[Tier.ENTERPRISE]
    document = {
        "deployment_id": deployment_id,
        "model_id": deployment.model_id,
        "model_version": deployment.model_version,
        "outputs": result.outputs,
        "latency_ms": round(result.latency_ms, 4),
        "normalized": False,
    }

    def full_handler() -> None:
        _checked(handler(ev, context), "in-process")

    def resolve() -> None:
        response = serving.app.resolve(ev, context)
        _checked(response, "app.resolve")

    def key_and_deployment() -> None:
        record, _ = authorize_request(deps.deployments, key, deployment_id)
        assert record.key_id

    steps: dict[str, Callable[[], Any]] = {
        "key_and_deployment": key_and_deployment,
        "rate_limit": lambda: deps.deployments.consume_rate_limit(str(deployment.key_id), limit, deps.now()),
        "body_and_json_decode": lambda: read_payload(
            raw_body(APIGatewayProxyEventV2(ev), max_bytes=deps.max_request_bytes)
        ),
        "prepare_inputs": lambda: prepare_inputs(session.get_inputs(), payload),
        "session_run": lambda: session.run(names, arrays),
        "tolist": lambda: {name: value.tolist() for name, value in zip(names, values, strict=True)},
        "usage": lambda: deps.deployments.record_usage(deployment_id, 1.0, deps.now()),
        "json_encode": lambda: json.dumps(document, allow_nan=False, separators=(",", ":")),
    }
    timings: dict[str, list[float]] = {name: [] for name in ("bare_run", "handler", "resolve", *steps)}
    bare_feed = {"input": x}
    rounds = args.inprocess_runs if batch == 1 else max(20, args.inprocess_runs // 8)
    for _ in range(rounds):
        # The handler and app.resolve each right after a bare run, so that their difference is the
        # Powertools wrappers and not where they fall in the round.
        ev = event()
        timings["bare_run"].append(_timed(lambda: session.run(names, bare_feed)))
        timings["handler"].append(_timed(full_handler))
        ev = event()
        timings["bare_run"].append(_timed(lambda: session.run(names, bare_feed)))
        timings["resolve"].append(_timed(resolve))
        for name, step in steps.items():
            timings[name].append(_timed(step))

    bare, handler_ms, resolve_ms = (_median(timings[k]) for k in ("bare_run", "handler", "resolve"))
    breakdown = {name: _median(timings[name]) for name in steps}
    breakdown["resolver_and_rest"] = round(resolve_ms - sum(breakdown.values()), 3)
    breakdown["powertools_wrappers"] = round(handler_ms - resolve_ms, 3)
    figures: dict[str, Any] = {
        "bare_run_ms": bare,
        "bare_run_p99_ms": round(_percentile(timings["bare_run"], 99), 3),
        "inprocess_ms": handler_ms,
        "inprocess_p99_ms": round(_percentile(timings["handler"], 99), 3),
        "inprocess_overhead_ms": round(handler_ms - bare, 3),
        "inprocess_cold_ms": round(cold, 3),
        "app_resolve_ms": resolve_ms,
        "overhead_breakdown_ms": breakdown,
        "inprocess_runs": rounds,
        "body_bytes": len(body),
    }
    # The same request with its input as a binary tensor (base64 of the raw float32 values).
    tensor = {"dtype": "float32", "shape": list(x.shape), "data_b64": base64.b64encode(x.tobytes()).decode()}
    binary_body = json.dumps({"input": tensor}).encode()
    binary: list[float] = []
    binary_bare: list[float] = []
    for _ in range(rounds):
        ev = _infer_event(deployment_id, key, binary_body, next(counter))
        binary_bare.append(_timed(lambda: session.run(names, bare_feed)))
        binary.append(_timed(full_handler))
    figures["inprocess_binary_ms"] = _median(binary)
    figures["inprocess_binary_overhead_ms"] = round(_median(binary) - _median(binary_bare), 3)
    figures["binary_body_bytes"] = len(binary_body)
    if batch == 1:
        _, full_body = _input(batch, None)
        full: list[float] = []
        decode: list[float] = []
        for _ in range(max(20, rounds // 2)):
            ev = _infer_event(deployment_id, key, full_body, next(counter))
            full.append(_timed(full_handler))
            decode.append(_timed(steps["body_and_json_decode"]))
        figures["inprocess_full_precision_ms"] = _median(full)
        figures["full_precision_json_decode_ms"] = _median(decode)
        figures["full_precision_body_bytes"] = len(full_body)
    return figures


# --- over HTTP ---------------------------------------------------------------------------------------


class _Stack:
    """The local stack's API: an admin client, the imported model and its endpoints."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.api_url is not None
        self.base = stack.api_url
        self.admin = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {stack.api_token}"}, timeout=120
        )

    def import_model(self, bundle: bytes) -> str:
        imported = self.admin.post(
            "/api/v1/models/import", content=bundle, headers={"Content-Type": "application/json"}
        )
        if imported.status_code != 201:
            raise SystemExit(f"import failed: {imported.status_code} {imported.text[:300]}")
        return str(imported.json()["model"]["model_id"])

    def endpoints(self, model_id: str, requests: int, name: str) -> list[tuple[str, str]]:
        """Enough enterprise endpoints for ``requests`` requests within the rate limit: (id, key)."""
        out = []
        for i in range(max(1, math.ceil(requests / KEY_BUDGET))):
            created = self.admin.post(
                "/api/v1/deployments",
                json={
                    "type": "platform_endpoint",
                    "name": f"{name}-{i}",
                    "model_id": model_id,
                    "options": {"tier": "enterprise"},
                },
            )
            if created.status_code != 201:
                raise SystemExit(f"deployment failed: {created.status_code} {created.text[:300]}")
            document = created.json()
            out.append((document["deployment"]["deployment_id"], document["api_key"]))
        return out


def _post_load(
    base: str, targets: list[tuple[str, str]], body: bytes, *, clients: int, requests: int
) -> tuple[list[float], float]:
    """``requests`` inferences from ``clients`` threads (own client each); latencies (ms), wall seconds.

    Request ``i`` of all uses ``targets[i % len(targets)]``, so the keys share the load evenly.
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    numbers: Iterator[int] = itertools.count()
    per_client = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            barrier.wait()
            for _ in range(n):
                with lock:
                    deployment_id, key = targets[next(numbers) % len(targets)]
                headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                start = time.perf_counter()
                response = http.post(f"/v1/infer/{deployment_id}", content=body, headers=headers)
                elapsed = (time.perf_counter() - start) * 1000
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:300]}")
                    return
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"POST /v1/infer: unexpected answer {errors[0]}")
    return latencies, wall


def _cold_breakdown(
    deps: ServingDeps, onnx_key: str, sha256: str, x: np.ndarray, workdir: Path
) -> dict[str, float]:
    """The steps of a first request's model load, timed one by one on the wired (emulator) store."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    path = workdir / f"{sha256}.onnx"
    uri = f"s3://{deps.names.artifacts_bucket}/{onnx_key}"
    steps: dict[str, float] = {}
    steps["fetch"] = _timed(lambda: deps.store.download(uri, path, max_bytes=deps.limits.max_onnx_bytes))
    steps["sha256"] = _timed(lambda: check_model_file(path, sha256, deps.limits))
    steps["structural_pass"] = _timed(
        lambda: check_structure(path, None, limits=deps.limits, expected_sha256=sha256)
    )
    holder: list[Any] = []
    steps["session"] = _timed(lambda: holder.append(create_session(path)))
    session = holder[0]
    steps["first_run"] = _timed(lambda: session.run(list(OUTPUT_NAMES), {"input": x}))
    steps["second_run"] = _timed(lambda: session.run(list(OUTPUT_NAMES), {"input": x}))
    return steps


def _settle(stack: LocalStack, quiet_s: float = 1.5, timeout_s: float = 30.0) -> None:
    """Wait until the stack's dispatcher has handled nothing for ``quiet_s`` (the import's S3 events)."""
    deadline = time.monotonic() + timeout_s
    seen, since = dict(stack.handled), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if stack.handled != seen:
            seen, since = dict(stack.handled), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def _wired(
    handler: Callable[..., Any], deps: ServingDeps, target: tuple[str, str], body: bytes, runs: int
) -> tuple[float, dict[str, float]]:
    """The handler in this process with the wired collaborators (DynamoDB and S3 on the emulator),
    and the deployment store's calls alone: what the emulator adds to a request without the gateway."""
    deployment_id, key = target
    context: Any = _Context()
    handler_ms: list[float] = []
    for n in range(runs):
        event = _infer_event(deployment_id, key, body, n)
        start = time.perf_counter()
        _checked(handler(event, context), "in-process, emulator deps")
        handler_ms.append((time.perf_counter() - start) * 1000)
    store = deps.deployments
    key_id = str(store.get_deployment_any_owner(deployment_id).key_id)
    limit = RATE_LIMITS[Tier.ENTERPRISE]

    def key_and_deployment() -> None:
        authorize_request(store, key, deployment_id)

    calls: dict[str, Callable[[], Any]] = {
        "key_and_deployment": key_and_deployment,
        "rate_limit": lambda: store.consume_rate_limit(key_id, limit, deps.now()),
        "usage": lambda: store.record_usage(deployment_id, 1.0, deps.now()),
    }
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            timings[name].append(_timed(call))
    return _median(handler_ms), {name: _median(values) for name, values in timings.items()}


# --- the report --------------------------------------------------------------------------------------


def _machine(
    load_before: tuple[float, float, float], load_after: tuple[float, float, float]
) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("onnxruntime", "numpy", "torch", "aws-lambda-powertools", "moto"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": versions["onnxruntime"],
        "packages": versions,
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
    }


def _table(result: dict[str, Any], batches: list[int]) -> None:
    per = [result[f"batch_{b}"] for b in batches]
    width = 34

    def row(label: str, values: list[Any]) -> None:
        cells = "".join(f"{'-' if v is None else v:>14}" for v in values)
        print(f"{label:<{width}}{cells}")

    row("measure (median ms unless said)", [f"batch {b}" for b in batches])
    row("request body bytes", [p["body_bytes"] for p in per])
    row("bare session.run", [p["bare_run_ms"] for p in per])
    row("handler in-process", [p["inprocess_ms"] for p in per])
    row("  overhead (handler - bare)", [p["inprocess_overhead_ms"] for p in per])
    for step in per[0]["overhead_breakdown_ms"]:
        row(f"    {step}", [p["overhead_breakdown_ms"][step] for p in per])
    row("handler in-process, full floats", [p.get("inprocess_full_precision_ms") for p in per])
    row("handler in-process, binary tensor", [p.get("inprocess_binary_ms") for p in per])
    row("  overhead over the bare run", [p.get("inprocess_binary_overhead_ms") for p in per])
    row("handler in-process, emulator deps", [p["inprocess_wired_ms"] for p in per])
    for call in per[0]["wired_store_calls_ms"]:
        row(f"    store: {call}", [p["wired_store_calls_ms"][call] for p in per])
    row("HTTP, 1 client", [p["http_ms"] for p in per])
    row("HTTP, 1 client, p99", [p["http_p99_ms"] for p in per])
    row(f"HTTP, {result['clients']} clients (req/s)", [p["rps"] for p in per])
    row(f"HTTP, {result['clients']} clients, p50", [p["concurrent_p50_ms"] for p in per])
    print()
    print(f"cold first request (HTTP, batch 1): {result['cold_first_ms']} ms, runs {result['cold_runs_ms']}")
    print(
        "cold first request, steps (ms): "
        + ", ".join(f"{k} {v}" for k, v in result["cold_breakdown_ms"].items())
    )
    if result["target_met"] is not None:
        verdict = "met" if result["target_met"] else "NOT met"
        print(
            f"target: in-process overhead <= {TARGET_OVERHEAD_MS} ms at batch 1: {verdict} "
            f"({result['inprocess_overhead_ms']} ms)"
        )
    print(
        "note: moto's server and the handler share this process's cores (only the counter writes are "
        "serialised): req/s is the local stack's ceiling here, not the endpoint's"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="HTTP requests per measure and batch")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    parser.add_argument("--inprocess-runs", type=int, default=200, help="in-process rounds at batch 1")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--decimals", type=int, default=4, help="decimals of the request's values")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the model's weights")
    args = parser.parse_args(argv)
    batches = sorted(set(args.batch))
    if any(b < 1 for b in batches) or args.requests < 1 or args.clients < 1 or args.cold_runs < 1:
        parser.error("--batch, --requests, --clients and --cold-runs must be positive")
    headline = 1 if 1 in batches else batches[0]

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    # As the local stack runs the handlers: no CloudWatch, so metrics are not flushed to stdout.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    say("exporting localization_net to ONNX")
    onnx = _localization_onnx(args.seed)
    sha256 = hashlib.sha256(onnx).hexdigest()
    per_batch: dict[int, dict[str, Any]] = {b: {} for b in batches}

    with tempfile.TemporaryDirectory(prefix="heimdall-bench-inference-") as tmp:
        workdir = Path(tmp)
        handler = invoker(load_function("infer"))
        deps, deployment_id, key = _inprocess_deps(onnx, workdir / "inprocess-models")
        use_serving_deps(lambda: deps)
        try:
            for batch in batches:
                say(f"in-process, batch {batch}")
                per_batch[batch].update(
                    _inprocess(handler, deps, deployment_id=deployment_id, key=key, batch=batch, args=args)
                )
        finally:
            use_serving_deps(None)

        with LocalStack(port=0, api_port=0, workdir=workdir / "stack", log_level="ERROR") as stack:
            api = _Stack(stack)
            say(f"local stack on {api.base}; importing the model")
            model_id = api.import_model(_bundle(onnx))
            _settle(stack)
            wired = wiring.serving_deps()
            live: list[ServingDeps] = [replace(wired, cache=ModelCache(), workdir=workdir / "models-0")]
            use_serving_deps(lambda: live[0])
            try:
                say(f"cold first requests ({args.cold_runs})")
                cold_targets = api.endpoints(model_id, args.cold_runs, "bench-cold")
                onnx_key = str(wired.deployments.get_deployment_any_owner(cold_targets[0][0]).onnx_key)
                x1, body1 = _input(1, args.decimals)
                cold_runs: list[float] = []
                for i in range(args.cold_runs):
                    live[0] = replace(wired, cache=ModelCache(), workdir=workdir / f"models-cold-{i}")
                    latencies, _ = _post_load(api.base, cold_targets, body1, clients=1, requests=1)
                    cold_runs.append(round(latencies[0], 3))
                steps: dict[str, list[float]] = {}
                for i in range(args.cold_runs):
                    for name, ms in _cold_breakdown(
                        wired, onnx_key, sha256, x1, workdir / f"steps-{i}"
                    ).items():
                        steps.setdefault(name, []).append(ms)
                cold_breakdown = {name: _median(values) for name, values in steps.items()}
                for batch in batches:
                    _, body = _input(batch, args.decimals)
                    warm = args.clients * 2
                    say(f"HTTP, batch {batch}: {args.requests} requests from 1 client")
                    wired_runs = WIRED_RUNS if batch == 1 else max(5, WIRED_RUNS // 4)
                    targets = api.endpoints(
                        model_id, args.requests + warm + wired_runs * 2, f"bench-b{batch}"
                    )
                    _post_load(api.base, targets, body, clients=1, requests=warm)
                    latencies, _ = _post_load(api.base, targets, body, clients=1, requests=args.requests)
                    say(f"in-process with the wired collaborators, batch {batch}")
                    wired_ms, store_ms = _wired(handler, live[0], targets[-1], body, wired_runs)
                    say(f"HTTP, batch {batch}: {args.requests} requests from {args.clients} clients")
                    targets = api.endpoints(model_id, args.requests + warm, f"bench-b{batch}-rps")
                    _post_load(api.base, targets, body, clients=args.clients, requests=warm)
                    concurrent, wall = _post_load(
                        api.base, targets, body, clients=args.clients, requests=args.requests
                    )
                    per_batch[batch].update(
                        {
                            "http_ms": _median(latencies),
                            "http_p99_ms": round(_percentile(latencies, 99), 3),
                            "http_minus_inprocess_ms": round(
                                statistics.median(latencies) - per_batch[batch]["inprocess_ms"], 3
                            ),
                            "inprocess_wired_ms": wired_ms,
                            "wired_store_calls_ms": store_ms,
                            "http_minus_inprocess_wired_ms": round(
                                statistics.median(latencies) - wired_ms, 3
                            ),
                            "rps": round(len(concurrent) / wall, 1),
                            "concurrent_p50_ms": _median(concurrent),
                            "concurrent_p99_ms": round(_percentile(concurrent, 99), 3),
                            "endpoints_used": len(targets),
                        }
                    )
            finally:
                use_serving_deps(None)
                api.admin.close()

    top = per_batch[headline]
    result: dict[str, Any] = {
        "bare_run_ms": top["bare_run_ms"],
        "inprocess_ms": top["inprocess_ms"],
        "inprocess_overhead_ms": top["inprocess_overhead_ms"],
        "http_ms": top["http_ms"],
        "cold_first_ms": _median(cold_runs),
        "rps_8_clients" if args.clients == 8 else f"rps_{args.clients}_clients": top["rps"],
        "headline_batch": headline,
        "overhead_breakdown_ms": top["overhead_breakdown_ms"],
        "target": {"inprocess_overhead_ms_at_batch_1_max": TARGET_OVERHEAD_MS},
        "target_met": (per_batch[1]["inprocess_overhead_ms"] <= TARGET_OVERHEAD_MS) if 1 in batches else None,
        "cold_runs_ms": cold_runs,
        "cold_breakdown_ms": cold_breakdown,
        **{f"batch_{b}": per_batch[b] for b in batches},
        "requests": args.requests,
        "clients": args.clients,
        "decimals": args.decimals,
        "model": {"architecture": "localization_net", "onnx_bytes": len(onnx), "onnx_sha256": sha256},
        "concurrency": "inference requests run concurrently; only rate-limit and usage writes take the lock",
        "machine": _machine(load_before, os.getloadavg()),
    }
    _table(result, batches)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
