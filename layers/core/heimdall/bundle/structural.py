"""The structural pass on a decoded ONNX model (DESIGN §3), run in a child process with limits.

:func:`check_structure` starts ``python -m heimdall.bundle._structural_worker`` with
``subprocess.run`` (not ``multiprocessing``, which AWS Lambda cannot host), sends it the request as
JSON on stdin, and reads one JSON line back. The worker caps its own address space
(``RLIMIT_AS`` = ``limits.structural_memory_bytes``) and CPU time (``RLIMIT_CPU``) before it imports
onnx or reads a byte of the model, and the parent kills it after ``limits.structural_timeout_s``. A
model that would need unbounded memory or time to parse or check therefore ends as a typed
:class:`~heimdall.errors.GraphTooComplex`, never as an out-of-memory Lambda or a hung request.

What the worker checks, and in which order, is described in
:mod:`heimdall.bundle._structural_worker`. The declared opset and shapes of a bundle are compared
here, against the worker's report, by :func:`check_declared`.

Nothing here imports onnx: this module belongs to the Lambda core layer. The worker needs onnx (the
onnx layer); without it the check fails with :class:`~heimdall.errors.ConfigurationError`. No ONNX
Runtime session is created by this pass.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import heimdall
from heimdall.bundle.models import Bundle, ModelInfo
from heimdall.errors import (
    ChecksumMismatch,
    ConfigurationError,
    ExternalData,
    GraphTooComplex,
    HeimdallError,
    InvalidOnnx,
    ShapeMismatch,
    TooLarge,
)
from heimdall.settings import MIB, BundleLimits

logger = logging.getLogger(__name__)

#: At the package root, not in ``heimdall.bundle``: running a module of a package imports the package
#: first, and ``heimdall.bundle``'s models and reader (pydantic, settings) cost the child ~130 ms of a
#: ~280 ms pass it never uses (every indexing, and every inference cold start, pays it).
WORKER_MODULE = "heimdall.bundle._structural_worker"
#: The only error types a worker result may name (by code); anything else is an internal error.
_RESULT_ERRORS: dict[str, type[HeimdallError]] = {
    cls.code: cls
    for cls in (
        TooLarge,
        ChecksumMismatch,
        InvalidOnnx,
        ExternalData,
        GraphTooComplex,
        ShapeMismatch,
        ConfigurationError,
    )
}
#: Signals a process gets when an allocation fails natively (or the kernel's OOM killer steps in).
_MEMORY_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS})
_MAX_RESULT_BYTES = 16 * MIB
#: Grace between the wall-clock limit and the CPU-time limit, which is only a backstop.
_CPU_GRACE_S = 1

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as the model declares it.

    ``elem_type`` is a numpy-style name (``"float32"``, ``"int64"``, ``"bfloat16"``...); non-tensor
    types read like ``"sequence(float32)"``. ``shape`` holds, per dimension, its size, its symbolic
    name (``"batch"``) or ``None`` when the graph leaves it unknown. ``rank_known`` is false when the
    graph gives no shape at all (then ``shape`` is empty and says nothing), which is not the same as
    a scalar (rank 0, ``shape == ()``).
    """

    name: str
    elem_type: str
    shape: tuple[Dim, ...]
    rank_known: bool = True


