"""The container package (DESIGN §5, §7): ``{name}-container.zip``, a Triton image recipe.

Built from an export package: a ``Dockerfile`` ``FROM`` a Triton Inference Server image, the Triton
model repository of the export package under ``model_repository/``, an executable ``build.sh``,
``metadata.json`` with a ``container`` section, and a README (build, run, a KServe v2 request). The
export package is checked first (:mod:`heimdall.export_package.reader`), its Triton configuration
must agree with its metadata (:func:`~heimdall.export_package.triton.check_triton_config`) and every
file copied must match its sha256 in ``metadata.json``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from heimdall import __version__
from heimdall.domain.deployments import MAX_IMAGE_REFERENCE
from heimdall.errors import PackageInconsistent, RequestInvalid
from heimdall.export_package.archive import ZipEntry, json_bytes
from heimdall.export_package.deployment import (
    BuiltPackage,
    copied,
    file_records,
    io_table,
    min_onnxruntime,
    package_name,
    postprocessing_lines,
    preprocessing_lines,
    write_package,
)
from heimdall.export_package.layout import (
    GENERATOR,
    METADATA_FILE_NAME,
    README_FILE_NAME,
    TRITON_CONFIG_FILE_NAME,
    TRITON_MODEL_FILE_NAME,
    triton_config_path,
    triton_model_path,
)
from heimdall.export_package.metadata import PackageMetadata, cell, example_shape
from heimdall.export_package.reader import MAX_PACKAGE_BYTES, open_export_package
from heimdall.export_package.triton import MAX_CONFIG_BYTES, TRITON_TYPES, check_triton_config, parse_pbtxt

#: The Triton Inference Server image a container package builds on unless told otherwise: a pinned
#: release (CUDA 12.8; its ONNX Runtime backend loads every opset and IR version of the
#: compatibility table the export package uses), never a moving tag.
DEFAULT_TRITON_IMAGE: Final = "nvcr.io/nvidia/tritonserver:25.01-py3"

# Files of the container package.
DOCKERFILE_NAME: Final = "Dockerfile"
BUILD_SCRIPT_NAME: Final = "build.sh"
MODEL_REPOSITORY_DIR: Final = "model_repository"
#: Triton's ports: HTTP/REST (KServe v2), gRPC, Prometheus metrics.
TRITON_PORTS: Final[Mapping[int, str]] = {8000: "HTTP (KServe v2)", 8001: "gRPC", 8002: "metrics"}

# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest] (the distribution
# reference grammar), with a tag or a digest required so that the image is pinned.
_DOMAIN_PART: Final = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE: Final = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]{{1,5}})?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?",
    re.ASCII,
)


def build_container_package(
    export_package: Path,
    out_dir: Path,
    *,
    name: str,
    triton_image: str | None = DEFAULT_TRITON_IMAGE,
    max_bytes: int = MAX_PACKAGE_BYTES,
) -> BuiltPackage:
    """Write ``out_dir/{name}-container.zip``: a Triton image recipe for the export package's model.

    ``triton_image`` (``None``: :data:`DEFAULT_TRITON_IMAGE`) must be a pinned image reference (a
    tag or a digest), else
    :class:`RequestInvalid` (``options.triton_image``). The Triton repository of the package
    (``triton/{model}/config.pbtxt``, ``triton/{model}/1/model.onnx``) is copied to
    ``model_repository/{model}/``; its files must match ``metadata.json``'s sha256 and the
    configuration must agree with ``metadata.json``'s inputs and outputs, else
    :class:`PackageInconsistent`.
    """
    image = check_triton_image(DEFAULT_TRITON_IMAGE if triton_image is None else triton_image)
    with open_export_package(Path(export_package), max_bytes=max_bytes) as package:
        metadata = package.metadata
        slug = package_name(name, metadata)
        model_name = metadata.model.name
        source_config = triton_config_path(model_name)
        source_model = triton_model_path(model_name)
        for required in (source_config, source_model):
            if not package.has(required):
                raise PackageInconsistent(
                    f"the export package has no Triton repository for {model_name} ({required} is missing)",
                    file=required,
                )
        raw_config = package.read_verified(source_config, MAX_CONFIG_BYTES)
        try:
            config_text = raw_config.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageInconsistent(f"{source_config} is not UTF-8 text", file=source_config) from None
        check_triton_config(config_text, package.raw_metadata)
        max_batch = int(parse_pbtxt(config_text)["max_batch_size"][0])
        model_record = package.record(source_model)
        repository = f"{MODEL_REPOSITORY_DIR}/{model_name}"
        model_file = f"{repository}/1/{TRITON_MODEL_FILE_NAME}"
        image_tag = f"{slug}:{re.sub(r'[^A-Za-z0-9_.-]', '-', metadata.model.version)[:128]}"
        texts = {
            DOCKERFILE_NAME: _dockerfile(image, metadata).encode(),
            BUILD_SCRIPT_NAME: _build_script(image_tag, metadata).encode(),
            README_FILE_NAME: _container_readme(
                metadata, name=name, image=image, image_tag=image_tag, max_batch=max_batch
            ).encode(),
            f"{repository}/{TRITON_CONFIG_FILE_NAME}": raw_config,
        }
        container = {
            "deployment_name": name,
            "generator": GENERATOR,
            "triton_image": image,
            "image_tag": image_tag,
            "model_repository": MODEL_REPOSITORY_DIR,
            "model_name": model_name,
            "model_file": model_file,
            "precision": "fp32",
            "sha256": model_record.sha256,
            "size_bytes": model_record.size_bytes,
            "max_batch_size": max_batch,
            "ports": {str(port): role for port, role in TRITON_PORTS.items()},
        }
        files = file_records(texts, {model_file: model_record})
        document = {**package.raw_metadata, "files": files, "container": container}
        entries = {path: ZipEntry(data=data) for path, data in texts.items()}
        entries[BUILD_SCRIPT_NAME] = ZipEntry(data=texts[BUILD_SCRIPT_NAME], executable=True)
        entries[METADATA_FILE_NAME] = ZipEntry(data=json_bytes(document))
        entries[model_file] = copied(package, source_model)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{slug}-container.zip"
        return write_package(target, entries, model_file, "fp32")


def check_triton_image(reference: Any) -> str:
    """``reference`` if it is a pinned Docker image reference (``[registry/]path:tag`` or
    ``...@sha256:digest``), else :class:`RequestInvalid` on ``options.triton_image``."""
    if not isinstance(reference, str) or len(reference) > MAX_IMAGE_REFERENCE:
        raise RequestInvalid(
            f"triton_image must be an image reference of at most {MAX_IMAGE_REFERENCE} characters",
            field="options.triton_image",
        )
    match = _IMAGE_REFERENCE.fullmatch(reference)
    if match is None:
        raise RequestInvalid(
            f"triton_image {reference[:80]!r} is not a Docker image reference "
            "([registry[:port]/]name:tag or name@sha256:digest; lower-case names)",
            field="options.triton_image",
        )
    if match.group("tag") is None and match.group("digest") is None:
        raise RequestInvalid(
            f"triton_image {reference!r} names no tag or digest; pin a release such as "
            f"{DEFAULT_TRITON_IMAGE!r}",
            field="options.triton_image",
        )
    return reference


def _dockerfile(image: str, metadata: PackageMetadata) -> str:
    model = metadata.model
    return (
        f"# Triton Inference Server serving {model.name} {model.version}; generated by Heimdall Export.\n"
        f"FROM {image}\n"
        f'LABEL org.opencontainers.image.title="{model.name}" '
        f'org.opencontainers.image.version="{model.version}"\n'
        f"COPY {MODEL_REPOSITORY_DIR}/ /models/\n"
        f"EXPOSE {' '.join(str(port) for port in TRITON_PORTS)}\n"
        'CMD ["tritonserver", "--model-repository=/models"]\n'
    )


def _build_script(image_tag: str, metadata: PackageMetadata) -> str:
    return (
        "#!/usr/bin/env bash\n"
        f"# Builds the Triton image for {metadata.model.name} {metadata.model.version}.\n"
        f"# Usage: ./build.sh [IMAGE_TAG]   (default {image_tag})\n"
        "set -euo pipefail\n"
        'cd "$(dirname "$0")"\n'
        f'image="${{1:-{image_tag}}}"\n'
        'docker build -t "$image" .\n'
        'echo "built $image; run it with:"\n'
        'echo "  docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 $image"\n'
    )


_KSERVE_TYPES: Final[Mapping[str, str]] = {"TYPE_STRING": "BYTES"}


def _kserve_type(dtype: str) -> str:
    triton = TRITON_TYPES[dtype]
    return _KSERVE_TYPES.get(triton, triton.removeprefix("TYPE_"))


def _zero_literal(dtype: str) -> str:
    if dtype == "bool":
        return "False"
    if dtype == "string":
        return '""'
    return "0.0" if dtype.startswith(("float", "bfloat")) else "0"


def _container_readme(
    metadata: PackageMetadata, *, name: str, image: str, image_tag: str, max_batch: int
) -> str:
    model = metadata.model
    repository = f"{MODEL_REPOSITORY_DIR}/{model.name}"
    min_ort = min_onnxruntime(metadata)
    request_lines = []
    for tensor in metadata.inputs:
        shape = example_shape(tensor.shape)
        request_lines.append(
            f'    {{"name": "{tensor.name}", "shape": {shape}, "datatype": "{_kserve_type(tensor.dtype)}", '
            f'"data": [{_zero_literal(tensor.dtype)}] * {math.prod(shape)}}},'
        )
    outputs = ", ".join(f'{{"name": "{t.name}"}}' for t in metadata.outputs)
    ports = "\n".join(f"- `{port}`: {role}" for port, role in TRITON_PORTS.items())
    batching = (
        f"`max_batch_size: {max_batch}`: Triton adds the batch dimension to the configured dims and "
        "batches concurrent requests (`dynamic_batching`); a request's first dimension is its batch size."
        if max_batch > 0
        else "`max_batch_size: 0`: the batch size is fixed; requests carry the full shape."
    )
    lines = [
        f"# {cell(name)}: Triton container for {model.name} {model.version}",
        "",
        f"A Docker build context that serves `{model.name}` {model.version} with NVIDIA Triton Inference "
        f"Server (`{image}`) and its ONNX Runtime backend. Generated by Heimdall Export {__version__}; "
        "`metadata.json` (its `container` section) holds the same facts with the sha256 of every file.",
        "",
        "## Contents",
        "",
        f"- `{DOCKERFILE_NAME}`: `FROM {image}`, copies the model repository to `/models`",
        f"- `{BUILD_SCRIPT_NAME}`: builds the image",
        f"- `{repository}/config.pbtxt`: the Triton configuration, generated from the model's real I/O",
        f"- `{repository}/1/{TRITON_MODEL_FILE_NAME}`: the FP32 ONNX model "
        f"(sha256 `{metadata.files[triton_model_path(model.name)].sha256}`)",
        "- `metadata.json`, `README.md`",
        "",
        "## Build",
        "",
        "```bash",
        "./build.sh                      # docker build -t " + image_tag,
        "./build.sh registry.example.com/team/" + image_tag + "   # or a tag of your own",
        "```",
        "",
        "## Run",
        "",
        "```bash",
        f"docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 {image_tag}",
        "curl -sf localhost:8000/v2/health/ready && echo ready",
        f"curl -s localhost:8000/v2/models/{model.name}      # the model's metadata",
        "```",
        "",
        "Without a GPU leave out `--gpus all`: the ONNX Runtime backend then runs on the CPU.",
        "",
        ports,
        "",
        "## Inference (KServe v2 protocol)",
        "",
        *io_table(metadata, "config.pbtxt"),
        "",
        batching,
        "",
        "```bash",
        "python3 - > request.json <<'EOF'",
        "import json",
        "print(json.dumps({",
        '  "inputs": [',
        *request_lines,
        "  ],",
        f'  "outputs": [{outputs}],',
        "}))",
        "EOF",
        f"curl -s -X POST localhost:8000/v2/models/{model.name}/infer \\",
        "  -H 'Content-Type: application/json' -d @request.json",
        "```",
        "",
        "The answer's `outputs` hold each output's `name`, `shape`, `datatype` and row-major `data`.",
        "",
        "### Preprocessing",
        "",
        "Triton serves the model as it is: preprocess on the client.",
        "",
        *preprocessing_lines(metadata),
    ]
    post = postprocessing_lines(metadata)
    if post:
        lines += ["", "### Outputs", "", *post]
    lines += [
        "",
        "## Compatibility",
        "",
        (
            f"The model needs ONNX Runtime {min_ort} or newer; the Triton release's ONNX Runtime backend "
            "must be at least that (NVIDIA's Frameworks Support Matrix lists it per release)."
            if min_ort
            else "The model's opset is newer than the compatibility table: use a recent Triton release."
        ),
    ]
    return "\n".join(lines) + "\n"
