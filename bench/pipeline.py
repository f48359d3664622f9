"""Benchmark the event path on the embedded local stack, and the Lambda handlers' import time.

Starts :class:`heimdall.local.stack.LocalStack` in this process (moto's server on a free loopback
port, the dispatcher calling ``functions/*/app.py``, conversion jobs as subprocesses) and measures, in
one run:

* ``checkpoint_to_indexed_s``: a seeded ``localization_net`` checkpoint and its manifest are put into
  the ingest bucket with plain boto3, the manifest first, then the checkpoint (the second of the pair
  starts the job). The clock runs from the checkpoint's put to a subscriber that is not Heimdall (its
  own rule and SQS queue on the bus, :class:`heimdall.local.demo.Subscriber`) receiving
  ``Bundle Indexed`` for that job. Median of ``--runs`` runs, model version ``1.0.{i}`` each. The
  manifests ask for ``["onnx"]`` only (the core path); one more run with the default formats is
  reported apart (``--no-default-formats`` skips it). The split comes from the events' own
  ``occurred_at`` (put -> ``Export Job Submitted`` -> ``Export Job Succeeded`` -> ``Bundle Indexed``)
  and from the job's ``result.json`` (its start, its stages, its end).
* ``bundle_to_indexed_s``: a bundle around a real ONNX model of ``--onnx-mb`` MiB
  (:func:`heimdall.testing.sample_models.padded_onnx`, metadata describing that model's shapes) put into
  ``bundles/`` of the ingest bucket, to ``Bundle Indexed`` with ``imported: true``. Median of
  ``--runs`` runs, a different key (and model version) each.
* ``import_ms``: each ``functions/*/app.py`` loaded by file path, as Lambda and the local stack load
  it, in a fresh interpreter: median of ``--import-runs`` interpreters after one warm-up round, the
  targets interleaved. ``baseline_import_ms`` is the same for a bare Powertools handler generated here
  (``Logger``, ``Tracer``, ``Metrics``, ``BatchProcessor``, a trivial handler). One more interpreter
  per target under ``-X importtime`` says where the time goes (self time summed per package group).

After the stack stops, a short profile times what the paths are made of: the bundle checks on the
benchmark bundle in this process, interpreter and ``import onnx`` start-up (the structural child),
and ``import heimdall_batch.job`` (the conversion subprocess, torch included).

It prints a table, then one JSON object on the last line. Progress goes to stderr.

    .venv/bin/python bench/pipeline.py [--runs 3] [--import-runs 5] [--onnx-mb 20] [--no-default-formats]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from heimdall.bundle.reader import parse_metadata, read_bundle
from heimdall.bundle.verify import verify_bundle
from heimdall.bundle.writer import write_bundle
from heimdall.local.demo import MANIFEST, Subscriber, write_checkpoint
from heimdall.local.stack import FUNCTIONS_DIR, LocalStack
from heimdall.settings import MIB, BundleLimits
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.sample_models import padded_onnx

TARGETS: dict[str, float] = {
    "checkpoint_to_indexed_s_max": 20.0,
    "bundle_to_indexed_s_max": 3.0,
    "import_ratio_to_baseline_max": 1.5,
}
HANDLERS = ("ingest", "job_state")
#: The handler allowed over the import target by the issue: it pulls the bundle validator's modules.
VALIDATOR_HANDLER = "ingest"
CORE_FORMATS = ["onnx"]
POLL_INTERVAL_S = 0.02
STAGE = "bench"

# The generated baseline: what any Powertools SQS-batch handler imports and builds at module level.
BASELINE_HANDLER = '''"""A bare Powertools handler: the import-time baseline of bench/pipeline.py."""
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Baseline")
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    logger.info("record", extra={"message_id": record.message_id})


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
'''

# Runs in a fresh interpreter: loads one handler file as Lambda does (its folder on sys.path, a module
# of its own) and reports the wall time of that load only (interpreter start-up excluded). With
# -X importtime the markers delimit the handler's imports in stderr.
_IMPORT_CHILD = r"""
import importlib.util, json, sys, time
from pathlib import Path

