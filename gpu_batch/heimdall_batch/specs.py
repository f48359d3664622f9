"""Input and output specs of a model, declared once and used by every stage.

Export (names, dynamic axes), parity and calibration (input shapes), the export package's metadata,
the wrappers and the Triton configuration all read the same :class:`IOSpec`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from heimdall.bundle.structural import TensorSpec
from heimdall.contracts.manifest import Manifest
from heimdall.errors import UnsupportedArchitecture

BATCH_AXIS = "batch"


@dataclass(frozen=True)
class IOSpec:
    """Names, dtypes and shapes of a model's inputs and outputs; dim 0 is the batch axis."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_batch: bool

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes``: the named batch axis on every input and output."""
        if not self.dynamic_batch:
            return {}
        return {t.name: {0: BATCH_AXIS} for t in (*self.inputs, *self.outputs)}

    @property
    def fixed_batch_size(self) -> int:
        """The batch size a model without a dynamic batch axis was exported with (else 1)."""
        first = self.inputs[0].shape[0]
        return first if isinstance(first, int) else 1

    def batch_sizes(self, wanted: Iterable[int]) -> tuple[int, ...]:
        """``wanted`` with a dynamic batch axis; only the fixed batch size otherwise."""
        return tuple(wanted) if self.dynamic_batch else (self.fixed_batch_size,)

    def input_shape(self, batch_size: int, index: int = 0) -> tuple[int, ...]:
        """The concrete shape of input ``index`` at ``batch_size``."""
        dims = self.inputs[index].shape[1:]
        return (batch_size, *(int(d) for d in dims if isinstance(d, int)))


def io_spec(manifest: Manifest, model: torch.nn.Module) -> IOSpec:
    """The model's I/O as the manifest names it, with output shapes found by running it once."""
    batch = manifest.batch_dim
    example = torch.zeros(*manifest.input_shape, dtype=torch.float32)
    with torch.inference_mode():
        outputs = as_tuple(model(example))
    if len(outputs) != len(manifest.output_names):
        raise UnsupportedArchitecture(
            f"the model returns {len(outputs)} outputs but the manifest names {len(manifest.output_names)} "
            f"({', '.join(manifest.output_names)})"
        )
    return IOSpec(
        inputs=(
            TensorSpec(
                name=manifest.input_names[0], elem_type="float32", shape=(batch, *manifest.input_shape[1:])
            ),
        ),
        outputs=tuple(
            TensorSpec(name=name, elem_type=_dtype_name(out.dtype), shape=(batch, *out.shape[1:]))
            for name, out in zip(manifest.output_names, outputs, strict=True)
        ),
        dynamic_batch=manifest.dynamic_batch,
    )


def as_tuple(result: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A model's output as a tuple of tensors, whatever it returned."""
    if isinstance(result, torch.Tensor):
        return (result,)
    return tuple(result)


def random_inputs(
    spec: IOSpec, batch_size: int, rng: np.random.Generator, manifest: Manifest | None = None
) -> dict[str, np.ndarray]:
    """Representative model inputs at ``batch_size`` (calibration, parity, benchmarks).

    The model sees preprocessed features: ``(raw - mean) / std`` per channel (axis 1), as the
    export package's wrappers apply it. With normalisation stats in the manifest, raw features are
    drawn per channel from the training distribution the stats describe and then preprocessed
    exactly so; without stats, inputs are standard normal.
    """
    shape = spec.input_shape(batch_size)
    stats = manifest.normalization_stats if manifest is not None else None
    pair = stats.means_and_stds() if stats is not None else None  # partial stats describe nothing
    if pair is not None and len(shape) >= 2 and len(pair[0]) == shape[1]:
        per_channel = (1, -1, *([1] * (len(shape) - 2)))
        means = np.asarray(pair[0], dtype=np.float32).reshape(per_channel)
        stds = np.asarray(pair[1], dtype=np.float32).reshape(per_channel)
        raw = rng.standard_normal(shape, dtype=np.float32) * stds + means
        data = ((raw - means) / stds).astype(np.float32)
    else:
        data = rng.standard_normal(shape, dtype=np.float32)
    return {spec.inputs[0].name: data}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
