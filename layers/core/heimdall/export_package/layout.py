"""The layout of the export package (``export-package.zip``): the names of its files.

The Batch job writes these paths and the deployments code reads them back, so both take them from
here. The zip's own name is part of the job's output contract:
:data:`heimdall.contracts.jobs.PACKAGE_FILE_NAME`.
"""

from __future__ import annotations

from typing import Final

from heimdall import __version__

#: Every text this project generates says which release wrote it.
GENERATOR: Final = f"heimdall-export {__version__}"

METADATA_FILE_NAME: Final = "metadata.json"
README_FILE_NAME: Final = "README.md"
PYTHON_WRAPPER_PATH: Final = "runtimes/python/model_wrapper.py"
CPP_HEADER_PATH: Final = "runtimes/cpp/model_wrapper.hpp"
CPP_SOURCE_PATH: Final = "runtimes/cpp/model_wrapper.cpp"
SWIFT_WRAPPER_PATH: Final = "runtimes/swift/ModelWrapper.swift"
KOTLIN_WRAPPER_PATH: Final = "runtimes/kotlin/ModelWrapper.kt"
#: The model file of a Triton model repository (``default_model_filename``).
TRITON_MODEL_FILE_NAME: Final = "model.onnx"
TRITON_CONFIG_FILE_NAME: Final = "config.pbtxt"


def triton_config_path(model_name: str) -> str:
    """The Triton configuration of the package's model repository."""
    return f"triton/{model_name}/{TRITON_CONFIG_FILE_NAME}"


def triton_model_path(model_name: str) -> str:
    """The FP32 ONNX model in the package's Triton model repository (version 1)."""
    return f"triton/{model_name}/1/{TRITON_MODEL_FILE_NAME}"
