"""The child process of the serving check: ``python -m heimdall.bundle._serving_worker``.

Run only by :func:`heimdall.bundle.upgrade.check_serving`, under the structural check's limits and
protocol (:func:`heimdall.bundle._worker_protocol.serve`: one JSON request on stdin, the limits applied
before onnx or onnxruntime is imported, one result line on stdout). The request holds the structural
request's ``path``, ``expected_sha256``, ``limits``, ``memory_bytes`` and ``cpu_seconds``, and:

* ``target_opset``: the default-domain opset to upgrade to; ``force``: upgrade even when the model
  loads as stamped (``heimdall bundle upgrade``);
* ``out_path``: where the upgraded model is written;
* ``samples_path``: a JSON file ``[{"sample_id", "inputs": {name: nested list}, "outputs": {name:
  nested list}}]`` of the bundle's sample predictions that carry the model's inputs, or null;
* ``atol``/``rtol``: an output agrees when ``|got - expected| <= atol + rtol * |expected|``.

The model (which passed the structural pass) is first loaded in ONNX Runtime as it is. If that works
(and ``force`` is false) it is servable as stamped. If ONNX Runtime refuses it with ``NOT_IMPLEMENTED``
(its typed exception, not a message match: it has no kernel for an operator at that opset) and the
model's opset is below the target, it is converted with ``onnx.version_converter``, the converted
model goes through the same structural checks, is loaded in ONNX Runtime, and is run on the samples.
Any other refusal makes the model not servable, with ONNX Runtime's reason. The report::

    {"servable": bool, "reason": str | null, "from_opset": int,
     "upgrade": null | {"from_opset", "to_opset", "converter", "result", "onnx_sha256",
                        "onnx_size_bytes", "samples_checked", "max_abs_error", "message"}}

``result`` is ``upgraded``, ``convert_failed``, ``load_failed`` or ``samples_failed``. A failed step is
a report (``servable`` false), not an error: the model stays importable. Errors are what the
structural worker raises for the file itself (size, sha256) and ``ConfigurationError``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from heimdall.bundle._structural_worker import check_integrity, check_model, default_opset, read_capped
from heimdall.bundle._worker_protocol import WorkerState, serve, trim_message
from heimdall.errors import ConfigurationError, HeimdallError

_CONVERTER = "onnx.version_converter"
_MAX_SAMPLES_BYTES = 64 * 1024 * 1024


def check_serving(request: dict[str, Any]) -> dict[str, Any]:
    """The serving check of the module docstring on ``request``; the report."""
    limits = request["limits"]
    WorkerState.stage = "reading the model file"
    with open(str(request["path"]), "rb") as handle:
        data, sha256 = read_capped(handle, int(limits["max_onnx_bytes"]))
    check_integrity(data, sha256, request.get("expected_sha256"), None)

    WorkerState.stage = "importing onnx and onnxruntime"
    onnx, ort = _import_runtimes()

    WorkerState.stage = "parsing the model"
    model = onnx.load_model_from_string(data)
    from_opset = default_opset(model)
    target = int(request["target_opset"])
    report: dict[str, Any] = {"servable": True, "reason": None, "from_opset": from_opset, "upgrade": None}
    if not request.get("force"):
        WorkerState.stage = "loading the model in ONNX Runtime"
        refusal = _load(ort, data)
        if refusal is None:
            return report
        missing_kernel = isinstance(refusal, ort.capi.onnxruntime_pybind11_state.NotImplemented)
        if not (missing_kernel and 0 < from_opset < target):
            return report | {
                "servable": False,
                "reason": trim_message(f"ONNX Runtime cannot load the model: {refusal}"),
            }
    del data

    upgrade = _upgrade(onnx, ort, model, from_opset=from_opset, target=target, request=request)
    report["upgrade"] = upgrade
    if upgrade["result"] != "upgraded":
        report |= {"servable": False, "reason": upgrade["message"]}
    return report


def _import_runtimes() -> tuple[Any, Any]:
    try:
        import onnx  # noqa: PLC0415 - imported only once the memory limit holds
        import onnx.version_converter  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the serving check needs onnx and onnxruntime (the onnx layer), which are missing: {exc}"
        ) from None
    except ImportError as exc:  # a library that cannot be mapped under the address-space limit
        raise MemoryError(str(exc)) from None
    ort.set_default_logger_severity(3)  # its warnings about old opsets would only fill stderr
    return onnx, ort


def _load(ort: Any, data: bytes) -> Exception | None:
    """None when ONNX Runtime creates a session from ``data`` as serving does; else its exception."""
    try:
        _session(ort, data)
    except MemoryError:
        raise
    except Exception as exc:  # ORT's own exception classes; the caller tells NotImplemented apart
        return exc
    return None


def _session(ort: Any, data: bytes) -> Any:
    # The graph optimisations serving uses (heimdall.inference.sessions), so that a model this loads, serving
    # loads too; one thread each, which keeps the child's address space small.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _upgrade(
    onnx: Any, ort: Any, model: Any, *, from_opset: int, target: int, request: dict[str, Any]
) -> dict[str, Any]:
    upgrade: dict[str, Any] = {
        "from_opset": from_opset,
        "to_opset": target,
        "converter": f"{_CONVERTER} (onnx {onnx.__version__})",
        "result": "upgraded",
        "onnx_sha256": None,
        "onnx_size_bytes": None,
        "samples_checked": 0,
        "max_abs_error": None,
        "message": None,
    }

    def failed(result: str, message: str) -> dict[str, Any]:
        return upgrade | {"result": result, "message": trim_message(message)}

    if target <= from_opset:
        return failed("convert_failed", f"the model is at opset {from_opset}, not below {target}")
    WorkerState.stage = f"converting the model from opset {from_opset} to {target}"
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except MemoryError:
        raise
    except Exception as exc:  # ConvertError, RuntimeError from the C++ adapters
        return failed(
            "convert_failed",
            f"{_CONVERTER} cannot convert the model from opset {from_opset} to {target}: {exc}",
        )
    del model
    data: bytes = converted.SerializeToString()
    # What each graph input holds, for the samples' nested lists.
    dtypes = {
        v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        for v in converted.graph.input
        if v.type.HasField("tensor_type")
    }
    del converted
    out = Path(str(request["out_path"]))
    out.write_bytes(data)

    # The file is what serving will check before its first session: check it the same way now.
    try:
        check_model({"path": str(out), "limits": request["limits"]})
    except HeimdallError as exc:
        return failed(
            "convert_failed", f"the model converted to opset {target} fails the structural pass: {exc}"
        )
    WorkerState.stage = f"loading the model converted to opset {target} in ONNX Runtime"
    try:
        session = _session(ort, data)
    except MemoryError:
        raise
    except Exception as exc:
        return failed("load_failed", f"ONNX Runtime cannot load the model converted to opset {target}: {exc}")
    upgrade |= {"onnx_sha256": hashlib.sha256(data).hexdigest(), "onnx_size_bytes": len(data)}
    del data

    samples_path = request.get("samples_path")
    if samples_path:
        WorkerState.stage = "running the bundle's sample predictions"
        with open(str(samples_path), "rb") as handle:
            samples = json.loads(handle.read(_MAX_SAMPLES_BYTES))
        problem, worst = _check_samples(
            session, dtypes, samples, float(request["atol"]), float(request["rtol"])
        )
        upgrade |= {"samples_checked": len(samples), "max_abs_error": worst}
        if problem is not None:
            return failed("samples_failed", f"the model converted to opset {target} {problem}")
    return upgrade


def _check_samples(
    session: Any, dtypes: dict[str, Any], samples: list[dict[str, Any]], atol: float, rtol: float
) -> tuple[str | None, float | None]:
    """(what disagreed, or None; the largest absolute error over every compared output value)."""
    import numpy as np  # noqa: PLC0415 - comes with onnxruntime

    worst: float | None = None
    for sample in samples:
        where = f"sample {str(sample.get('sample_id'))[:80]!r}"
        feed = {}
        for name, value in sample["inputs"].items():
            dtype = dtypes.get(name, np.float32)
            try:
                feed[name] = np.asarray(value, dtype=dtype)
            except (ValueError, TypeError, OverflowError):
                return f"cannot be run on {where}: input {name[:80]!r} is not a {dtype} array", worst
        names = list(sample["outputs"])
        try:
            outputs = session.run(names, feed)
        except MemoryError:
            raise
        except Exception as exc:
            return f"fails on {where}: {exc}", worst
        for name, got in zip(names, outputs, strict=True):
            try:
                expected = np.asarray(sample["outputs"][name], dtype=np.float64)
            except (ValueError, TypeError, OverflowError):
                return f"cannot be checked on {where}: output {name[:80]!r} is not numeric", worst
            actual = np.asarray(got, dtype=np.float64)
            if actual.shape != expected.shape:
                return (
                    f"answers {where} with output {name[:80]!r} of shape {list(actual.shape)}, "
                    f"the sample has {list(expected.shape)}"
                ), worst
            if not bool(np.isfinite(actual).all()):
                return f"answers NaN or infinity in output {name[:80]!r} on {where}", worst
            error = np.abs(actual - expected)
            biggest = float(error.max()) if error.size else 0.0
            worst = biggest if worst is None else max(worst, biggest)
            if bool((error > atol + rtol * np.abs(expected)).any()):
                return (
                    f"disagrees with {where} on output {name[:80]!r}: max abs error {biggest:.3g} "
                    f"(tolerance {atol:g} + {rtol:g} x |expected|)"
                ), worst
    return None, worst


def main() -> int:
    """Run one serving check; return the exit status (0 whenever a result line was written)."""
    return serve(check_serving)


if __name__ == "__main__":
    sys.exit(main())
