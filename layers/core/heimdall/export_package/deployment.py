"""Deployment packages built from an export package (DESIGN §5, §7): the edge package and the container.

Both start from ``export-package.zip`` on local disk and never trust it: before anything is built the
archive is checked (a readable zip; safe, unique member names; no encryption; stored or deflated
members; at most ``max_bytes`` of declared content and :data:`MAX_ENTRIES` members), ``metadata.json``
is read with limits and validated, and every file it lists must be in the archive with the size it
records. Each file that goes into a deployment package is hashed while it is copied and must match the
sha256 in ``metadata.json``; the Triton configuration must agree with the metadata's inputs and
outputs (:func:`check_triton_config`). Every refusal is :class:`~heimdall.errors.PackageInconsistent`
(422); a request the package cannot satisfy (a precision that was not built, an image reference that is
not one) is :class:`~heimdall.errors.RequestInvalid` naming the option.

:func:`build_edge_package`
    ``{name}-edge.zip`` for mobile and edge devices: one ONNX model (INT8 when it was built, else FP16,
    else FP32, or the precision asked for), the Kotlin and Swift wrappers of the export package,
    ``metadata.json`` (the package's, with an ``edge`` section and the edge package's own files) and
    a README for Android (``ai.onnxruntime``) and iOS (``onnxruntime-objc``).

:func:`build_container_package`
    ``{name}-container.zip``: a ``Dockerfile`` ``FROM`` a Triton Inference Server image, the Triton
    model repository of the export package under ``model_repository/``, an executable ``build.sh``,
    ``metadata.json`` with a ``container`` section, and a README (build, run, a KServe v2 request).

Model files are copied member to member in chunks, never held in memory whole. The zips are
deterministic like the export package: sorted entries, fixed timestamps and modes, models stored and
text deflated. Standard library and pydantic only: this module runs in the API Lambda, which has no
torch, onnx, onnxruntime or numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal, NoReturn, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from heimdall import __version__
from heimdall.errors import PackageInconsistent, RequestInvalid

__all__ = [
    "DEFAULT_TRITON_IMAGE",
    "EDGE_PRECISION_ORDER",
    "MAX_ENTRIES",
    "MAX_PACKAGE_BYTES",
    "TRITON_TYPES",
    "BuiltPackage",
    "EdgePrecision",
    "ModelPrecision",
    "PackageMetadata",
    "build_container_package",
    "build_edge_package",
    "check_triton_config",
    "check_triton_image",
    "parse_pbtxt",
]

#: The Triton Inference Server image a container package builds on unless told otherwise: a pinned
#: release (CUDA 12.8; its ONNX Runtime backend loads every opset and IR version of the
#: compatibility table the export package uses), never a moving tag.
DEFAULT_TRITON_IMAGE: Final = "nvcr.io/nvidia/tritonserver:25.01-py3"
#: Declared uncompressed content an export package may hold, all members together.
MAX_PACKAGE_BYTES: Final = 2 * 1024**3
#: Members an export package may hold (the generator writes about a dozen).
MAX_ENTRIES: Final = 1000
#: ``metadata.json`` and ``config.pbtxt`` are read whole, so they have caps of their own.
MAX_METADATA_BYTES: Final = 16 * 1024**2
MAX_CONFIG_BYTES: Final = 1024**2

EdgePrecision = Literal["auto", "int8", "fp16", "fp32"]
ModelPrecision = Literal["int8", "fp16", "fp32"]
#: What ``auto`` prefers, best first, and the export format (``metadata.json``'s ``validation`` key)
#: that holds each precision.
EDGE_PRECISION_ORDER: Final[tuple[ModelPrecision, ...]] = ("int8", "fp16", "fp32")
_PRECISION_FORMATS: Final[Mapping[ModelPrecision, str]] = {
    "int8": "onnx_int8",
    "fp16": "onnx_fp16",
    "fp32": "onnx",
}

TensorType = Literal[
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "string",
]
#: ``metadata.json`` dtype -> Triton ``data_type`` (the export package's generator uses this table too).
TRITON_TYPES: Final[Mapping[str, str]] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}

# Files of the export package (the names ``heimdall_batch.package`` writes).
METADATA_FILE_NAME: Final = "metadata.json"
README_FILE_NAME: Final = "README.md"
KOTLIN_WRAPPER_PATH: Final = "runtimes/kotlin/ModelWrapper.kt"
SWIFT_WRAPPER_PATH: Final = "runtimes/swift/ModelWrapper.swift"
TRITON_MODEL_FILE_NAME: Final = "model.onnx"

# Files of the container package.
DOCKERFILE_NAME: Final = "Dockerfile"
BUILD_SCRIPT_NAME: Final = "build.sh"
MODEL_REPOSITORY_DIR: Final = "model_repository"
#: Triton's ports: HTTP/REST (KServe v2), gRPC, Prometheus metrics.
TRITON_PORTS: Final[Mapping[int, str]] = {8000: "HTTP (KServe v2)", 8001: "gRPC", 8002: "metrics"}

#: The one timestamp every entry carries (the earliest a zip can record), here and in the export package.
ZIP_TIMESTAMP: Final = (1980, 1, 1, 0, 0, 0)
_FILE_MODE: Final = 0o100644  # a regular file, rw-r--r--
_SCRIPT_MODE: Final = 0o100755  # a regular file, rwxr-xr-x
_UNIX: Final = 3  # ``create_system`` of an entry made on Unix
_COPY_CHUNK: Final = 1024 * 1024

# Names that go into Dockerfiles, shell scripts, JSON examples and the config: the generator's own
# patterns (heimdall.contracts.manifest), checked again here because the package is input like any other.
_MODEL_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_VERSION: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
_TENSOR_NAME: Final = r"^[A-Za-z0-9_.:/+-]+$"
_SHA256: Final = r"^[0-9a-f]{64}$"
_MAX_RANK: Final = 8
_MAX_TENSORS: Final = 64

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
_MAX_IMAGE_REFERENCE: Final = 300


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


# --- metadata.json ----------------------------------------------------------------------------------

_T = TypeVar("_T", bound=BaseModel)
_ModelName = Annotated[str, StringConstraints(pattern=_MODEL_NAME, max_length=128)]
_Version = Annotated[str, StringConstraints(pattern=_VERSION, max_length=64)]
_TensorName = Annotated[str, StringConstraints(pattern=_TENSOR_NAME, max_length=256)]
_Dim = Annotated[int, Field(ge=1)] | _TensorName | None


class _Facts(BaseModel):
    """The parts of ``metadata.json`` this module relies on; everything else is carried as it is."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class _ModelInfo(_Facts):
    name: _ModelName
    version: _Version