@dataclass(frozen=True)
class StructuralReport:
    """What the structural pass learned about a model that passed it.

    ``opset`` is the default-domain (``ai.onnx``) opset the model imports, 0 if none. ``producer``
    is the producer name and version. ``node_count`` counts every node (subgraphs and model-local
    functions included); ``subgraph_depth`` is the deepest nesting (0: no subgraphs). ``domains``
    are the imported operator domains, sorted, the default one shown as ``"ai.onnx"``. ``inputs``
    are the graph inputs that are not initializers.
    """

    onnx_sha256: str
    size_bytes: int
    ir_version: int
    opset: int
    producer: str
    node_count: int
    subgraph_depth: int
    domains: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructuralReport:
        """Build a report from the worker's JSON (``KeyError``/``TypeError``/``ValueError`` if malformed)."""

        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(
                    name=str(item["name"]),
                    elem_type=str(item["elem_type"]),
                    shape=tuple(_dim_from_json(d) for d in item["shape"]),
                    rank_known=bool(item.get("rank_known", True)),
                )
                for item in items
            )

        return cls(
            onnx_sha256=str(data["onnx_sha256"]),
            size_bytes=int(data["size_bytes"]),
            ir_version=int(data["ir_version"]),
            opset=int(data["opset"]),
            producer=str(data["producer"]),
            node_count=int(data["node_count"]),
            subgraph_depth=int(data["subgraph_depth"]),
            domains=tuple(str(d) for d in data["domains"]),
            inputs=specs(data["inputs"]),
            outputs=specs(data["outputs"]),
        )