path = Path(sys.argv[1])
name = "lambda_" + path.parent.name + "_app"
before = set(sys.modules)
sys.stderr.write("HANDLER-IMPORT-BEGIN\n"); sys.stderr.flush()
start = time.perf_counter()
spec = importlib.util.spec_from_file_location(name, path)
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
sys.path.insert(0, str(path.parent))
spec.loader.exec_module(module)
elapsed_ms = (time.perf_counter() - start) * 1000
sys.stderr.write("HANDLER-IMPORT-END\n"); sys.stderr.flush()
new = sorted(set(sys.modules) - before)
print("IMPORT " + json.dumps({
    "ms": elapsed_ms,
    "modules": len(new),
    "bundle_modules": [m for m in new if m.startswith("heimdall.bundle")],
    "heavy": [m for m in ("torch", "onnx", "onnxruntime", "moto", "typer") if m in sys.modules],
}))
"""

# Runs in a fresh interpreter: loads the baseline handler, then each step in turn, and reports each
# step's wall time: what a handler costs on top of a bare Powertools handler, piece by piece.
_WATERFALL_CHILD = r"""
import importlib, importlib.util, json, sys, time
from pathlib import Path

def load(path):
    path = Path(path)
    name = "lambda_" + path.parent.name + "_app"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)

start = time.perf_counter()
load(sys.argv[1])
out = {"baseline": (time.perf_counter() - start) * 1000}
for label, targets in json.loads(sys.argv[2]):
    start = time.perf_counter()
    for target in targets:
        load(target) if target.endswith(".py") else importlib.import_module(target)
    out[label] = (time.perf_counter() - start) * 1000
print("WATERFALL " + json.dumps(out))
"""

#: The waterfall's steps, in import order: the libraries first, then heimdall from the leaves up, then
#: job_state's handler, then what ingest adds. Each step costs only what the earlier ones did not load.
_WATERFALL_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pydantic", ("pydantic", "pydantic.main", "pydantic.types", "pydantic.networks")),
    ("pydantic_settings", ("pydantic_settings",)),
    ("boto3", ("boto3", "boto3.dynamodb.types")),
    ("heimdall.settings", ("heimdall.errors", "heimdall.settings")),
    ("heimdall.bundle (models, reader, writer, signing)", ("heimdall.bundle",)),
    ("heimdall.contracts.manifest", ("heimdall.contracts.manifest",)),
    ("heimdall.contracts.jobs", ("heimdall.contracts.jobs",)),
    ("heimdall.events", ("heimdall.events",)),
    ("heimdall.domain.registry", ("heimdall.domain.registry",)),
    (
        "heimdall.adapters",
        tuple(f"heimdall.adapters.{a}" for a in ("s3", "batch", "dynamodb", "eventbridge")),
    ),
    ("heimdall.logic.job_state", ("heimdall.logic.job_state",)),
    ("job_state handler (observability, wiring)", (str(FUNCTIONS_DIR / "job_state" / "app.py"),)),
    ("heimdall.bundle.verify (structural)", ("heimdall.bundle.verify",)),
    ("heimdall.logic.ingest", ("heimdall.logic.ingest",)),
    ("ingest handler", (str(FUNCTIONS_DIR / "ingest" / "app.py"),)),
)

#: -X importtime self time is summed per group, first match wins (a module belongs to one group).
_IMPORT_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("heimdall.bundle (validator)", ("heimdall.bundle",)),
    ("heimdall (other)", ("heimdall",)),
    ("powertools", ("aws_lambda_powertools",)),
    ("x-ray sdk", ("aws_xray_sdk", "wrapt")),
    ("boto3/botocore", ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")),
    ("pydantic", ("pydantic", "pydantic_core", "pydantic_settings", "annotated_types", "typing_inspection")),
    ("handler file", ("lambda_",)),
)


class BenchFailed(Exception):
    """The pipeline did not do what it should (the message says what happened instead)."""


# --- the subscriber's view -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One event as the subscriber received it."""

    seen: float  #: time.time() when the subscriber's poll returned it
    detail_type: str
    detail: dict[str, Any]

    @property
    def occurred(self) -> float:
        """The event's ``occurred_at`` (set by the handler that emitted it), as a Unix time."""
        return datetime.fromisoformat(self.detail["occurred_at"]).timestamp()

    def matches(self, detail_type: str, match: dict[str, Any]) -> bool:
        return self.detail_type == detail_type and all(self.detail.get(k) == v for k, v in match.items())