class _Tensor(_Facts):
    name: _TensorName
    dtype: TensorType
    shape: list[_Dim] = Field(max_length=_MAX_RANK)


class _FileRecord(_Facts):
    sha256: Annotated[str, StringConstraints(pattern=_SHA256)]
    size_bytes: int = Field(ge=0)


class _Parity(_Facts):
    max_abs_err: float
    tolerance: float


class _Outcome(_Facts):
    status: str
    file: str | None = None
    parity: list[_Parity] = Field(default_factory=list)


class _Normalization(_Facts):
    mean: list[float]
    std: list[float]
    axis: int = 1


class _Preprocessing(_Facts):
    normalization: _Normalization | None = None


class _OnnxCompatibility(_Facts):
    opset: int | None = None
    min_onnxruntime: str | None = None


class _Compatibility(_Facts):
    onnx: _OnnxCompatibility | None = None


class _OutputMeaning(_Facts):
    name: str
    description: str = ""


class _Postprocessing(_Facts):
    outputs: list[_OutputMeaning] = Field(default_factory=list)


class _TritonFacts(_Facts):
    """What :func:`check_triton_config` compares the configuration with."""

    model: _ModelInfo
    inputs: list[_Tensor] = Field(min_length=1, max_length=_MAX_TENSORS)
    outputs: list[_Tensor] = Field(min_length=1, max_length=_MAX_TENSORS)
    dynamic_batch: bool


class PackageMetadata(_TritonFacts):
    """``metadata.json`` of an export package, as far as a deployment package needs it."""

    files: dict[str, _FileRecord]
    validation: dict[str, _Outcome]
    preprocessing: _Preprocessing | None = None
    postprocessing: _Postprocessing | None = None
    compatibility: _Compatibility | None = None