def check_structure(
    onnx_path: Path,
    bundle: Bundle | None,
    *,
    limits: BundleLimits,
    expected_sha256: str | None = None,
) -> StructuralReport:
    """Run the structural pass on the ONNX model at ``onnx_path`` and return what it found.

    The model is checked in a child process held to ``limits.structural_memory_bytes`` of address
    space and ``limits.structural_timeout_s`` of time: size cap, sha256 (``expected_sha256``, else
    the bundle's ``integrity.onnx_sha256``; the declared size too), protobuf parse, no external
    data anywhere, node and subgraph-depth caps, allowed operator domains, and
    ``onnx.checker.check_model(full_check=True)``. When ``bundle`` is given, its declared opset and
    shapes must then agree with the graph (:func:`check_declared`).

    Every refusal is a :class:`~heimdall.errors.HeimdallError` subclass: ``TooLarge``,
    ``ChecksumMismatch``, ``InvalidOnnx``, ``ExternalData``, ``GraphTooComplex`` (caps, and the
    memory or time limit of the check itself), ``ShapeMismatch``; ``ConfigurationError`` when the
    check cannot run here at all (onnx missing, the worker cannot start). No other exception escapes.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise InvalidOnnx(f"there is no ONNX model file at {path}")
    integrity = bundle.integrity if bundle is not None else None
    declared_sha = expected_sha256 or (integrity.onnx_sha256 if integrity is not None else None)
    request = {
        "path": str(path.resolve()),
        "expected_sha256": declared_sha,
        "expected_size": integrity.onnx_size_bytes if integrity is not None else None,
        "memory_bytes": limits.structural_memory_bytes,
        "cpu_seconds": math.ceil(limits.structural_timeout_s) + _CPU_GRACE_S,
        "limits": {
            "max_onnx_bytes": limits.max_onnx_bytes,
            "max_nodes": limits.max_nodes,
            "max_subgraph_depth": limits.max_subgraph_depth,
            "allowed_domains": list(limits.allowed_domains),
        },
    }
    report = _run_worker(request, limits)
    if integrity is not None and integrity.onnx_sha256 != report.onnx_sha256:
        # Only reachable when an explicit expected_sha256 matched but the bundle declares another.
        raise ChecksumMismatch(
            f"the ONNX model's sha256 is {report.onnx_sha256} but the bundle declares "
            f"{integrity.onnx_sha256}",
            field="integrity.onnx_sha256",
            expected=integrity.onnx_sha256,
            actual=report.onnx_sha256,
        )
    if bundle is not None:
        check_declared(report, bundle.model)
    return report


def check_declared(report: StructuralReport, model: ModelInfo) -> None:
    """Refuse with ``ShapeMismatch`` when a bundle's declared opset or shapes disagree with the graph.

    * The default-domain opset the graph imports must equal ``model.onnx_opset``.
    * ``model.input_shape`` describes the first graph input (initializers excluded): same rank, and
      every dimension agrees.
    * ``model.output_shape`` holds one shape per graph output, compared pairwise; when it holds one
      shape and the graph has several outputs, that shape must fit each of them (the legacy dialect
      declares one flat shape for all outputs). Any other count difference is a mismatch.

    A dimension agrees when:

    * the declared dimension is a size ``n >= 0`` and the graph's is ``n``, symbolic or unknown. A
      bundle declaring batch 1 for a dynamic-batch graph is fine: it describes one valid input;
    * the declared dimension is dynamic (``-1`` or a name) and the graph's is symbolic or unknown,
      whatever its name. A dynamic declaration against a *fixed* graph dimension is a mismatch: the
      bundle promises callers they may vary that axis, and the runtime would refuse any other size.
      (A judgement call: we would rather refuse at import than fail at inference.)

    A graph input or output whose rank the graph does not give cannot contradict a declaration
    and is accepted.
    """
    if report.opset != model.onnx_opset:
        imports = f"graph imports {report.opset}" if report.opset else "graph imports no ai.onnx opset"
        raise ShapeMismatch(
            f"declared opset {model.onnx_opset}, {imports}",
            field="model.onnx_opset",
            declared=model.onnx_opset,
            actual=report.opset,
        )

    if not report.inputs:
        raise ShapeMismatch(
            f"the bundle declares input_shape {_show(model.input_shape)} but the graph has no inputs",
            field="model.input_shape",
        )
    _compare_shape(report.inputs[0], list(model.input_shape), "input", "model.input_shape")

    declared = [list(shape) for shape in model.output_shape]
    outputs = report.outputs
    if len(declared) == len(outputs):
        for index, (spec, shape) in enumerate(zip(outputs, declared, strict=True)):
            _compare_shape(spec, shape, "output", f"model.output_shape[{index}]")
    elif len(declared) == 1 and outputs:
        for spec in outputs:
            _compare_shape(spec, declared[0], "output", "model.output_shape")
    else:
        names = ", ".join(repr(o.name) for o in outputs) or "none"
        raise ShapeMismatch(
            f"the bundle declares {len(declared)} output shapes but the graph has {len(outputs)} "
            f"outputs ({names})",
            field="model.output_shape",
            declared=len(declared),
            actual=len(outputs),
        )


# --- running the worker --------------------------------------------------------------------------


def _run_worker(request: dict[str, Any], limits: BundleLimits) -> StructuralReport:
    report = run_checking_worker(WORKER_MODULE, request, limits)
    try:
        return StructuralReport.from_dict(report)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"the structural check worker returned a malformed report: {exc}") from None


def run_checking_worker(
    module: str, request: dict[str, Any], limits: BundleLimits, *, what: str = "structural check"
) -> dict[str, Any]:
    """Run ``python -m module`` on ``request`` under the structural check's limits; its report.

    ``module`` speaks the protocol of :func:`heimdall.bundle._worker_protocol.serve` (one JSON request on
    stdin, one result line on stdout). A refusal is raised as the typed error it names; a child that
    ran out of time or memory, or crashed, as ``GraphTooComplex`` (``what`` names the check in the
    message); one that cannot start or import heimdall as ``ConfigurationError``.
    """
    memory_mib = limits.structural_memory_bytes / MIB
    try:
        completed = subprocess.run(
            # -P: do not put the current directory on sys.path (a stray onnx.py there must not load).
            [sys.executable, "-P", "-m", module],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=limits.structural_timeout_s,
            env=_worker_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GraphTooComplex(
            f"checking the model took longer than the {what}'s time limit of "
            f"{limits.structural_timeout_s:g} s (structural_timeout_s)",
            limit="structural_timeout_s",
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot start the {what} worker: {exc}") from None

    result = _parse_result(completed.stdout)
    if result is not None:
        if result.get("ok") is True:
            report = result.get("report")
            if not isinstance(report, dict):
                raise ConfigurationError(f"the {what} worker returned a malformed report: {report!r:.200}")
            return report
        raise _error_from(result)

    stderr_tail = completed.stderr[-2000:].decode("utf-8", "replace").strip()
    logger.warning(
        "%s worker exited with status %s and no result; stderr tail: %s",
        what,
        completed.returncode,
        stderr_tail,
    )
    status = completed.returncode
    if status == -signal.SIGXCPU:
        raise GraphTooComplex(
            f"checking the model used more CPU time than the {what}'s time limit of "
            f"{limits.structural_timeout_s:g} s (structural_timeout_s)",
            limit="structural_timeout_s",
        )
    how = _describe_exit(status)
    if status < 0 and -status not in _MEMORY_SIGNALS:
        cause = "it crashed"
    else:
        cause = "most likely it ran out of memory"
    if "No module named" in stderr_tail and "heimdall" in stderr_tail:
        raise ConfigurationError(f"the {what} worker cannot import heimdall ({how})")
    raise GraphTooComplex(
        f"the {what} {how} without a result; {cause} under its limit of {memory_mib:.0f} MiB "
        f"(structural_memory_bytes)",
        limit="structural_memory_bytes",
        exit_status=status,
    )


def _worker_env() -> dict[str, str]:
    """The parent's environment, plus the path to this package and single-threaded math libraries.

    One BLAS/OpenMP thread keeps the worker's address space (what ``RLIMIT_AS`` counts) small and
    predictable: every extra thread reserves its own stack and buffers.
    """
    env = dict(os.environ)
    package_root = str(Path(heimdall.__file__).resolve().parent.parent)
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = package_root + (os.pathsep + existing if existing else "")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _parse_result(stdout: bytes) -> dict[str, Any] | None:
    """The worker's one JSON line, or ``None`` when it wrote none (it crashed or was killed)."""
    if not stdout or len(stdout) > _MAX_RESULT_BYTES:
        return None
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    try:
        result = json.loads(lines[-1])
    except ValueError:
        return None
    return result if isinstance(result, dict) and "ok" in result else None