class Watcher:
    """A :class:`Subscriber` (a client that is not Heimdall) that notes when each event reached it."""

    def __init__(self, stack: LocalStack) -> None:
        self._subscriber = Subscriber(stack)
        self.arrivals: list[Arrival] = []

    def poll(self) -> None:
        seen = len(self._subscriber.received)
        received = self._subscriber.poll()
        now = time.time()
        self.arrivals.extend(Arrival(now, e["detail-type"], e["detail"]) for e in received[seen:])

    def find(self, detail_type: str, **match: Any) -> Arrival | None:
        return next((a for a in self.arrivals if a.matches(detail_type, match)), None)

    def wait(
        self,
        detail_type: str,
        *,
        timeout_s: float,
        failures: Sequence[tuple[str, dict[str, Any]]] = (),
        **match: Any,
    ) -> Arrival:
        """Poll until ``detail_type`` matching ``match`` arrives; raise on a failure event or timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            found = self.find(detail_type, **match)
            if found is not None:
                return found
            for failure_type, failure_match in failures:
                failed = self.find(failure_type, **failure_match)
                if failed is not None:
                    raise BenchFailed(f"{failure_type} instead of {detail_type}: {json.dumps(failed.detail)}")
            if time.monotonic() > deadline:
                types = [a.detail_type for a in self.arrivals]
                raise BenchFailed(f"no {detail_type} {match} after {timeout_s:.0f} s; events so far: {types}")
            time.sleep(POLL_INTERVAL_S)


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-pipeline-") as tmp:
        work = Path(tmp)
        imports = _measure_imports(work / "imports", args.import_runs)
        pipeline = _measure_pipeline(work, args)
        profile = _profile(pipeline.pop("_bundle_file"), args.onnx_mb)
    report = _report(imports, pipeline, profile, args, load_before=load_before, load_after=os.getloadavg())
    _print_table(report)
    print(json.dumps(report))
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="timed pipeline runs of each kind (default: 3)")
    parser.add_argument(
        "--import-runs", type=int, default=5, help="fresh interpreters per handler (default: 5)"
    )
    parser.add_argument(
        "--onnx-mb", type=float, default=20.0, help="ONNX model size in the bundle, MiB (default: 20)"
    )
    parser.add_argument(
        "--no-default-formats",
        action="store_true",
        help="skip the extra checkpoint run with the manifest's default formats",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for any one event (default: 300)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.import_runs < 1:
        parser.error("--runs and --import-runs must be at least 1")
    if args.onnx_mb <= 0:
        parser.error("--onnx-mb must be positive")
    return args


# --- import time -----------------------------------------------------------------------------------------


def _measure_imports(folder: Path, runs: int) -> dict[str, Any]:
    """Median load time of each handler file and of the baseline, in fresh interpreters."""
    baseline = folder / "baseline" / "app.py"
    baseline.parent.mkdir(parents=True)
    baseline.write_text(BASELINE_HANDLER)
    targets = {name: FUNCTIONS_DIR / name / "app.py" for name in HANDLERS} | {"baseline": baseline}
    _log(f"import time: {runs} fresh interpreters per handler (+1 warm-up round), interleaved")
    samples: dict[str, list[float]] = {name: [] for name in targets}
    facts: dict[str, dict[str, Any]] = {}
    for round_ in range(runs + 1):
        for name, path in targets.items():
            out = _import_child(path, folder)
            if round_ > 0:  # the first round warms the page cache and the bytecode caches
                samples[name].append(out["ms"])
            facts[name] = out
    profiles = {name: _import_profile(path, folder) for name, path in targets.items()}
    waterfall = _import_waterfall(baseline, folder, runs)
    return {"samples_ms": samples, "facts": facts, "profiles_ms": profiles, "waterfall_ms": waterfall}


def _child_env(pycache: Path | None = None) -> dict[str, str]:
    """The children's environment; with ``pycache``, bytecode is cached there (read and written).

    The import measurements use a bytecode cache of their own, filled by the warm-up round, so every
    target (handler files, the project, the baseline) is timed alike, whether or not the environment
    sets ``PYTHONDONTWRITEBYTECODE`` or the checkout has ``__pycache__`` folders.
    """
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "bench"}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _import_child(path: Path, cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHILD, str(path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_child_env(cwd / "pycache"),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("IMPORT ")]
    if proc.returncode != 0 or not lines:
        raise BenchFailed(f"importing {path} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("IMPORT "))
    return result


def _import_waterfall(baseline: Path, cwd: Path, runs: int) -> dict[str, float]:
    """Median over ``runs`` fresh interpreters of each waterfall step's cost (ms)."""
    steps = json.dumps([[label, list(targets)] for label, targets in _WATERFALL_STEPS])
    rows: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", _WATERFALL_CHILD, str(baseline), steps],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=_child_env(cwd / "pycache"),
            check=False,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("WATERFALL ")]
        if proc.returncode != 0 or not lines:
            raise BenchFailed(f"the import waterfall failed ({proc.returncode}):\n{proc.stderr.strip()}")
        rows.append(json.loads(lines[-1].removeprefix("WATERFALL ")))
    return {label: round(statistics.median(row[label] for row in rows), 1) for label in rows[0]}


