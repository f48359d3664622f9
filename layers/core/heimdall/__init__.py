"""Heimdall Export: turn trained PyTorch checkpoints into validated, portable, deployable models.

The runtime part of this package is the Lambda core layer: everything but ``heimdall.cli`` (the
command line), ``heimdall.local`` (the local stack) and ``heimdall.testing`` (fakes and samples), which
``layers/core/build_layer.py`` leaves out of the layer. What a handler imports stays light: nothing
it loads imports torch, onnx, onnxruntime, moto or typer at module level (tests check both, the layer's
file list and the imports, in fresh interpreters).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("heimdall-export")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
