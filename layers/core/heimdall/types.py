"""Small shared types that many modules need, in a module that imports nothing else from Heimdall.

Keeping them here lets a function that only needs, say, :class:`ExportFormat` avoid loading the bundle
format, the manifest and their dependencies (Lambda cold starts).
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import Field, StringConstraints

#: A dimension: a size, -1 for "dynamic", or a symbolic name such as "batch".
Dim = int | Annotated[str, StringConstraints(min_length=1, max_length=64)]
Shape = Annotated[list[Dim], Field(max_length=16)]


class ExportFormat(enum.StrEnum):
    """The formats a conversion job can build."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    ONNX_FP16 = "onnx_fp16"
    ONNX_INT8 = "onnx_int8"
    TENSORRT = "tensorrt"
