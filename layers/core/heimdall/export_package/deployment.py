"""What the deployment packages built from an export package share (DESIGN §5, §7).

The edge package (:mod:`heimdall.export_package.edge`) and the container package
(:mod:`heimdall.export_package.container`) both start from ``export-package.zip`` on local disk,
opened and checked by :mod:`heimdall.export_package.reader`. Each file they copy from it is hashed
while it is copied and must match the sha256 in ``metadata.json``; the zips they write are
deterministic like the export package (:mod:`heimdall.export_package.archive`). This module holds
what is written the same way in both: the result (:class:`BuiltPackage`), the package's name, its
``metadata.json`` records and the README sections about the model's inputs and outputs. Standard
library and pydantic only: this code runs in the API Lambda, which has no torch, onnx, onnxruntime
or numpy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall.domain.deployments import ModelPrecision
from heimdall.errors import RequestInvalid
from heimdall.export_package.archive import ZipEntry, file_chunks, write_zip
from heimdall.export_package.metadata import FileRecord, PackageMetadata, shape_text
from heimdall.export_package.reader import ExportPackage


@dataclass(frozen=True)
class BuiltPackage:
    """A deployment package written to disk.

    ``model_file`` is the model's entry name inside the zip; ``precision`` the model's precision.
    """

    path: Path
    file_name: str
    size_bytes: int
    sha256: str
    model_file: str
    precision: ModelPrecision


def copied(package: ExportPackage, source: str) -> ZipEntry:
    """A member of the export package, copied in chunks and checked against its recorded sha256
    (a mismatch raises :class:`~heimdall.errors.PackageInconsistent` and no zip is left behind)."""
    return ZipEntry(chunks=lambda: package.verified_chunks(source), size=package.record(source).size_bytes)


def write_package(
    target: Path, entries: Mapping[str, ZipEntry], model_file: str, precision: ModelPrecision
) -> BuiltPackage:
    """Write the deployment package ``target`` and describe what was written."""
    write_zip(target, entries)
    digest = hashlib.sha256()
    for chunk in file_chunks(target):
        digest.update(chunk)
    return BuiltPackage(
        path=target,
        file_name=target.name,
        size_bytes=target.stat().st_size,
        sha256=digest.hexdigest(),
        model_file=model_file,
        precision=precision,
    )


def file_records(texts: Mapping[str, bytes], copies: Mapping[str, FileRecord]) -> dict[str, dict[str, Any]]:
    """``metadata.json``'s ``files`` of a deployment package: generated texts and copied members."""
    records = {
        name: {"sha256": hashlib.sha256(d).hexdigest(), "size_bytes": len(d)} for name, d in texts.items()
    }
    records.update({name: r.model_dump(mode="json") for name, r in copies.items()})
    return {name: records[name] for name in sorted(records)}


def _slug(text: str) -> str:
    """A file-name and image-name friendly form of ``text`` (lower case, ``[a-z0-9-]``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-")


def package_name(name: str, metadata: PackageMetadata) -> str:
    """The slug a deployment package's file (and image) is named by; a blank ``name`` is refused."""
    if not isinstance(name, str) or not name.strip():
        raise RequestInvalid("a deployment package needs a name", field="name")
    return _slug(name) or _slug(metadata.model.name) or "model"


# --- README sections --------------------------------------------------------------------------------


def io_table(metadata: PackageMetadata, minus_one: str) -> list[str]:
    """The I/O as a table; ``minus_one`` says who writes dynamic dimensions as -1."""
    lines = ["| | name | dtype | shape |", "|---|---|---|---|"]
    for kind, tensors in (("input", metadata.inputs), ("output", metadata.outputs)):
        lines += [f"| {kind} | `{t.name}` | {t.dtype} | `{shape_text(t.shape)}` |" for t in tensors]
    dynamic = any(not isinstance(d, int) for t in (*metadata.inputs, *metadata.outputs) for d in t.shape)
    lines += [
        "",
        f"A name (`batch`) or `?` marks a dynamic dimension; {minus_one} writes it as -1."
        if dynamic
        else "Every dimension is fixed.",
    ]
    return lines


def preprocessing_lines(metadata: PackageMetadata) -> list[str]:
    """How to normalise the input, or that nothing needs to be done."""
    norm = metadata.preprocessing.normalization if metadata.preprocessing else None
    if norm is None:
        return ["No normalisation constants were given: feed the input as it is."]
    return [
        f"Normalise per channel (axis {norm.axis}) before inference: `(x - mean) / std` with",
        "",
        f"- mean = `{[float(v) for v in norm.mean]}`",
        f"- std = `{[float(v) for v in norm.std]}`",
    ]


def postprocessing_lines(metadata: PackageMetadata) -> list[str]:
    """What each output means, where metadata.json says."""
    meanings = metadata.postprocessing.outputs if metadata.postprocessing else []
    return [f"- `{m.name}`: {m.description}" for m in meanings if m.description]


def min_onnxruntime(metadata: PackageMetadata) -> str | None:
    """The oldest ONNX Runtime release the model needs, when the compatibility table names one."""
    onnx = metadata.compatibility.onnx if metadata.compatibility else None
    return onnx.min_onnxruntime if onnx else None
