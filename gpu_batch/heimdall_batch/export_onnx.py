"""Stage: export the PyTorch model to ONNX at the manifest's opset, with a named dynamic batch axis."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heimdall import __version__
from heimdall.contracts.manifest import Manifest
from heimdall.errors import ConversionError
from heimdall_batch.specs import BATCH_AXIS, IOSpec

ONNX_FILE_NAME = "model.onnx"


@dataclass(frozen=True)
class OnnxExport:
    """The exported FP32 model and the compatibility facts the package and bundle report."""

    path: Path
    opset: int
    ir_version: int
    producer_name: str
    producer_version: str

    @classmethod
    def of(cls, path: Path, proto: Any) -> OnnxExport:
        """The facts of ``proto`` (an ``onnx.ModelProto``), saved at ``path``."""
        return cls(
            path=path,
            opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
            ir_version=proto.ir_version,
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
        )

    def compatibility(self) -> dict[str, object]:
        """The facts as the export package's metadata records them."""
        return {
            "opset": self.opset,
            "ir_version": self.ir_version,
            "producer_name": self.producer_name,
            "producer_version": self.producer_version,
        }


def export_onnx(model: torch.nn.Module, manifest: Manifest, spec: IOSpec, out_dir: Path) -> OnnxExport:
    """Export ``model`` to ``out_dir/model.onnx``, stamp its metadata, and run the full checker.

    The TorchScript-based exporter (``dynamo=False``) is used on purpose: it honours the requested
    opset exactly and needs no extra packages; torch is pinned to a range that still has it. The
    graph's I/O names must be the manifest's, and with ``dynamic_batch`` every input and output must
    carry the symbolic ``batch`` axis: an export that froze it is an error here, not a surprise later.
    """
    import onnx  # noqa: PLC0415 - heavy: only this stage and the validators need it

    path = out_dir / ONNX_FILE_NAME
    example = torch.zeros(*manifest.input_shape, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                opset_version=manifest.opset,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ConversionError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:500]}") from None

    proto = onnx.load(str(path))
    stamps = {
        "heimdall.model_name": manifest.model_name,
        "heimdall.version": manifest.version,
        "heimdall.architecture": manifest.architecture,
        "heimdall.producer_version": __version__,
        "heimdall.torch_version": torch.__version__,
    }
    del proto.metadata_props[:]
    for key, value in stamps.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = manifest.description or f"{manifest.model_name} {manifest.version}"
    _check_io(proto, spec)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the exported ONNX model fails onnx.checker: {str(exc)[:500]}") from None
    onnx.save(proto, str(path))
    exported = OnnxExport.of(path, proto)
    if exported.opset != manifest.opset:
        raise ConversionError(
            f"the exporter wrote opset {exported.opset}, the manifest asks for {manifest.opset}"
        )
    return exported


def _check_io(proto: object, spec: IOSpec) -> None:
    graph = proto.graph  # type: ignore[attr-defined]
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    for declared, actual in ((spec.inputs, inputs), (spec.outputs, list(graph.output))):
        names = [v.name for v in actual]
        expected = [t.name for t in declared]
        if names != expected:
            raise ConversionError(f"the exported graph has I/O {names}, the manifest declares {expected}")
        if spec.dynamic_batch:
            for value in actual:
                dims = value.type.tensor_type.shape.dim
                if not dims or dims[0].dim_param != BATCH_AXIS:
                    first = dims[0].dim_value if dims else "none"
                    raise ConversionError(
                        f"the exported {value.name!r} has batch dimension {first!r}, not the dynamic "
                        f"{BATCH_AXIS!r} axis (the model fixes the batch size somewhere)"
                    )
