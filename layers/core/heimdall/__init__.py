"""Heimdall Export: turn trained PyTorch checkpoints into validated, portable, deployable models.

This package is the Lambda core layer. It must stay light: nothing here imports torch, onnx,
onnxruntime, moto or typer at module level (``heimdall.cli`` is the one exception, and no Lambda
imports it). A test checks this in a fresh interpreter.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("heimdall-export")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