def _validated(model: type[_T], document: Any) -> _T:
    try:
        facts = model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise PackageInconsistent(
            f"metadata.json does not describe the package: {where}: {first['msg']}", file=METADATA_FILE_NAME
        ) from None
    if isinstance(facts, _TritonFacts):
        for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise PackageInconsistent(
                    f"metadata.json names an {kind} twice: {names}", file=METADATA_FILE_NAME
                )
    return facts


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity, which JSON cannot write back
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _parse_metadata(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackageInconsistent(
            f"metadata.json is not valid JSON: {str(exc)[:200]}", file=METADATA_FILE_NAME
        ) from None
    if not isinstance(document, dict):
        raise PackageInconsistent("metadata.json is not a JSON object", file=METADATA_FILE_NAME)
    return document


# --- reading an export package ----------------------------------------------------------------------


def _unsafe_member_name(name: str) -> bool:
    return (
        not name
        or name.startswith("/")
        or "\\" in name
        or re.match(r"[A-Za-z]:", name) is not None
        or any(part in ("", ".", "..") for part in name.rstrip("/").split("/"))
        or not name.isprintable()
    )


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    unit = "bytes"
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit the loop stops at is the one shown
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def _shown(name: str) -> str:
    return ascii(name[:120])


class _ExportPackage:
    """An open, checked export package: its members, its metadata, verified reads and copies."""

    def __init__(self, archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo]) -> None:
        self._archive = archive
        self._members = members
        self.raw_metadata = _parse_metadata(self._read_small(METADATA_FILE_NAME, MAX_METADATA_BYTES))
        self.metadata = _validated(PackageMetadata, self.raw_metadata)
        for name, record in sorted(self.metadata.files.items()):
            member = members.get(name)
            if member is None:
                raise PackageInconsistent(
                    f"metadata.json lists {_shown(name)}, which the export package does not hold", file=name
                )
            if member.file_size != record.size_bytes:
                raise PackageInconsistent(
                    f"{_shown(name)} holds {member.file_size} bytes, metadata.json records "
                    f"{record.size_bytes}",
                    file=name,
                )

    def has(self, name: str) -> bool:
        return name in self._members

    def record(self, name: str) -> _FileRecord:
        """The sha256 and size ``metadata.json`` records for ``name`` (which must be in the package)."""
        if name not in self._members:
            raise PackageInconsistent(f"the export package has no {_shown(name)}", file=name)
        record = self.metadata.files.get(name)
        if record is None:
            raise PackageInconsistent(f"metadata.json records no sha256 for {_shown(name)}", file=name)
        return record

    def read_verified(self, name: str, limit: int) -> bytes:
        """The whole of a small member, checked against its recorded sha256."""
        record = self.record(name)
        if record.size_bytes > limit:
            raise PackageInconsistent(
                f"{_shown(name)} is {_fmt_bytes(record.size_bytes)}, over the limit of {_fmt_bytes(limit)}",
                file=name,
            )
        chunks = list(self.verified_chunks(name))
        return b"".join(chunks)

    def verified_chunks(self, name: str) -> Iterator[bytes]:
        """The member's bytes in chunks; after the last one its sha256 and size are checked, and a
        mismatch raises :class:`PackageInconsistent` (the caller discards what it wrote)."""
        record = self.record(name)
        digest = hashlib.sha256()
        size = 0
        with self._reading(name) as stream:
            while chunk := self._chunk(stream, name):
                size += len(chunk)
                if size > record.size_bytes:
                    raise PackageInconsistent(
                        f"{_shown(name)} holds more than the {record.size_bytes} bytes metadata.json records",
                        file=name,
                    )
                digest.update(chunk)
                yield chunk
        if size != record.size_bytes or digest.hexdigest() != record.sha256:
            raise PackageInconsistent(
                f"{_shown(name)} does not match metadata.json: sha256 {digest.hexdigest()[:12]}… "
                f"({size} bytes), recorded {record.sha256[:12]}… ({record.size_bytes} bytes)",
                file=name,
            )

    def _read_small(self, name: str, limit: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise PackageInconsistent(f"the export package has no {name}", file=name)
        if member.file_size > limit:
            raise PackageInconsistent(
                f"{name} is {_fmt_bytes(member.file_size)}, over the limit of {_fmt_bytes(limit)}", file=name
            )
        with self._reading(name) as stream:
            data = self._chunk(stream, name, limit + 1)
        if len(data) > limit:  # pragma: no cover - zipfile stops at the declared size
            raise PackageInconsistent(f"{name} is over the limit of {_fmt_bytes(limit)}", file=name)
        return data

    @contextmanager
    def _reading(self, name: str) -> Iterator[IO[bytes]]:
        try:
            with self._archive.open(self._members[name]) as stream:
                yield stream
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise PackageInconsistent(
                f"the export package's {_shown(name)} cannot be read: {str(exc)[:200]}", file=name
            ) from None

    @staticmethod
    def _chunk(stream: IO[bytes], name: str, size: int = _COPY_CHUNK) -> bytes:
        try:
            return stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise PackageInconsistent(
                f"the export package's {_shown(name)} is corrupt: {str(exc)[:200]}", file=name
            ) from None


@contextmanager
def _open_export_package(path: Path, *, max_bytes: int) -> Iterator[_ExportPackage]:
    """Open ``path`` and check everything :mod:`zipfile` can tell before a member is used."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise PackageInconsistent(
            f"the export package is not a readable zip archive: {str(exc)[:200]}"
        ) from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ENTRIES:
            raise PackageInconsistent(
                f"the export package has {len(members)} members, over the limit of {MAX_ENTRIES}"
            )
        by_name: dict[str, zipfile.ZipInfo] = {}
        for member in members:
            name = member.filename
            if _unsafe_member_name(name):
                raise PackageInconsistent(
                    f"the export package has an unsafe member name {_shown(name)} (absolute, '..' or "
                    "not a plain relative path)"
                )
            if name in by_name:
                raise PackageInconsistent(f"the export package holds {_shown(name)} twice")
            if member.flag_bits & 0x1:
                raise PackageInconsistent(f"the export package's {_shown(name)} is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PackageInconsistent(
                    f"the export package's {_shown(name)} uses an unsupported compression method "
                    f"({member.compress_type})"
                )
            if member.file_size > max_bytes:
                raise PackageInconsistent(
                    f"the export package's {_shown(name)} declares {_fmt_bytes(member.file_size)} "
                    f"uncompressed, over the limit of {_fmt_bytes(max_bytes)}"
                )
            by_name[name] = member
        declared = sum(member.file_size for member in members)
        if declared > max_bytes:
            raise PackageInconsistent(
                f"the export package declares {_fmt_bytes(declared)} of content, over the limit of "
                f"{_fmt_bytes(max_bytes)}"
            )
        yield _ExportPackage(archive, {n: m for n, m in by_name.items() if not n.endswith("/")})


# --- writing a deployment package -------------------------------------------------------------------


@dataclass(frozen=True)
class _OutEntry:
    """One file of a deployment package: generated text, or a verified copy of an export member."""

    data: bytes | None = None
    source: str | None = None
    executable: bool = False


def _write_zip(target: Path, entries: Mapping[str, _OutEntry], package: _ExportPackage) -> None:
    """Write ``entries`` in sorted order with fixed metadata; atomically replace ``target``."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name in sorted(entries):
                entry = entries[name]
                info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
                info.create_system = _UNIX
                info.external_attr = (_SCRIPT_MODE if entry.executable else _FILE_MODE) << 16
                if entry.source is not None:
                    # Stored, as in the export package: weights barely compress.
                    info.compress_type = zipfile.ZIP_STORED
                    info.file_size = package.record(entry.source).size_bytes  # decides zip64 up front
                    with archive.open(info, "w") as out:
                        for chunk in package.verified_chunks(entry.source):
                            out.write(chunk)
                else:
                    assert entry.data is not None  # an _OutEntry holds one or the other
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, entry.data)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _built(path: Path, model_file: str, precision: ModelPrecision) -> BuiltPackage:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
    return BuiltPackage(
        path=path,
        file_name=path.name,
        size_bytes=path.stat().st_size,
        sha256=digest.hexdigest(),
        model_file=model_file,
        precision=precision,
    )


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _file_records(texts: Mapping[str, bytes], copies: Mapping[str, _FileRecord]) -> dict[str, dict[str, Any]]:
    records = {
        name: {"sha256": hashlib.sha256(d).hexdigest(), "size_bytes": len(d)} for name, d in texts.items()
    }
    records.update({name: r.model_dump(mode="json") for name, r in copies.items()})
    return {name: records[name] for name in sorted(records)}


