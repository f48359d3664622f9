"""Numerical parity: a converted model against its reference, output by output, batch size by batch size.

A runner is a function from named numpy inputs to the list of outputs in declared order, so PyTorch,
ONNX Runtime, TorchScript and TensorRT are compared the same way. A failed check is a failed format
(:class:`~heimdall.errors.ParityError` with the numbers), never a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from heimdall.contracts.jobs import ParityCheck
from heimdall.contracts.manifest import Manifest
from heimdall.errors import ParityError
from heimdall_batch.specs import IOSpec, as_tuple, random_inputs

Inputs = Mapping[str, np.ndarray]
Runner = Callable[[Inputs], list[np.ndarray]]

#: Batch sizes every format is checked at: 1, and one above it, so that a batch axis that silently
#: became fixed during export fails here rather than in production.
PARITY_BATCH_SIZES = (1, 8)
#: The reference of TensorRT engines, and of every format of a model that came as a bundle (no PyTorch).
FP32_ONNX_REFERENCE = "the FP32 ONNX model in ONNX Runtime"


def torch_runner(model: torch.nn.Module) -> Runner:
    """Run a PyTorch (or TorchScript) module on numpy inputs, in inference mode."""

    def run(inputs: Inputs) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
        with torch.inference_mode():
            return [t.detach().cpu().numpy() for t in as_tuple(model(*tensors))]

    return run


def onnx_runner(path: Path, *, intra_op_threads: int = 0) -> Runner:
    """Run an ONNX model with ONNX Runtime's CPU provider (one session, reused)."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy: only where a session is needed

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: a spinning pool steals the cores from whatever
    # runs next (PyTorch in the benchmark, another stage), which made eager timings swing 100x here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: Inputs) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, dict(inputs))]

    return run


def compare_outputs(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    batch_size: int,
    tolerance: float,
) -> list[ParityCheck]:
    """One :class:`ParityCheck` per output: max absolute and relative error, finiteness."""
    if len(candidate) != len(reference):
        raise ParityError(f"expected {len(reference)} outputs, got {len(candidate)}")
    checks = []
    for name, ref, got in zip(names, reference, candidate, strict=True):
        ref64 = np.asarray(ref, dtype=np.float64)
        got64 = np.asarray(got, dtype=np.float64)
        if got64.shape != ref64.shape:
            raise ParityError(
                f"output {name!r} at batch {batch_size} has shape {list(got64.shape)}, "
                f"expected {list(ref64.shape)}"
            )
        finite = bool(np.isfinite(got64).all() and np.isfinite(ref64).all())
        diff = np.abs(got64 - ref64)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref64).max()) if ref64.size else 0.0
        max_rel = max_abs / scale if scale > 0 else max_abs
        checks.append(
            ParityCheck(
                batch_size=batch_size,
                output=name,
                max_abs_err=max_abs if finite else float("inf"),
                max_rel_err=max_rel if finite else float("inf"),
                tolerance=tolerance,
                finite=finite,
                passed=finite and max_abs <= tolerance,
            )
        )
    return checks


def check_parity(
    reference: Runner,
    candidate: Runner,
    spec: IOSpec,
    *,
    tolerance: float,
    label: str,
    manifest: Manifest | None = None,
    batch_sizes: Iterable[int] = PARITY_BATCH_SIZES,
    seed: int = 0,
) -> list[ParityCheck]:
    """Compare ``candidate`` with ``reference`` on random inputs at each batch size.

    Returns every check when all pass; raises :class:`ParityError` naming the worst failure (and
    carrying all checks in ``details["checks"]``) otherwise. Any exception the candidate raises,
    such as ONNX Runtime refusing batch 8 because the axis was exported fixed, is a failure too.
    """
    rng = np.random.default_rng(seed)
    checks: list[ParityCheck] = []
    for batch_size in spec.batch_sizes(batch_sizes):  # a fixed batch axis: only its own size
        inputs = random_inputs(spec, batch_size, rng, manifest)
        try:
            expected = reference(inputs)
        except Exception as exc:
            raise ParityError(
                f"{label}: the reference model itself fails at batch size {batch_size} "
                f"({type(exc).__name__}: {str(exc)[:200]}); declare dynamic_batch: false for a model "
                "with a fixed batch size"
            ) from None
        try:
            got = candidate(inputs)
        except ParityError:
            raise
        except Exception as exc:
            raise ParityError(
                f"{label}: the model failed at batch size {batch_size}: {type(exc).__name__}: "
                f"{str(exc)[:300]}"
            ) from None
        checks.extend(
            compare_outputs(expected, got, spec.output_names, batch_size=batch_size, tolerance=tolerance)
        )
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: c.max_abs_err)
        what = "non-finite values (NaN/Inf)" if not worst.finite else f"max abs error {worst.max_abs_err:.3g}"
        raise ParityError(
            f"{label}: parity failed for {len(failed)} of {len(checks)} checks; worst: output "
            f"{worst.output!r} at batch {worst.batch_size}, {what} > tolerance {worst.tolerance:.3g} "
            f"(relative {worst.max_rel_err:.3g})",
            checks=[c.model_dump() for c in checks],
        )
    return checks
