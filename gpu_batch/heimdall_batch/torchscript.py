"""Stage: TorchScript, by tracing the PyTorch model.

Tracing records the operations one example input goes through, so anything the model computes in
Python from a tensor's value or shape is frozen into the trace. The tracer warns about some of those
cases (the warnings are recorded in the outcome); the reliable check is parity on the *reloaded*
archive at batch sizes 1 and 8, which fails for a trace that baked in its batch size.

The trace is not frozen (``torch.jit.freeze``): measured on the localization net it changed neither
size nor latency on CPU, and an unfrozen archive matches PyTorch bit for bit and keeps its
parameters inspectable. ``torch.jit.trace`` is deprecated from PyTorch 2.10 on in favour of
``torch.export``; TorchScript stays requested for runtimes (LibTorch, Triton's PyTorch backend)
that load it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from heimdall.contracts.jobs import FormatOutcome
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall_batch.benchmark import latency_by_batch
from heimdall_batch.outputs import built_outcome
from heimdall_batch.parity import Runner, check_parity, torch_runner
from heimdall_batch.specs import IOSpec, random_inputs

TORCHSCRIPT_FILE_NAME = "model.torchscript.pt"
#: How many tracer warnings the outcome keeps (each names a value the trace may have frozen).
_KEPT_WARNINGS = 5
_TRACER_WARNING: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]


def build_torchscript(
    model: torch.nn.Module,
    out_dir: Path,
    spec: IOSpec,
    manifest: Manifest,
    reference: Runner,
    *,
    benchmark_runs: int = 50,
) -> FormatOutcome:
    """Trace ``model`` at the manifest's input shape into ``out_dir/model.torchscript.pt``.

    The trace is checked by the tracer itself (``check_trace``), saved, reloaded with
    ``torch.jit.load`` and compared with ``reference`` (PyTorch) at batch sizes 1 and 8 at
    ``manifest.tolerances.torchscript``. A failure raises (:class:`ConversionError`, or
    :class:`~heimdall.errors.ParityError` with the numbers) and leaves no file behind.
    """
    path = out_dir / TORCHSCRIPT_FILE_NAME
    example_np = random_inputs(spec, manifest.input_shape[0], np.random.default_rng(0), manifest)
    example = tuple(torch.from_numpy(example_np[name]) for name in spec.input_names)
    was_training = model.training
    model.eval()  # tracing in training mode would record dropout and batch-statistics updates
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Expected: TorchScript is deprecated, and it is still the format asked for.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated.*")
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example, check_trace=True)  # type: ignore[no-untyped-call]
            except Exception as exc:
                raise ConversionError(
                    f"TorchScript tracing failed: {type(exc).__name__}: {str(exc)[:500]}"
                ) from None
    finally:
        model.train(was_training)
    tracer_warnings = [str(w.message) for w in caught if issubclass(w.category, _TRACER_WARNING)]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated.*")
            torch.jit.save(traced, str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        candidate = torch_runner(loaded)
        checks = check_parity(
            reference,
            candidate,
            spec,
            tolerance=manifest.tolerances.torchscript,
            label="torchscript",
            manifest=manifest,
        )
    except BaseException:
        path.unlink(missing_ok=True)  # a model that failed validation is not an output
        raise
    latency = latency_by_batch(candidate, spec, manifest, runs=benchmark_runs)
    return built_outcome(
        ExportFormat.TORCHSCRIPT,
        path,
        parity=checks,
        latency_ms=latency,
        details={
            "method": "trace",
            "example_shape": list(manifest.input_shape),
            "frozen": False,
            "torch_version": torch.__version__,
            "tracer_warnings": tracer_warnings[:_KEPT_WARNINGS],
            "tracer_warning_count": len(tracer_warnings),
            "tolerance": manifest.tolerances.torchscript,
        },
    )