def _slug(text: str) -> str:
    """A file-name and image-name friendly form of ``text`` (lower case, ``[a-z0-9-]``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64].strip("-")


def _package_name(name: str, metadata: PackageMetadata) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RequestInvalid("a deployment package needs a name", field="name")
    return _slug(name) or _slug(metadata.model.name) or "model"


# --- shared text --------------------------------------------------------------------------------------


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def _example_shape(shape: Sequence[int | str | None]) -> list[int]:
    """A concrete shape for the examples: batch 1, every other dynamic dimension 1."""
    return [d if isinstance(d, int) else 1 for d in shape]


def _io_table(metadata: PackageMetadata, minus_one: str) -> list[str]:
    """The I/O as a table; ``minus_one`` says who writes dynamic dimensions as -1."""
    lines = ["| | name | dtype | shape |", "|---|---|---|---|"]
    for kind, tensors in (("input", metadata.inputs), ("output", metadata.outputs)):
        lines += [f"| {kind} | `{t.name}` | {t.dtype} | `{_shape_text(t.shape)}` |" for t in tensors]
    dynamic = any(not isinstance(d, int) for t in (*metadata.inputs, *metadata.outputs) for d in t.shape)
    lines += [
        "",
        f"A name (`batch`) or `?` marks a dynamic dimension; {minus_one} writes it as -1."
        if dynamic
        else "Every dimension is fixed.",
    ]
    return lines


def _preprocessing_lines(metadata: PackageMetadata) -> list[str]:
    norm = metadata.preprocessing.normalization if metadata.preprocessing else None
    if norm is None:
        return ["No normalisation constants were given: feed the input as it is."]
    return [
        f"Normalise per channel (axis {norm.axis}) before inference: `(x - mean) / std` with",
        "",
        f"- mean = `{[float(v) for v in norm.mean]}`",
        f"- std = `{[float(v) for v in norm.std]}`",
    ]


def _postprocessing_lines(metadata: PackageMetadata) -> list[str]:
    meanings = metadata.postprocessing.outputs if metadata.postprocessing else []
    return [f"- `{m.name}`: {m.description}" for m in meanings if m.description]


def _min_onnxruntime(metadata: PackageMetadata) -> str | None:
    onnx = metadata.compatibility.onnx if metadata.compatibility else None
    return onnx.min_onnxruntime if onnx else None


# --- the edge package ---------------------------------------------------------------------------------


def build_edge_package(
    export_package: Path,
    out_dir: Path,
    *,
    name: str,
    precision: EdgePrecision = "auto",
    max_bytes: int = MAX_PACKAGE_BYTES,
) -> BuiltPackage:
    """Write ``out_dir/{name}-edge.zip`` from the export package and return what was written.

    ``precision="auto"`` takes the INT8 model when it was built, else the FP16, else the FP32 one; an
    explicit precision that was not built raises :class:`RequestInvalid` (``options.precision``)
    naming those that were. The package is checked first (see the module's docstring); every file
    copied must match its sha256 in ``metadata.json``, else :class:`PackageInconsistent`.
    """
    requested = _checked_precision(precision)
    with _open_export_package(Path(export_package), max_bytes=max_bytes) as package:
        metadata = package.metadata
        slug = _package_name(name, metadata)
        available = _built_models(package)
        chosen = _chosen_precision(requested, available)
        model_file = available[chosen]
        model_record = package.record(model_file)
        wrappers = {path: package.record(path) for path in (KOTLIN_WRAPPER_PATH, SWIFT_WRAPPER_PATH)}
        readme = _edge_readme(metadata, name=name, model_file=model_file, precision=chosen).encode()
        edge = {
            "deployment_name": name,
            "generator": f"heimdall-export {__version__}",
            "requested_precision": requested,
            "precision": chosen,
            "format": _PRECISION_FORMATS[chosen],
            "model_file": model_file,
            "sha256": model_record.sha256,
            "size_bytes": model_record.size_bytes,
            "available_precisions": [p for p in EDGE_PRECISION_ORDER if p in available],
            "wrappers": {"kotlin": KOTLIN_WRAPPER_PATH, "swift": SWIFT_WRAPPER_PATH},
            "runtimes": {
                "android": "com.microsoft.onnxruntime:onnxruntime-android (ai.onnxruntime)",
                "ios": "onnxruntime-objc (CocoaPods) or onnxruntime-swift-package-manager",
                "min_onnxruntime": _min_onnxruntime(metadata),
            },
        }
        files = _file_records({README_FILE_NAME: readme}, {model_file: model_record, **wrappers})
        document = {**package.raw_metadata, "files": files, "edge": edge}
        entries = {
            README_FILE_NAME: _OutEntry(data=readme),
            METADATA_FILE_NAME: _OutEntry(data=_json_bytes(document)),
            model_file: _OutEntry(source=model_file),
            **{path: _OutEntry(source=path) for path in wrappers},
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{slug}-edge.zip"
        _write_zip(target, entries, package)
    return _built(target, model_file, chosen)


def _checked_precision(precision: Any) -> EdgePrecision:
    allowed = get_args(EdgePrecision)
    if precision not in allowed:
        raise RequestInvalid(
            f"precision must be one of {', '.join(allowed)}, not {str(precision)[:40]!r}",
            field="options.precision",
        )
    result: EdgePrecision = precision
    return result


def _built_models(package: _ExportPackage) -> dict[ModelPrecision, str]:
    """Each precision whose model ``metadata.json`` reports built, with its file (which must exist)."""
    available: dict[ModelPrecision, str] = {}
    for precision in EDGE_PRECISION_ORDER:
        export_format = _PRECISION_FORMATS[precision]
        outcome = package.metadata.validation.get(export_format)
        if outcome is None or outcome.status != "built":
            continue
        file = outcome.file
        if (
            not file
            or "/" in file
            or "\\" in file
            or not file.endswith(".onnx")
            or file in (METADATA_FILE_NAME, README_FILE_NAME)
        ):
            raise PackageInconsistent(
                f"metadata.json reports {export_format} built but names no usable model file "
                f"({_shown(str(file))})",
                file=METADATA_FILE_NAME,
            )
        if not package.has(file):
            raise PackageInconsistent(
                f"metadata.json reports {export_format} built as {_shown(file)}, which the export "
                "package does not hold",
                file=file,
            )
        available[precision] = file
    if "fp32" not in available:
        raise PackageInconsistent(
            "the export package has no FP32 ONNX model (metadata.json's validation.onnx is not built)",
            file=METADATA_FILE_NAME,
        )
    return available


def _chosen_precision(requested: EdgePrecision, available: Mapping[ModelPrecision, str]) -> ModelPrecision:
    if requested == "auto":
        return next(p for p in EDGE_PRECISION_ORDER if p in available)
    if requested not in available:
        built = ", ".join(p for p in EDGE_PRECISION_ORDER if p in available)
        raise RequestInvalid(
            f"this export has no {requested} model; built: {built}",
            field="options.precision",
            built=[p for p in EDGE_PRECISION_ORDER if p in available],
        )
    return requested


_PRECISION_NOTES: Final[Mapping[ModelPrecision, str]] = {
    "int8": (
        "INT8, statically quantised (QDQ form: int8 weights, uint8 activations). Inputs and outputs "
        "stay float32, so the wrappers feed it exactly like the FP32 model. The smallest of the three, "
        "and often the fastest on mobile CPUs."
    ),
    "fp16": (
        "FP16 weights and activations; inputs and outputs stay float32 (casts at the edges), so the "
        "wrappers feed it exactly like the FP32 model. Half the size of FP32; it is fastest where the "
        "device has float16 kernels (GPU or NPU execution providers), and may be slower on plain CPUs."
    ),
    "fp32": "FP32, the model as exported and validated against PyTorch.",
}


def _edge_readme(metadata: PackageMetadata, *, name: str, model_file: str, precision: ModelPrecision) -> str:
    model = metadata.model
    tensor = metadata.inputs[0]
    example = ", ".join(str(d) for d in _example_shape(tensor.shape))
    count = math.prod(_example_shape(tensor.shape))
    stem = model_file.removesuffix(".onnx")
    min_ort = _min_onnxruntime(metadata) or "a recent release"
    has_norm = bool(metadata.preprocessing and metadata.preprocessing.normalization)
    outcome = metadata.validation.get(_PRECISION_FORMATS[precision])
    parity = outcome.parity if outcome else []
    lines = [
        f"# {_cell(name)}: edge package for {model.name} {model.version}",
        "",
        f"The model `{model.name}` {model.version} for Android and iOS, run with ONNX Runtime "
        f"({min_ort} or newer). Generated by Heimdall Export {__version__} from the model's export "
        "package; `metadata.json` holds the same facts in machine-readable form (the `edge` section "
        "names the model file), with the sha256 of every other file here.",
        "",
        "## Contents",
        "",
        f"- `{model_file}`: the model to ship with the app (**pass this file to the wrappers**)",
        f"- `{KOTLIN_WRAPPER_PATH}`: Kotlin wrapper (`ai.onnxruntime`)",
        f"- `{SWIFT_WRAPPER_PATH}`: Swift wrapper (`onnxruntime-objc`)",
        "- `metadata.json`, `README.md`",
        "",
        "## Model",
        "",
        _PRECISION_NOTES[precision],
        "",
        f"- file: `{model_file}` ({metadata.files[model_file].size_bytes:,} bytes)",
        f"- sha256: `{metadata.files[model_file].sha256}`",
    ]
    if parity:
        worst = max(c.max_abs_err for c in parity)
        lines.append(
            f"- checked against PyTorch: max abs error {worst:.3g} (tolerance {parity[0].tolerance:g})"
        )
    lines += ["", "## Inputs and outputs", "", *_io_table(metadata, "each wrapper")]
    lines += ["", "### Preprocessing", "", *_preprocessing_lines(metadata)]
    if has_norm:
        lines += ["", "The wrappers normalise for you: `predict(...)` does it by default."]
    post = _postprocessing_lines(metadata)
    if post:
        lines += ["", "### Outputs", "", *post]
    lines += [
        "",
        "## Android (Kotlin, `ai.onnxruntime`)",
        "",
        f"Add `com.microsoft.onnxruntime:onnxruntime-android` ({min_ort} or newer) to the app's "
        f"dependencies, copy `{KOTLIN_WRAPPER_PATH}` into the sources and `{model_file}` into "
        "`src/main/assets/`. ONNX Runtime opens a model from a file path, so copy the asset to the "
        "app's files once:",
        "",
        "```kotlin",
        f'val modelFile = File(context.filesDir, "{model_file}")',
        "if (!modelFile.exists()) {",
        f'    context.assets.open("{model_file}").use {{ input -> '
        "modelFile.outputStream().use { input.copyTo(it) } }",
        "}",
        "ModelWrapper(modelFile.path).use { model ->",
        f"    val input = FloatArray({count})  // row-major, shape ({example})",
        f"    val outputs = model.predict(input, longArrayOf({example}))",
        "    // one property per output, each a Tensor(shape, data): see ModelOutputs in ModelWrapper.kt",
        "}",
        "```",
        "",
        "## iOS (Swift, `onnxruntime-objc`)",
        "",
        f"Add ONNX Runtime ({min_ort} or newer) with CocoaPods (`pod 'onnxruntime-objc'`) or Swift "
        "Package Manager (`onnxruntime-swift-package-manager`, product `onnxruntime`), add "
        f"`{SWIFT_WRAPPER_PATH}` to the target and `{model_file}` to the app bundle:",
        "",
        "```swift",
        f'let path = Bundle.main.path(forResource: "{stem}", ofType: "onnx")!',
        "let model = try ModelWrapper(modelPath: path)",
        f"let input = [Float](repeating: 0, count: {count})  // row-major, shape [{example}]",
        f"let outputs = try model.predict(input, shape: [{example}])",
        "```",
        "",
        "The wrappers check the input's shape against the model's (`INPUT_SHAPE` / `inputShape`, -1 for "
        "a dynamic dimension) before running it.",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


# --- the container package ----------------------------------------------------------------------------


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
    with _open_export_package(Path(export_package), max_bytes=max_bytes) as package:
        metadata = package.metadata
        slug = _package_name(name, metadata)
        model_name = metadata.model.name
        source_config = f"triton/{model_name}/config.pbtxt"
        source_model = f"triton/{model_name}/1/{TRITON_MODEL_FILE_NAME}"
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
            f"{repository}/config.pbtxt": raw_config,
        }
        container = {
            "deployment_name": name,
            "generator": f"heimdall-export {__version__}",
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
        files = _file_records(texts, {model_file: model_record})
        document = {**package.raw_metadata, "files": files, "container": container}
        entries = {path: _OutEntry(data=data) for path, data in texts.items()}
        entries[BUILD_SCRIPT_NAME] = _OutEntry(data=texts[BUILD_SCRIPT_NAME], executable=True)
        entries[METADATA_FILE_NAME] = _OutEntry(data=_json_bytes(document))
        entries[model_file] = _OutEntry(source=source_model)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{slug}-container.zip"
        _write_zip(target, entries, package)
    return _built(target, model_file, "fp32")


def check_triton_image(reference: Any) -> str:
    """``reference`` if it is a pinned Docker image reference (``[registry/]path:tag`` or
    ``...@sha256:digest``), else :class:`RequestInvalid` on ``options.triton_image``."""
    if not isinstance(reference, str) or len(reference) > _MAX_IMAGE_REFERENCE:
        raise RequestInvalid(
            f"triton_image must be an image reference of at most {_MAX_IMAGE_REFERENCE} characters",
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
    min_ort = _min_onnxruntime(metadata)
    request_lines = []
    for tensor in metadata.inputs:
        shape = _example_shape(tensor.shape)
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
        f"# {_cell(name)}: Triton container for {model.name} {model.version}",
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
        f"(sha256 `{metadata.files[f'triton/{model.name}/1/{TRITON_MODEL_FILE_NAME}'].sha256}`)",
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
        *_io_table(metadata, "config.pbtxt"),
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
        *_preprocessing_lines(metadata),
    ]
    post = _postprocessing_lines(metadata)
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


# --- Triton's config.pbtxt ----------------------------------------------------------------------------

_PBTXT_TOKEN: Final = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
      | (?P<punct>[{}\[\]:,;])
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE | re.ASCII,
)
_PBTXT_ESCAPES: Final[Mapping[str, str]] = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "t": "\t"}
_PBTXT_MAX_DEPTH: Final = 16

PbValue = Any  # str | int | float | dict[str, list[PbValue]]


class _PbReader:
    """Protocol-buffer text format, the subset Triton configurations use: fields ``name: value``,
    messages ``name { ... }`` (colon optional), lists ``name: [ a, b ]`` / ``name [ {..}, {..} ]``,
    double-quoted strings, numbers, enum identifiers and ``#`` comments."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens: list[tuple[str, Any, int]] = []
        position = 0
        while position < len(text):
            match = _PBTXT_TOKEN.match(text, position)
            if match is None:
                self._fail(position, f"unexpected {text[position : position + 20]!r}")
            kind = match.lastgroup
            value = match.group()
            if kind == "string":
                self._tokens.append(("value", self._unquote(value, position), position))
            elif kind == "number":
                number: int | float = int(value) if re.fullmatch(r"-?\d+", value) else float(value)
                self._tokens.append(("value", number, position))
            elif kind == "ident":
                self._tokens.append(("ident", value, position))
            elif kind == "punct":
                self._tokens.append(("punct", value, position))
            position = match.end()
        self._index = 0

    def parse(self) -> dict[str, list[PbValue]]:
        return self._message(closing=None, depth=0)

    def _fail(self, position: int, message: str) -> NoReturn:
        line = self._text.count("\n", 0, position) + 1
        raise PackageInconsistent(f"config.pbtxt line {line}: {message}", file="config.pbtxt")

    def _unquote(self, token: str, position: int) -> str:
        body = token[1:-1]
        out: list[str] = []
        index = 0
        while index < len(body):
            char = body[index]
            if char == "\\":
                escaped = body[index + 1]
                if escaped not in _PBTXT_ESCAPES:
                    self._fail(position, f"unsupported escape \\{escaped} in a string")
                out.append(_PBTXT_ESCAPES[escaped])
                index += 2
            else:
                out.append(char)
                index += 1
        return "".join(out)

    def _peek(self) -> tuple[str, Any, int] | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _next(self, expected: str) -> tuple[str, Any, int]:
        token = self._peek()
        if token is None:
            self._fail(len(self._text), f"unexpected end, expected {expected}")
        self._index += 1
        return token

    def _is(self, token: tuple[str, Any, int] | None, punct: str) -> bool:
        return token is not None and token[0] == "punct" and token[1] == punct

    def _message(self, closing: str | None, depth: int) -> dict[str, list[PbValue]]:
        if depth > _PBTXT_MAX_DEPTH:
            token = self._peek()
            self._fail(token[2] if token else len(self._text), "messages nested too deeply")
        fields: dict[str, list[PbValue]] = {}
        while True:
            token = self._peek()
            if token is None:
                if closing is not None:
                    self._fail(len(self._text), f"unexpected end, expected {closing!r}")
                return fields
            if closing is not None and self._is(token, closing):
                self._index += 1
                return fields
            kind, name, position = self._next("a field name")
            if kind != "ident":
                self._fail(position, f"expected a field name, got {name!r}")
            colon = self._is(self._peek(), ":")
            if colon:
                self._index += 1
            following = self._peek()
            if self._is(following, "["):
                self._index += 1
                fields.setdefault(name, []).extend(self._list(depth))
            elif self._is(following, "{"):
                self._index += 1
                fields.setdefault(name, []).append(self._message("}", depth + 1))
            elif colon:
                fields.setdefault(name, []).append(self._scalar())
            else:
                where = following[2] if following else len(self._text)
                self._fail(where, f"expected ':' or '{{' after {name!r}")
            if self._is(self._peek(), ",") or self._is(self._peek(), ";"):
                self._index += 1

    def _list(self, depth: int) -> list[PbValue]:
        values: list[PbValue] = []
        if self._is(self._peek(), "]"):
            self._index += 1
            return values
        while True:
            if self._is(self._peek(), "{"):
                self._index += 1
                values.append(self._message("}", depth + 1))
            else:
                values.append(self._scalar())
            kind, value, position = self._next("',' or ']'")
            if kind == "punct" and value == "]":
                return values
            if kind != "punct" or value != ",":
                self._fail(position, f"expected ',' or ']' in a list, got {value!r}")

    def _scalar(self) -> PbValue:
        kind, value, position = self._next("a value")
        if kind == "punct":
            self._fail(position, f"expected a value, got {value!r}")
        return value


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Read a Triton ``config.pbtxt``: every field maps to the list of its values (messages are
    dicts of the same kind). Raises :class:`PackageInconsistent` naming the line of a syntax error."""
    if len(text) > MAX_CONFIG_BYTES:
        raise PackageInconsistent("config.pbtxt is over the size limit", file="config.pbtxt")
    return _PbReader(text).parse()


def _single(fields: Mapping[str, list[Any]], key: str, kind: type, where: str) -> Any:
    values = fields.get(key, [])
    if len(values) != 1 or not isinstance(values[0], kind) or isinstance(values[0], bool):
        shown = values[0] if len(values) == 1 else values
        raise PackageInconsistent(
            f"config.pbtxt: {where} needs one {key} ({kind.__name__}), has {shown!r}", file="config.pbtxt"
        )
    return values[0]


def _triton_dims(shape: Sequence[int | str | None], *, batched: bool) -> list[int]:
    dims = shape[1:] if batched else shape
    return [d if isinstance(d, int) else -1 for d in dims]


def check_triton_config(config_text: str, metadata: Mapping[str, Any]) -> None:
    """Check that a Triton ``config.pbtxt`` agrees with ``metadata.json``'s model, inputs and outputs.

    The convention is the generator's: with ``max_batch_size`` > 0 (a dynamic batch axis) Triton adds
    the batch dimension itself, so ``dims`` leave it out, and every other dynamic dimension is -1; with
    0 the dims are the full shape. A tensor without dims left is ``dims: [ 1 ]`` with an empty
    ``reshape``. Raises :class:`PackageInconsistent` naming the first disagreement.
    """
    facts = _validated(_TritonFacts, metadata)
    config = parse_pbtxt(config_text)

    def fail(message: str) -> PackageInconsistent:
        return PackageInconsistent(
            f"config.pbtxt disagrees with metadata.json: {message}", file="config.pbtxt"
        )

    name = _single(config, "name", str, "the model")
    if name != facts.model.name:
        raise fail(f"it names the model {name!r}, metadata.json {facts.model.name!r}")
    platform = config.get("platform", [])
    backend = config.get("backend", [])
    if platform != ["onnxruntime_onnx"] and backend != ["onnxruntime"]:
        raise fail(
            f"the model is not served by the ONNX Runtime backend (platform {platform}, backend {backend})"
        )
    default_file = config.get("default_model_filename", [TRITON_MODEL_FILE_NAME])
    if default_file != [TRITON_MODEL_FILE_NAME]:
        raise fail(
            f"default_model_filename is {default_file}, the repository holds {TRITON_MODEL_FILE_NAME!r}"
        )
    max_batch = _single(config, "max_batch_size", int, "the model")
    if max_batch < 0:
        raise fail(f"max_batch_size is {max_batch}")
    batched = max_batch > 0
    if facts.dynamic_batch and not batched:
        raise fail("metadata.json declares a dynamic batch axis but max_batch_size is 0")
    if not facts.dynamic_batch and batched:
        raise fail(
            f"metadata.json declares a fixed batch size but max_batch_size is {max_batch} (Triton would add "
            "a batch dimension the model does not have)"
        )
    for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
        declared = config.get(kind, [])
        if not all(isinstance(entry, dict) for entry in declared):
            raise fail(f"its {kind} list holds something other than tensor messages")
        if len(declared) != len(tensors):
            shown = [entry.get("name", ["?"])[0] for entry in declared]
            raise fail(
                f"it declares {len(declared)} {kind}(s) {shown}, metadata.json {len(tensors)} "
                f"{[t.name for t in tensors]}"
            )
        for position, (entry, tensor) in enumerate(zip(declared, tensors, strict=True)):
            entry_name = _single(entry, "name", str, f"{kind} {position}")
            if entry_name != tensor.name:
                raise fail(f"{kind} {position} is named {entry_name!r}, metadata.json says {tensor.name!r}")
            label = f"{kind} {tensor.name!r}"
            data_type = _single(entry, "data_type", str, label)
            if data_type != TRITON_TYPES[tensor.dtype]:
                raise fail(
                    f"{label} has data_type {data_type}, metadata.json's {tensor.dtype} is "
                    f"{TRITON_TYPES[tensor.dtype]}"
                )
            if batched and (not tensor.shape or isinstance(tensor.shape[0], int)):
                raise fail(
                    f"{label} has shape {_shape_text(tensor.shape)} in metadata.json, without a dynamic "
                    f"first dimension, but max_batch_size {max_batch} makes Triton add one"
                )
            dims = entry.get("dims", [])
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                raise fail(f"{label} has dims {dims}, not integers")
            expected = _triton_dims(tensor.shape, batched=batched)
            reshape = entry.get("reshape", [])
            convention = (
                f"max_batch_size {max_batch}: Triton adds the batch dimension"
                if batched
                else "max_batch_size 0"
            )
            if expected:
                if dims != expected:
                    raise fail(
                        f"{label} has dims {dims}; metadata.json's shape {_shape_text(tensor.shape)} gives "
                        f"{expected} ({convention})"
                    )
                if reshape:
                    raise fail(f"{label} is reshaped to {reshape}, which its shape does not call for")
            elif dims != [1] or reshape not in ([{"shape": []}], [{}]):
                raise fail(
                    f"{label} has no dimension left ({convention}): it needs dims [1] and an empty reshape, "
                    f"has dims {dims} and reshape {reshape}"
                )
