"""Facts the export package's generators share: which ONNX Runtime a model needs, the input's
layout, Triton's batch size, the normalisation constants, what each output means and which runtimes
each built file needs. Computed once from the :class:`Manifest`, the :class:`IOSpec` and the
outcomes, so ``metadata.json``, the README and the wrappers cannot disagree about them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from heimdall.contracts.jobs import FormatOutcome, FormatStatus
from heimdall.contracts.manifest import ExportFormat, Manifest
from heimdall.errors import ConversionError
from heimdall.export_package.layout import METADATA_FILE_NAME, README_FILE_NAME
from heimdall_batch.architectures import UNCERTAINTY_MAX, UNCERTAINTY_MIN
from heimdall_batch.specs import IOSpec

#: (ONNX Runtime release, highest ai.onnx opset, highest IR version) per release, from the version
#: table of https://onnxruntime.ai/docs/reference/compatibility.html (1.20 is its newest row).
#: A release loads models whose opset and IR version are at most its own.
ONNXRUNTIME_COMPATIBILITY: Final[tuple[tuple[str, int, int], ...]] = (
    ("1.0", 11, 6),
    ("1.3", 12, 7),
    ("1.6", 13, 7),
    ("1.8", 14, 7),
    ("1.9", 15, 8),
    ("1.11", 16, 8),
    ("1.12", 17, 8),
    ("1.14", 18, 8),
    ("1.15", 19, 8),
    ("1.16", 19, 9),
    ("1.17", 20, 9),
    ("1.18", 21, 10),
    ("1.20", 21, 10),
)
ONNXRUNTIME_COMPATIBILITY_SOURCE: Final = "https://onnxruntime.ai/docs/reference/compatibility.html"


#: Layout of the input by rank; axis 1 is the channel axis the normalisation stats describe.
_LAYOUTS: Final[Mapping[int, str]] = {1: "N", 2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}


# --- facts shared by the generators ------------------------------------------------------------------


def minimum_onnxruntime(opset: Any, ir_version: Any) -> str | None:
    """The oldest ONNX Runtime release that loads a model of this opset and IR version.

    ``None`` when either is unknown or newer than the newest row of
    :data:`ONNXRUNTIME_COMPATIBILITY` (then no release in the documented table can be named).
    """
    if not isinstance(opset, int) or not isinstance(ir_version, int):
        return None
    for release, max_opset, max_ir in ONNXRUNTIME_COMPATIBILITY:
        if opset <= max_opset and ir_version <= max_ir:
            return release
    return None


def input_layout(spec: IOSpec) -> str | None:
    """``NCHW``-style layout of the input, from its rank (axis 1 is the channel axis)."""
    return _LAYOUTS.get(len(spec.inputs[0].shape))


def triton_max_batch_size(manifest: Manifest, spec: IOSpec) -> int:
    """Triton's ``max_batch_size``: the TensorRT profile's maximum with a dynamic batch, else 0."""
    return manifest.tensorrt.max_batch_size if spec.dynamic_batch else 0


def normalization_stats(manifest: Manifest) -> tuple[list[float], list[float]] | None:
    """The means and stds to normalise the input with, as floats; ``None`` without both."""
    # Partial stats (means without stds) cannot normalise: the wrappers are then built without.
    pair = manifest.normalization_stats.means_and_stds() if manifest.normalization_stats else None
    if pair is None:
        return None
    means, stds = pair
    if not all(math.isfinite(v) for v in [*means, *stds]):
        raise ConversionError("normalization_stats must be finite numbers")
    return [float(m) for m in means], [float(s) for s in stds]


def output_description(manifest: Manifest, index: int, count: int) -> str:
    """What output ``index`` of ``count`` means, and what the model already applied to it."""
    if manifest.architecture == "localization_net" and count == 2:
        if index == 0:
            return "estimated positions, one row per sample (unbounded regression output, no activation)"
        return (
            f"uncertainty per position: a sigmoid clamped to [{UNCERTAINTY_MIN}, {UNCERTAINTY_MAX}] "
            "inside the model, so every value already lies in that range; no further processing needed"
        )
    return "the model's raw output; no post-processing is applied by the model or the wrappers"


def compatibility(
    manifest: Manifest, outcomes: Sequence[FormatOutcome], onnx_metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """Which runtimes each built file needs."""
    opset, ir_version = onnx_metadata.get("opset"), onnx_metadata.get("ir_version")
    min_ort = minimum_onnxruntime(opset, ir_version)
    newest = ONNXRUNTIME_COMPATIBILITY[-1]
    onnx = {
        "opset": opset,
        "ir_version": ir_version,
        "producer_name": onnx_metadata.get("producer_name"),
        "producer_version": onnx_metadata.get("producer_version"),
        "min_onnxruntime": min_ort,
        "min_onnxruntime_source": ONNXRUNTIME_COMPATIBILITY_SOURCE,
    }
    upgrade = onnx_metadata.get("opset_upgrade")
    if upgrade is not None:
        # A bundle's model ONNX Runtime could not load as stamped: say that model.onnx is its upgrade,
        # not the bundle's bytes (which hash to bundle_onnx_sha256).
        onnx["bundle_onnx_sha256"] = onnx_metadata.get("bundle_onnx_sha256")
        onnx["opset_upgrade"] = dict(upgrade)
    if min_ort is None:
        onnx["note"] = (
            f"opset {opset} / IR {ir_version} is newer than the documented table (which ends at "
            f"onnxruntime {newest[0]}: opset {newest[1]}, IR {newest[2]}); use a recent onnxruntime"
        )
    result: dict[str, Any] = {"onnx": onnx}
    for outcome in outcomes:
        if outcome.status is not FormatStatus.BUILT or outcome.format is ExportFormat.ONNX:
            continue
        if outcome.format in (ExportFormat.ONNX_FP16, ExportFormat.ONNX_INT8):
            result[outcome.format.value] = {
                "file": outcome.file,
                "opset": outcome.details.get("opset", opset),
                "min_onnxruntime": min_ort,
                "note": "derived from the FP32 model; same opset and IR version unless stated",
            }
        elif outcome.format is ExportFormat.TORCHSCRIPT:
            result["torchscript"] = {
                "file": outcome.file,
                "torch_version": outcome.details.get("torch_version", onnx_metadata.get("producer_version")),
                "note": "load with torch.jit.load in PyTorch or LibTorch of this version or newer",
            }
        elif outcome.format is ExportFormat.TENSORRT:
            result["tensorrt"] = _engine_compatibility(manifest, outcome)
    return result


def _engine_compatibility(manifest: Manifest, outcome: FormatOutcome) -> dict[str, Any]:
    details = outcome.details
    return {
        "file": outcome.file,
        "tensorrt_version": details.get("tensorrt_version"),
        "compute_capability": details.get("compute_capability"),
        "gpu": details.get("gpu_name", details.get("gpu")),
        "precision": details.get("precision", manifest.tensorrt.precision),
        "batch_profile": details.get("profile", list(manifest.tensorrt.profile)),
        "portable": False,
        "note": (
            "engines are not portable: one runs only with the TensorRT version that built it, on GPUs "
            "of the same compute capability; rebuild it from model.onnx anywhere else"
        ),
    }


def fp32_onnx_file(outcomes: Sequence[FormatOutcome]) -> str:
    """The FP32 ONNX model's file: the wrappers and the Triton repository run it, so it must be built."""
    onnx = next((o for o in outcomes if o.format is ExportFormat.ONNX), None)
    if onnx is None or onnx.status is not FormatStatus.BUILT:
        raise ConversionError("the export package needs the FP32 ONNX model, which was not built")
    return built_file_name(onnx)


def built_file_name(outcome: FormatOutcome) -> str:
    """A built outcome's file: a plain name in the output directory, not one of the package's own."""
    name = outcome.file
    # A plain name in the output directory: never a path that could leave the package root.
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ConversionError(f"the built {outcome.format.value} outcome names no usable file ({name!r})")
    if name in (METADATA_FILE_NAME, README_FILE_NAME):
        raise ConversionError(f"a model file cannot be called {name!r} (the package's own file)")
    return name