def _import_profile(path: Path, cwd: Path) -> dict[str, float]:
    """``-X importtime`` self time of the handler's imports, summed per package group (ms)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _IMPORT_CHILD, str(path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_child_env(cwd / "pycache"),
        check=False,
    )
    if proc.returncode != 0:
        raise BenchFailed(f"importing {path} under -X importtime failed:\n{proc.stderr.strip()}")
    groups: dict[str, float] = {name: 0.0 for name, _ in _IMPORT_GROUPS} | {"stdlib/other": 0.0}
    inside = False
    for line in proc.stderr.splitlines():
        if line.startswith("HANDLER-IMPORT-"):
            inside = line.endswith("BEGIN")
            continue
        if not inside or not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, module = (part.strip() for part in line.removeprefix("import time:").split("|"))
        groups[_group_of(module)] += int(self_us) / 1000
    return {name: round(ms, 1) for name, ms in groups.items()}


def _group_of(module: str) -> str:
    for group, prefixes in _IMPORT_GROUPS:
        for prefix in prefixes:
            if (
                module == prefix
                or module.startswith(prefix + ".")
                or (prefix.endswith("_") and module.startswith(prefix))
            ):
                return group
    return "stdlib/other"


# --- the pipeline ------------------------------------------------------------------------------------------


def _measure_pipeline(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    _log("writing the reference localization_net checkpoint")
    checkpoint, _ = write_checkpoint(work / "checkpoint")
    checkpoint_bytes = checkpoint.read_bytes()
    onnx, shapes = _padded_model(int(args.onnx_mb * MIB))
    _log("starting the local stack")
    started = time.perf_counter()
    with LocalStack(port=0, stage=STAGE, workdir=work / "local", log_level="WARNING", api_port=None) as stack:
        stack_start_s = time.perf_counter() - started
        watcher = Watcher(stack)
        checkpoint_runs = []
        for i in range(args.runs):
            version = f"1.0.{i}"
            _log(f"checkpoint run {i + 1}/{args.runs}: version {version}, formats {CORE_FORMATS}")
            run = _checkpoint_run(
                stack,
                watcher,
                checkpoint_bytes,
                version=version,
                formats=CORE_FORMATS,
                timeout_s=args.timeout,
            )
            _log(f"  indexed after {run['to_indexed_s']:.2f} s")
            checkpoint_runs.append(run)
        bundle_runs = []
        bundle_file = work / "bundle.heimdall"
        for i in range(args.runs):
            version = f"2.0.{i}"
            bundle_bytes = _bundle_bytes(onnx, shapes, version, seed=i, path=bundle_file)
            key = f"bundles/bench/run-{i}.heimdall"
            _log(f"bundle run {i + 1}/{args.runs}: {len(bundle_bytes) / MIB:.1f} MiB to {key}")
            run = _bundle_run(stack, watcher, bundle_bytes, key, args.timeout)
            _log(f"  indexed after {run['to_indexed_s']:.2f} s")
            bundle_runs.append(run)
        default_run = None
        if not args.no_default_formats:
            version = f"1.0.{args.runs}"
            formats = list(MANIFEST["formats"])
            _log(f"checkpoint run with the default formats {formats}: version {version}")
            default_run = _checkpoint_run(
                stack, watcher, checkpoint_bytes, version=version, formats=formats, timeout_s=args.timeout
            )
            _log(f"  indexed after {default_run['to_indexed_s']:.2f} s")
    return {
        "stack_start_s": stack_start_s,
        "checkpoint_runs": checkpoint_runs,
        "bundle_runs": bundle_runs,
        "default_run": default_run,
        "onnx_bytes": len(onnx),
        "bundle_bytes": bundle_file.stat().st_size,
        "checkpoint_bytes": len(checkpoint_bytes),
        "_bundle_file": bundle_file.read_bytes(),
    }


def _checkpoint_run(
    stack: LocalStack,
    watcher: Watcher,
    checkpoint: bytes,
    *,
    version: str,
    formats: list[str],
    timeout_s: float,
) -> dict[str, Any]:
    """Manifest put, then checkpoint put (t0), to the subscriber receiving the job's Bundle Indexed."""
    assert stack.names is not None
    names, s3 = stack.names, stack.client("s3")
    model_name = str(MANIFEST["model_name"])
    prefix = f"checkpoints/{model_name}/{version}/"
    manifest = {**MANIFEST, "version": version, "formats": formats}
    s3.put_object(
        Bucket=names.ingest_bucket, Key=prefix + "heimdall.json", Body=json.dumps(manifest).encode()
    )
    t0 = time.time()
    s3.put_object(Bucket=names.ingest_bucket, Key=prefix + "model.safetensors", Body=checkpoint)
    put_s = time.time() - t0
    submitted = watcher.wait(
        "Export Job Submitted",
        timeout_s=timeout_s,
        failures=[("Checkpoint Rejected", {"version": version})],
        model_name=model_name,
        version=version,
    )
    job_id = submitted.detail["job_id"]
    failures = [("Export Job Failed", {"job_id": job_id}), ("Bundle Rejected", {"job_id": job_id})]
    indexed = watcher.wait("Bundle Indexed", timeout_s=timeout_s, failures=failures, job_id=job_id)
    # The job's bundle can be indexed before job_state has handled SUCCEEDED: both follow the job's end.
    succeeded = watcher.wait("Export Job Succeeded", timeout_s=timeout_s, failures=failures, job_id=job_id)
    started = watcher.find("Export Job Started", job_id=job_id)
    result = json.loads(
        s3.get_object(Bucket=names.artifacts_bucket, Key=f"exports/{job_id}/result.json")["Body"].read()
    )
    job_start = datetime.fromisoformat(result["started_at"]).timestamp()
    job_end = datetime.fromisoformat(result["finished_at"]).timestamp()
    return {
        "version": version,
        "job_id": job_id,
        "formats": formats,
        "to_indexed_s": _r(indexed.seen - t0),
        "to_indexed_emitted_s": _r(indexed.occurred - t0),
        "checkpoint_put_s": _r(put_s),
        "put_to_submitted_s": _r(submitted.occurred - t0),
        "submitted_to_succeeded_s": _r(succeeded.occurred - submitted.occurred),
        "succeeded_to_indexed_s": _r(indexed.occurred - succeeded.occurred),
        "job": {
            "submitted_to_started_event_s": _r(started.occurred - submitted.occurred) if started else None,
            # the runner's 0.2 s delay, the RUNNING event, the subprocess, its imports, the download:
            "submitted_to_pipeline_start_s": _r(job_start - submitted.occurred),
            "pipeline_s": _r(job_end - job_start),
            "stages_s": {s["name"]: s["seconds"] for s in result.get("stages", [])},
            # uploads, process exit, the SUCCEEDED event, the job-state dispatch:
            "pipeline_end_to_succeeded_s": _r(succeeded.occurred - job_end),
            # uploads, the bundle's notification, the ingest dispatch, both checks, the copies:
            "pipeline_end_to_indexed_s": _r(indexed.occurred - job_end),
            "format_status": {f["format"]: f["status"] for f in result.get("formats", [])},
        },
    }