def _error_from(result: dict[str, Any]) -> HeimdallError:
    code = result.get("code")
    message = str(result.get("message") or "the structural check refused the model")
    cls = _RESULT_ERRORS.get(str(code))
    if cls is None:
        return ConfigurationError(
            f"the structural check worker returned an unknown error code {code!r}: {message}"
        )
    field = result.get("field")
    details = result.get("details")
    return cls(
        message,
        field=field if isinstance(field, str) else None,
        **(details if isinstance(details, dict) else {}),
    )


def _describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _dim_from_json(value: Any) -> Dim:
    if value is None or isinstance(value, str):
        return value
    return int(value)


def _compare_shape(spec: TensorSpec, declared: list[int | str], kind: str, field: str) -> None:
    if not spec.rank_known:
        return
    actual = spec.shape
    if len(actual) != len(declared):
        raise ShapeMismatch(
            f"{kind} {spec.name!r}: declared shape {_show(declared)} has rank {len(declared)} but the "
            f"graph's {_show(actual)} has rank {len(actual)}",
            field=field,
            declared=_show(declared),
            actual=_show(actual),
        )
    for axis, (want, have) in enumerate(zip(declared, actual, strict=True)):
        if not _dim_agrees(want, have):
            raise ShapeMismatch(
                f"{kind} {spec.name!r}: declared shape {_show(declared)} but the graph has "
                f"{_show(actual)} (dimension {axis}: declared {_show_dim(want)}, graph {_show_dim(have)})",
                field=field,
                declared=_show(declared),
                actual=_show(actual),
            )


def _dim_agrees(declared: int | str, actual: Dim) -> bool:
    """The dimension rule of :func:`check_declared`."""
    if actual is None or isinstance(actual, str):
        return True  # a symbolic or unknown graph dimension accepts any declaration
    if isinstance(declared, int) and declared >= 0:
        return declared == actual
    return False  # declared dynamic (-1 or a name) against a fixed graph dimension


def _show_dim(dim: Dim | int | str) -> str:
    if dim is None:
        return "?"
    return str(dim)


def _show(shape: Any) -> str:
    return "[" + ", ".join(_show_dim(d) for d in shape) + "]"


__all__ = ["StructuralReport", "TensorSpec", "check_declared", "check_structure", "run_checking_worker"]