def _bundle_run(
    stack: LocalStack, watcher: Watcher, bundle: bytes, key: str, timeout_s: float
) -> dict[str, Any]:
    """Bundle put into ``bundles/`` (t0) to the subscriber receiving Bundle Indexed (imported)."""
    assert stack.names is not None
    s3 = stack.client("s3")
    t0 = time.time()
    s3.put_object(Bucket=stack.names.ingest_bucket, Key=key, Body=bundle)
    put_s = time.time() - t0
    indexed = watcher.wait(
        "Bundle Indexed",
        timeout_s=timeout_s,
        failures=[("Bundle Rejected", {"source_key": key})],
        source_key=key,
        imported=True,
    )
    return {
        "key": key,
        "to_indexed_s": _r(indexed.seen - t0),
        "to_indexed_emitted_s": _r(indexed.occurred - t0),
        "bundle_put_s": _r(put_s),
        "model_id": indexed.detail["model_id"],
    }


def _padded_model(target_bytes: int) -> tuple[bytes, tuple[list[int | str], list[int | str]]]:
    """A real ONNX model of ``target_bytes`` and its first input's and output's shapes."""
    import onnx as onnx_lib  # only the build step needs it

    _log(f"building a {target_bytes / MIB:.1f} MiB ONNX model")
    onnx = padded_onnx(target_bytes)
    model = onnx_lib.load_model_from_string(onnx)

    def shape(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return onnx, (shape(model.graph.input[0]), shape(model.graph.output[0]))


def _bundle_bytes(
    onnx: bytes, shapes: tuple[list[int | str], list[int | str]], version: str, *, seed: int, path: Path
) -> bytes:
    """A canonical bundle around ``onnx`` whose metadata describes that model (so both checks pass)."""
    graph_input, graph_output = shapes
    doc = sample_bundle_metadata(
        onnx,
        seed=seed,
        model={
            "model_name": "bench-padded",
            "version": version,
            "architecture": "padded",
            "input_shape": graph_input,
            "output_shape": [graph_output],
        },
    )
    bundle, _ = parse_metadata(doc)
    write_bundle(bundle, onnx, path)
    return path.read_bytes()


# --- profile ------------------------------------------------------------------------------------------------


def _profile(bundle: bytes, onnx_mb: float) -> dict[str, Any]:
    """What the paths are made of, timed apart after the stack has stopped (medians of 3)."""
    _log("profile: the bundle checks in-process, and fresh interpreters")
    limits = BundleLimits(max_onnx_bytes=max(BundleLimits().max_onnx_bytes, int(onnx_mb * MIB) + MIB))
    with tempfile.TemporaryDirectory(prefix="heimdall-bench-profile-") as tmp:
        path = Path(tmp) / "bundle.heimdall"
        path.write_bytes(bundle)
        onnx_out = Path(tmp) / "model.onnx"

        def verify() -> None:
            report = verify_bundle(path, limits=limits, onnx_out=onnx_out)
            if not report.valid:
                raise BenchFailed(f"the benchmark bundle does not verify: {report.code}: {report.message}")

        verify_s = _median_time(verify)
        read_s = _median_time(lambda: read_bundle(path, limits=limits))
    return {
        "verify_bundle_s": _r(verify_s),
        "read_bundle_s": _r(read_s),
        "structural_pass_s": _r(verify_s - read_s),
        "python_start_s": _r(_median_time(lambda: _python("pass"))),
        "python_import_onnx_s": _r(_median_time(lambda: _python("import onnx"))),
        "python_import_job_s": _r(_median_time(lambda: _python("import heimdall_batch.job"))),
        "runner_delay_s": 0.2,
        "dispatcher_wait_time_s": 1,
    }


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, env=_child_env())


def _median_time(call: Callable[[], object], repeat: int = 3) -> float:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# --- the report ---------------------------------------------------------------------------------------------


def _report(
    imports: dict[str, Any],
    pipeline: dict[str, Any],
    profile: dict[str, Any],
    args: argparse.Namespace,
    *,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> dict[str, Any]:
    ck_runs: list[dict[str, Any]] = pipeline["checkpoint_runs"]
    b_runs: list[dict[str, Any]] = pipeline["bundle_runs"]

    def median_of(runs: list[dict[str, Any]], key: str) -> float:
        return _r(statistics.median(r[key] for r in runs))

    checkpoint_s = median_of(ck_runs, "to_indexed_s")
    bundle_s = median_of(b_runs, "to_indexed_s")
    samples: dict[str, list[float]] = imports["samples_ms"]
    import_ms = {name: round(statistics.median(samples[name]), 1) for name in HANDLERS}
    baseline_ms = round(statistics.median(samples["baseline"]), 1)
    ratios = {name: round(ms / baseline_ms, 2) for name, ms in import_ms.items()}
    ratio_max = TARGETS["import_ratio_to_baseline_max"]
    import_ok = {name: ratio <= ratio_max for name, ratio in ratios.items()}
    waterfall: dict[str, float] = imports["waterfall_ms"]
    # What the bundle validator's modules cost (both handlers load them today), from the waterfall.
    validator_ms = round(sum(ms for label, ms in waterfall.items() if label.startswith("heimdall.bundle")), 1)
    without_validator = {name: round((ms - validator_ms) / baseline_ms, 2) for name, ms in import_ms.items()}
    exceptions = {
        name: (
            f"the onnx-layer validator: {import_ms[name]} ms, {ratios[name]} x baseline; its bundle and "
            f"structural modules cost about {validator_ms} ms of that ({without_validator[name]} x without)"
        )
        for name, ok in import_ok.items()
        if not ok and name == VALIDATOR_HANDLER
    }
    import_met = all(ok or name in exceptions for name, ok in import_ok.items())
    ck_ok = checkpoint_s <= TARGETS["checkpoint_to_indexed_s_max"]
    b_ok = bundle_s <= TARGETS["bundle_to_indexed_s_max"]
    profiles: dict[str, dict[str, float]] = imports["profiles_ms"]
    default_run = pipeline["default_run"]
    return {
        "checkpoint_to_indexed_s": checkpoint_s,
        "checkpoint_split_s": {
            key: median_of(ck_runs, key)
            for key in ("put_to_submitted_s", "submitted_to_succeeded_s", "succeeded_to_indexed_s")
        },
        "checkpoint_to_indexed_emitted_s": median_of(ck_runs, "to_indexed_emitted_s"),
        "checkpoint_formats": CORE_FORMATS,
        "checkpoint_formats_note": (
            "the timed runs' manifests request only ['onnx'] (the core path); "
            "checkpoint_default_formats is one run with the manifest's default formats"
        ),
        "checkpoint_runs": ck_runs,
        "checkpoint_default_formats": default_run,
        "bundle_to_indexed_s": bundle_s,
        "bundle_to_indexed_emitted_s": median_of(b_runs, "to_indexed_emitted_s"),
        "bundle_put_s": median_of(b_runs, "bundle_put_s"),
        "bundle_runs": b_runs,
        "bundle_mb": round(pipeline["bundle_bytes"] / MIB, 2),
        "onnx_mb": round(pipeline["onnx_bytes"] / MIB, 2),
        "checkpoint_mb": round(pipeline["checkpoint_bytes"] / MIB, 2),
        "import_ms": import_ms,
        "baseline_import_ms": baseline_ms,
        "import_ratio_to_baseline": ratios,
        "import_runs_ms": {name: [round(ms, 1) for ms in runs] for name, runs in samples.items()},
        "import_modules_loaded": {name: f["modules"] for name, f in imports["facts"].items()},
        "import_bundle_modules": {name: imports["facts"][name]["bundle_modules"] for name in HANDLERS},
        "import_heavy_modules": {name: f["heavy"] for name, f in imports["facts"].items()},
        "import_bytecode": "cached: a pycache of the run's own, filled by the warm-up round",
        "import_waterfall_ms": waterfall,
        "import_waterfall_note": (
            "one fresh interpreter loads the baseline handler, then each step in turn: a step's ms is "
            "what it adds to what was loaded before it (median of the import runs)"
        ),
        "import_validator_ms": validator_ms,
        "import_ratio_without_validator": without_validator,
        "import_profile_ms": profiles,
        "import_profile_note": "-X importtime self time per package group, one interpreter each (inflated)",
        "import_exceptions": exceptions,
        "stack_start_s": _r(pipeline["stack_start_s"]),
        "profile": profile,
        "runs": args.runs,
        "import_runs": args.import_runs,
        "targets": TARGETS,
        "targets_met": {
            "checkpoint_to_indexed_s": ck_ok,
            "bundle_to_indexed_s": b_ok,
            "import": import_met,
            "import_without_exception": all(import_ok.values()),
            "import_per_handler": import_ok,
            "all": ck_ok and b_ok and import_met,
        },
        "machine": _machine(load_before, load_after),
    }


def _machine(
    load_before: tuple[float, float, float], load_after: tuple[float, float, float]
) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    versions: dict[str, str | None] = {}
    for package in ("moto", "boto3", "aws-lambda-powertools", "pydantic", "torch", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _print_table(r: dict[str, Any]) -> None:
    met, t, m, p = r["targets_met"], r["targets"], r["machine"], r["profile"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    split = r["checkpoint_split_s"]
    rows: list[tuple[str, str]] = [
        (
            "checkpoint put -> Bundle Indexed",
            f"{r['checkpoint_to_indexed_s']:7.2f} s  median of {r['runs']}, "
            f"formats {r['checkpoint_formats']}; "
            f"target <= {t['checkpoint_to_indexed_s_max']:g}: {mark(met['checkpoint_to_indexed_s'])}",
        ),
        ("  runs", ", ".join(f"{x['to_indexed_s']:.2f}" for x in r["checkpoint_runs"]) + " s"),
        ("  put -> Export Job Submitted", f"{split['put_to_submitted_s']:7.2f} s"),
        ("  Submitted -> Succeeded", f"{split['submitted_to_succeeded_s']:7.2f} s  (the conversion job)"),
        ("  Succeeded -> Bundle Indexed", f"{split['succeeded_to_indexed_s']:7.2f} s  (by occurred_at)"),
    ]
    by_time = sorted(r["checkpoint_runs"], key=lambda run: run["to_indexed_s"])
    mid_job = by_time[len(by_time) // 2]["job"]
    rows += [
        (
            "  job (median run): to pipeline start",
            f"{mid_job['submitted_to_pipeline_start_s']:7.2f} s  (0.2 s delay, spawn, imports, download)",
        ),
        ("  job: pipeline", f"{mid_job['pipeline_s']:7.2f} s  stages {mid_job['stages_s']}"),
        (
            "  job: end -> Succeeded / Indexed",
            f"{mid_job['pipeline_end_to_succeeded_s']:7.2f} s / {mid_job['pipeline_end_to_indexed_s']:.2f} s",
        ),
    ]
    default = r["checkpoint_default_formats"]
    if default is not None:
        rows.append(
            (
                "checkpoint, default formats",
                f"{default['to_indexed_s']:7.2f} s  one run, {default['formats']} "
                f"-> {default['job']['format_status']}",
            )
        )
    rows += [
        (
            "bundle put -> Bundle Indexed",
            f"{r['bundle_to_indexed_s']:7.2f} s  median of {r['runs']}, {r['bundle_mb']:.1f} MiB bundle "
            f"({r['onnx_mb']:.1f} MiB ONNX); target <= {t['bundle_to_indexed_s_max']:g}: "
            f"{mark(met['bundle_to_indexed_s'])}",
        ),
        ("  runs", ", ".join(f"{x['to_indexed_s']:.2f}" for x in r["bundle_runs"]) + " s"),
        ("  of which the put itself", f"{r['bundle_put_s']:7.2f} s"),
        (
            "  bundle checks in-process",
            f"{p['verify_bundle_s']:7.2f} s  (integrity {p['read_bundle_s']:.2f} s, "
            f"structural child {p['structural_pass_s']:.2f} s)",
        ),
        (
            "baseline Powertools handler import",
            f"{r['baseline_import_ms']:7.1f} ms  median of {r['import_runs']}",
        ),
    ]
    for name, ms in r["import_ms"].items():
        ok = met["import_per_handler"][name]
        note = " (excepted: the onnx-layer validator)" if name in r["import_exceptions"] else ""
        rows.append(
            (
                f"{name} handler import",
                f"{ms:7.1f} ms  {r['import_ratio_to_baseline'][name]:.2f} x baseline; "
                f"target <= {t['import_ratio_to_baseline_max']:g} x: {mark(ok)}{note}",
            )
        )
    waterfall = r["import_waterfall_ms"]
    rows.append(
        ("  waterfall over the baseline", f"{waterfall['baseline']:7.1f} ms  the baseline itself, then:")
    )
    rows += [(f"    + {label}", f"{ms:7.1f} ms") for label, ms in waterfall.items() if label != "baseline"]
    for name, groups in r["import_profile_ms"].items():
        top = sorted(groups.items(), key=lambda kv: -kv[1])[:5]
        rows.append((f"  importtime {name}", ", ".join(f"{g} {ms:.0f}" for g, ms in top) + " ms"))
    rows += [
        (
            "fresh interpreters",
            f"python {p['python_start_s']:.2f} s, import onnx {p['python_import_onnx_s']:.2f} s, "
            f"import heimdall_batch.job {p['python_import_job_s']:.2f} s",
        ),
        ("targets", "all met" if met["all"] else "NOT all met"),
        (
            "machine",
            f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
            f"load {m['loadavg_1m_before']} -> {m['loadavg_1m_after']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _r(seconds: float) -> float:
    return round(seconds, 3)


def _log(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
