"""Stage: load a checkpoint without running any of its code (DESIGN §4, BAD_INPUTS "Checkpoints").

The format is detected from the file's first bytes, never from its name:

- **safetensors** (8-byte little-endian header length, then a JSON header starting with ``{``):
  the header is validated here first (sizes, UTF-8, duplicate keys, dtypes, shapes, offsets that
  tile the data area exactly, counts, names), then the ``safetensors`` library loads it.
- **PyTorch zip** (``PK\\x03\\x04``, what ``torch.save`` writes by default): the archive is
  inspected with :mod:`zipfile` before torch sees it. Member names must be safe and unique, the
  declared sizes must fit the limit, TorchScript archives are refused, and only the members
  ``torch.save`` writes may be present (an extra pickle is refused even though ``torch.load``
  would never read it). The globals of ``data.pkl`` are listed statically and any that is not
  allow-listed is refused; then ``torch.load(weights_only=True)`` is the authority. There is no
  fallback to unsafe loading, under any error.
- Everything else (the legacy pickle or tar format of ``torch.save``, raw pickles, empty or
  unrecognised files) is refused.

The loaded object must be a state_dict: a dict of name -> tensor, or a dict holding one under
``state_dict``, ``model_state_dict`` or ``model`` (other top-level entries such as ``epoch`` or
``optimizer`` are ignored: they were loaded by the weights-only unpickler, so they are plain data).
Either form may carry the manifest under ``heimdall``; a safetensors file carries it as a JSON
string in ``__metadata__["heimdall"]``.

Every refusal is an :class:`~heimdall.errors.InvalidCheckpoint` (exit code 3), or its subclass
:class:`~heimdall.errors.UnsafeCheckpoint` when loading would need code or non-allow-listed
objects; an embedded manifest that is not a JSON object is an
:class:`~heimdall.errors.InvalidManifest`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

import torch

from heimdall.bundle.strict_json import parse_json
from heimdall.contracts.manifest import EMBEDDED_MANIFEST_KEY
from heimdall.errors import (
    BundleError,
    InvalidCheckpoint,
    InvalidManifest,
    UnsafeCheckpoint,
    UnsafeEnvironment,
)
from heimdall.export_package.archive import unsafe_member_name

CheckpointFormat = Literal["safetensors", "torch-zip"]

DEFAULT_MAX_BYTES: Final = 2 * 1024**3
DEFAULT_MAX_TENSORS: Final = 100_000

#: Keys of a dict checkpoint that may hold the state_dict, besides the state_dict being the dict.
STATE_DICT_KEYS: Final = ("state_dict", "model_state_dict", "model")

#: safetensors dtype names and their item sizes in bytes (the ``safetensors.torch`` set).
SAFETENSORS_DTYPES: Final[Mapping[str, int]] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "C64": 8,
    "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
}
#: The safetensors library's own cap on the header.
MAX_SAFETENSORS_HEADER_BYTES: Final = 100_000_000
MAX_TENSOR_NAME_CHARS: Final = 1024
MAX_TENSOR_RANK: Final = 16

ZIP_MAGIC: Final = b"PK\x03\x04"
EMPTY_ZIP_MAGIC: Final = b"PK\x05\x06"
#: ``torch.save(..., _use_new_zipfile_serialization=False)``: pickle protocol 2 of a LONG1 magic number.
LEGACY_TORCH_MAGIC: Final = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_TAR_MAGIC_OFFSET: Final = 257
_HEAD_BYTES: Final = 512

#: Members of a ``torch.save`` zip, after the archive's one top-level folder; nothing else is allowed.
_ZIP_TEXT_MEMBERS: Final[Mapping[str, re.Pattern[bytes]]] = {
    "version": re.compile(rb"[0-9]{1,20}\n?"),
    ".format_version": re.compile(rb"[0-9]{1,20}\n?"),
    ".storage_alignment": re.compile(rb"[0-9]{1,20}\n?"),
    ".data/version": re.compile(rb"[0-9]{1,20}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}\n?"),
    "byteorder": re.compile(rb"(little|big)\n?"),
}
_ZIP_PICKLE_MEMBER: Final = "data.pkl"
_ZIP_STORAGE_MEMBER: Final = re.compile(r"data/[0-9]{1,12}")
_ZIP_PREFIX: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
#: Allowance for the non-storage members when capping the member count at ``max_tensors``.
_ZIP_OTHER_MEMBERS: Final = 16
_TORCHSCRIPT_HINT: Final = (
    "a TorchScript archive (torch.jit.save), not a state_dict: save model.state_dict() with "
    "torch.save or as safetensors"
)
_RESAVE_HINT: Final = "re-save it with torch.save's default zip format or as safetensors"
_CHUNK: Final = 1024 * 1024
_LISTED: Final = 5


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint loaded safely: its tensors, format, embedded manifest (if any) and identity."""

    state_dict: dict[str, torch.Tensor]
    format: CheckpointFormat
    #: The dict under ``heimdall`` of a dict checkpoint, or safetensors ``__metadata__["heimdall"]``
    #: parsed; not yet validated (``heimdall.contracts.manifest.parse_manifest`` does that).
    embedded_manifest: dict[str, Any] | None
    size_bytes: int
    sha256: str


def refuse_unsafe_environment() -> None:
    """Raise :class:`~heimdall.errors.UnsafeEnvironment` if this process could load unsafely.

    - ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set to anything non-empty: it flips ``torch.load`` to
      unsafe loading wherever ``weights_only`` is not passed. This module always passes it, but a
      worker started with the variable is misconfigured and refuses to run at all.
      (``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` can only force safe loading on; ``0`` is its default,
      so it is not checked.)
    - The weights-only allow-list widened (``torch.serialization.add_safe_globals``) with anything
      outside torch: a plug-in imported into this process could otherwise let a checkpoint
      construct its classes.
    """
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        raise UnsafeEnvironment(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: it can turn torch.load into unsafe loading; "
            "unset it to run conversions"
        )
    foreign = sorted(
        name for name in map(_global_name, torch.serialization.get_safe_globals())
        if not name.startswith("torch.")
    )
    if foreign:
        raise UnsafeEnvironment(
            "the weights-only allow-list of torch.load was widened in this process with "
            f"{_listing(foreign)}; refusing to load checkpoints"
        )


def load_checkpoint(
    path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_tensors: int = DEFAULT_MAX_TENSORS
) -> LoadedCheckpoint:
    """Load the checkpoint at ``path`` safely, whatever its name says it is (see the module doc).

    ``max_bytes`` caps the file size and a zip's declared uncompressed size; ``max_tensors`` caps
    the number of tensors (and of a zip's storage members).
    """
    refuse_unsafe_environment()
    try:
        # stat before open: opening a FIFO or device for reading could block or never end.
        if not stat.S_ISREG(path.stat().st_mode):
            raise InvalidCheckpoint(f"the checkpoint {path.name} is not a regular file")
        handle = path.open("rb")
    except FileNotFoundError:
        raise InvalidCheckpoint(f"the checkpoint {path.name} does not exist") from None
    except OSError as exc:
        raise InvalidCheckpoint(f"the checkpoint {path.name} cannot be opened: {exc.strerror}") from None
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidCheckpoint(f"the checkpoint {path.name} is not a regular file")
        size = info.st_size
        if size > max_bytes:
            raise InvalidCheckpoint(
                f"the checkpoint is {_fmt_bytes(size)}, over the limit of {_fmt_bytes(max_bytes)}"
            )
        sha256 = _sha256(handle)
        handle.seek(0)
        head = handle.read(_HEAD_BYTES)
        kind = _detect_format(head, size)
        handle.seek(0)
        if kind == "safetensors":
            metadata = _check_safetensors_header(handle, size, max_tensors)
            raw = _load_safetensors(path)
            embedded = _manifest_from_metadata(metadata)
            state_dict = _checked_state_dict(raw, max_tensors)
        else:
            _check_torch_zip(handle, max_bytes, max_tensors)
            handle.seek(0)
            _check_pickle_globals(handle)
            handle.seek(0)
            obj = _torch_load(handle)
            state_dict, embedded = _unwrap(obj, max_tensors)
    return LoadedCheckpoint(
        state_dict=state_dict, format=kind, embedded_manifest=embedded, size_bytes=size, sha256=sha256
    )


# --- format detection -----------------------------------------------------------------------------


def _detect_format(head: bytes, size: int) -> CheckpointFormat:
    if size == 0:
        raise InvalidCheckpoint("the checkpoint file is empty")
    if head.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
        return "torch-zip"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(LEGACY_TORCH_MAGIC):
        raise InvalidCheckpoint(
            "the checkpoint is in the legacy (pre-1.6, non-zip) torch.save format, which can only be "
            f"read by unpickling it: {_RESAVE_HINT}"
        )
    if head[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        raise InvalidCheckpoint(
            f"the checkpoint is a tar archive (the legacy tar format of torch.save): {_RESAVE_HINT}"
        )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2 to 5
        raise InvalidCheckpoint(
            "the checkpoint is a raw pickle (the legacy format of pickle.dump or old torch.save), "
            f"which can only be read by unpickling it: {_RESAVE_HINT}"
        )
    raise InvalidCheckpoint(
        f"unrecognised checkpoint format (first bytes {head[:8].hex(' ')}): expected safetensors or a "
        "PyTorch zip checkpoint written by torch.save"
    )


# --- safetensors ----------------------------------------------------------------------------------


def _check_safetensors_header(handle: IO[bytes], size: int, max_tensors: int) -> dict[str, str]:
    """Validate the header as the format specifies it; return ``__metadata__`` (empty if absent)."""
    length = int.from_bytes(handle.read(8), "little")
    if length > MAX_SAFETENSORS_HEADER_BYTES:
        raise InvalidCheckpoint(
            f"safetensors header length {length} is over the format's limit of {MAX_SAFETENSORS_HEADER_BYTES}"
        )
    if length > size - 8:
        raise InvalidCheckpoint(
            f"safetensors header length {length} runs past the end of the file ({size} bytes)"
        )
    raw = handle.read(length)
    # A header carries at least one '"data_offsets"' per tensor: count before building objects.
    if raw.count(b'"data_offsets"') > max_tensors:
        raise InvalidCheckpoint(f"safetensors header declares more than {max_tensors} tensors")
    header = _parse_header_json(raw)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidCheckpoint("safetensors __metadata__ must map strings to strings")
    if len(header) > max_tensors:
        raise InvalidCheckpoint(
            f"safetensors header declares {len(header)} tensors, over the limit of {max_tensors}"
        )
    data_size = size - 8 - length
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        _check_tensor_name(name)
        spans.append(_tensor_span(name, entry, data_size))
    spans.sort()
    expected = 0
    previous = ""
    for begin, end, name in spans:
        if begin < expected:
            raise InvalidCheckpoint(f"safetensors tensors {_shown(previous)} and {_shown(name)} overlap")
        if begin > expected:
            raise InvalidCheckpoint(
                f"safetensors data has {begin - expected} bytes between tensors at offset {expected} "
                "that no tensor covers"
            )
        expected, previous = end, name
    if expected != data_size:
        raise InvalidCheckpoint(
            f"safetensors data area is {data_size} bytes but its tensors cover {expected}"
        )
    return metadata


def _parse_header_json(raw: bytes) -> dict[str, Any]:
    if not raw.startswith(b"{"):
        raise InvalidCheckpoint("safetensors header is not a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidCheckpoint(f"safetensors header is not valid UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise InvalidCheckpoint(f"safetensors header has a duplicate key {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidCheckpoint(f"safetensors header is not valid JSON: {exc.msg} (char {exc.pos})") from None
    except RecursionError:  # the C decoder refuses absurd nesting this way; nothing else is deep
        raise InvalidCheckpoint("safetensors header is not acceptable JSON: it nests too deeply") from None
    except ValueError as exc:  # NaN/Infinity, Python's cap on integer digits
        raise InvalidCheckpoint(f"safetensors header is not acceptable JSON: {_clip(str(exc))}") from None
    if not isinstance(header, dict):
        raise InvalidCheckpoint("safetensors header is not a JSON object")
    return header


def _tensor_span(name: str, entry: Any, data_size: int) -> tuple[int, int, str]:
    where = f"safetensors tensor {_shown(name)}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidCheckpoint(f"{where} must be an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise InvalidCheckpoint(
            f"{where} has unknown dtype {_shown(str(dtype))} (known: {', '.join(SAFETENSORS_DTYPES)})"
        )
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_RANK or not all(_is_count(d) for d in shape):
        raise InvalidCheckpoint(
            f"{where} has an invalid shape: expected at most {MAX_TENSOR_RANK} non-negative integers"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise InvalidCheckpoint(f"{where} has invalid data_offsets: expected [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise InvalidCheckpoint(
            f"{where} has data_offsets [{begin}, {end}] outside the data area of {data_size} bytes"
        )
    expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
    if end - begin != expected:
        raise InvalidCheckpoint(
            f"{where} spans {end - begin} bytes but shape {shape} of {dtype} needs {expected}"
        )
    return begin, end, name


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError  # noqa: PLC0415 - only this format needs it
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise InvalidCheckpoint(f"safetensors could not load the checkpoint: {_clip(str(exc))}") from None


def _manifest_from_metadata(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    text = metadata.get(EMBEDDED_MANIFEST_KEY)
    if text is None:
        return None
    try:
        doc = parse_json(text.encode("utf-8"))
    except BundleError as exc:
        raise InvalidManifest(
            f"the manifest in the safetensors metadata ({EMBEDDED_MANIFEST_KEY!r}) is not acceptable JSON: "
            f"{exc.message}"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidManifest(
            f"the manifest in the safetensors metadata ({EMBEDDED_MANIFEST_KEY!r}) must be a JSON object"
        )
    return doc


# --- PyTorch zip ----------------------------------------------------------------------------------


def _check_torch_zip(handle: IO[bytes], max_bytes: int, max_tensors: int) -> None:
    """Everything that can be checked with :mod:`zipfile` before torch opens the archive."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidCheckpoint(f"the checkpoint is not a readable zip archive: {_clip(str(exc))}") from None
    with archive:
        members = archive.infolist()
        if len(members) > max_tensors + _ZIP_OTHER_MEMBERS:
            raise InvalidCheckpoint(f"the zip archive has {len(members)} members, over the limit")
        seen: set[str] = set()
        for member in members:
            name = member.filename
            if unsafe_member_name(name):
                raise InvalidCheckpoint(f"the zip archive has an unsafe member name {_shown(name)}")
            if name in seen:
                raise InvalidCheckpoint(f"the zip archive has a duplicate member {_shown(name)}")
            seen.add(name)
            if member.flag_bits & 0x1:
                raise InvalidCheckpoint(f"the zip member {_shown(name)} is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InvalidCheckpoint(f"the zip member {_shown(name)} uses an unsupported compression")
        declared = sum(member.file_size for member in members)
        if declared > max_bytes:
            raise InvalidCheckpoint(
                f"the zip archive declares {_fmt_bytes(declared)} of content, over the limit of "
                f"{_fmt_bytes(max_bytes)}"
            )
        prefixes = {name.partition("/")[0] for name in seen}
        rests = {name.partition("/")[2] for name in seen}
        if "constants.pkl" in rests or any(rest.startswith("code/") for rest in rests):
            raise InvalidCheckpoint(f"the checkpoint is {_TORCHSCRIPT_HINT}")
        if len(prefixes) != 1 or not all("/" in name for name in seen):
            raise InvalidCheckpoint(
                "the zip archive is not laid out like a torch.save checkpoint (one top-level folder)"
            )
        prefix = prefixes.pop()
        if not _ZIP_PREFIX.fullmatch(prefix):
            raise InvalidCheckpoint(f"the zip archive's top-level folder {_shown(prefix)} is not acceptable")
        if _ZIP_PICKLE_MEMBER not in rests:
            raise InvalidCheckpoint(
                f"the zip archive has no {prefix}/{_ZIP_PICKLE_MEMBER}: not a torch.save checkpoint"
            )
        storages = 0
        for member in members:
            rest = member.filename.partition("/")[2]
            if rest == _ZIP_PICKLE_MEMBER:
                continue
            if _ZIP_STORAGE_MEMBER.fullmatch(rest):
                storages += 1  # raw tensor bytes: torch copies them into storages, never unpickles them
                continue
            pattern = _ZIP_TEXT_MEMBERS.get(rest)
            if pattern is None:
                _refuse_unexpected_member(archive, member)
            elif member.file_size > 128 or not pattern.fullmatch(archive.read(member)):
                raise InvalidCheckpoint(
                    f"the zip member {_shown(member.filename)} does not hold what torch.save writes there"
                )
        if storages > max_tensors:
            raise InvalidCheckpoint(
                f"the zip archive has {storages} tensor storages, over the limit of {max_tensors}"
            )


def _refuse_unexpected_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    with archive.open(member) as stream:
        start = stream.read(2)
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number.
    looks_pickled = len(start) == 2 and start[0] == 0x80 and 2 <= start[1] <= 5
    if looks_pickled or member.filename.endswith((".pkl", ".pickle")):
        raise UnsafeCheckpoint(
            f"the zip archive has an extra pickle {_shown(member.filename)} that torch.save does not "
            "write; pickles can run code when loaded, so the checkpoint is refused"
        )
    raise InvalidCheckpoint(
        f"the zip archive has a member torch.save does not write: {_shown(member.filename)}"
    )


def _check_pickle_globals(handle: IO[bytes]) -> None:
    """Name the non-allow-listed globals of ``data.pkl`` without unpickling it.

    torch's static scan reads the opcodes only. When it cannot parse the pickle (an opcode the
    weights-only unpickler does not support either) it decides nothing: ``torch.load`` with
    ``weights_only=True`` is the authority and refuses the same pickle with its own reason.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(handle)
    except MemoryError:
        raise
    except Exception:  # read-only scan of untrusted bytes: a failure leaves the decision to torch.load
        return
    if unsafe:
        raise _unsafe_globals(sorted(unsafe))


def _unsafe_globals(names: list[str]) -> UnsafeCheckpoint:
    message = (
        f"the checkpoint's pickle references {len(names)} global{'' if len(names) == 1 else 's'} that "
        f"weights-only loading does not allow ({_listing([_clip(n, 120) for n in names])}); "
        "a state_dict needs only tensors and containers"
    )
    if any(name.startswith("torch.nn.modules.") for name in names):
        message += "; it looks like a pickled whole model: save model.state_dict() instead"
    return UnsafeCheckpoint(message, globals=names[:20])


def _torch_load(handle: IO[bytes]) -> Any:
    # A file object, not the path: torch.load hands any path ending in ".safetensors" to the
    # safetensors library, and the format has already been decided by content.
    try:
        return torch.load(handle, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL (\S+)", str(exc))
        if found:
            raise _unsafe_globals(sorted(set(found))) from None
        raise UnsafeCheckpoint(
            f"weights-only loading refused the checkpoint's pickle: {_weights_only_reason(str(exc))}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # torch.load parses untrusted bytes; any failure means a bad file
        raise InvalidCheckpoint(
            f"torch.load could not read the checkpoint: {type(exc).__name__}: {_clip(str(exc))}"
        ) from None


def _weights_only_reason(message: str) -> str:
    """The torch message's own reason, without its advice to load unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", message)
    if "WeightsUnpickler error:" in text:
        text = text.rsplit("WeightsUnpickler error:", 1)[1]
    lines = [
        line.strip() for line in text.splitlines()
        if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
    ]
    return _clip(lines[0] if lines else "unsupported pickle content")


# --- the state_dict -------------------------------------------------------------------------------


def _unwrap(obj: Any, max_tensors: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Find the state_dict (and embedded manifest) in what ``torch.load`` returned."""
    if not isinstance(obj, dict):
        raise InvalidCheckpoint(
            f"the checkpoint holds {_describe(obj)}, not a state_dict (a dict of name -> tensor)"
        )
    manifest_value = obj.get(EMBEDDED_MANIFEST_KEY)
    has_manifest = EMBEDDED_MANIFEST_KEY in obj and not isinstance(manifest_value, torch.Tensor)
    containers = [key for key in STATE_DICT_KEYS if isinstance(obj.get(key), dict)]
    if len(containers) > 1:
        raise InvalidCheckpoint(
            f"the checkpoint has more than one candidate state_dict ({', '.join(containers)}); keep one"
        )
    if containers:
        inner: Mapping[Any, Any] = obj[containers[0]]
    else:
        inner = {k: v for k, v in obj.items() if not (has_manifest and k == EMBEDDED_MANIFEST_KEY)}
        if inner and not any(isinstance(v, torch.Tensor) for v in inner.values()):
            keys = [_clip(repr(k), 40) for k in list(inner)[: _LISTED + 1]]
            raise InvalidCheckpoint(
                "the checkpoint is a dict with no tensors and no state_dict, model_state_dict or model "
                f"entry (keys: {_listing(keys)})"
            )
    embedded = _embedded_manifest(manifest_value) if has_manifest else None
    return _checked_state_dict(inner, max_tensors), embedded


def _embedded_manifest(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidManifest(
            f"the checkpoint's {EMBEDDED_MANIFEST_KEY!r} entry must be a dict (the manifest), "
            f"got {_describe(value)}"
        )
    _check_json_like(value, f"{EMBEDDED_MANIFEST_KEY}", depth=0)
    return value


def _check_json_like(value: Any, where: str, depth: int) -> None:
    """The embedded manifest must be plain JSON data: it is validated, stored and re-serialised."""
    if depth > 32:
        raise InvalidManifest(f"the embedded manifest nests too deeply at {where}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidManifest(f"the embedded manifest has a non-string key at {where}")
            _check_json_like(item, f"{where}.{key[:64]}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_like(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidManifest(f"the embedded manifest has a non-finite number at {where}")
    elif not (value is None or isinstance(value, str | int | bool)):
        raise InvalidManifest(f"the embedded manifest holds {_describe(value)} at {where}, not JSON data")


def _checked_state_dict(inner: Mapping[Any, Any], max_tensors: int) -> dict[str, torch.Tensor]:
    if not inner:
        raise InvalidCheckpoint("the checkpoint's state_dict is empty")
    if len(inner) > max_tensors:
        raise InvalidCheckpoint(f"the state_dict has {len(inner)} entries, over the limit of {max_tensors}")
    out: dict[str, torch.Tensor] = {}
    for key, value in inner.items():
        if not isinstance(key, str):
            raise InvalidCheckpoint(
                f"the state_dict has a key of type {type(key).__name__}; keys must be strings"
            )
        _check_tensor_name(key)
        if not isinstance(value, torch.Tensor):
            raise InvalidCheckpoint(
                f"the state_dict entry {_shown(key)} holds {_describe(value)}, not a tensor"
            )
        if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
            raise InvalidCheckpoint(
                f"the state_dict entry {_shown(key)} is not a dense CPU tensor ({value.layout}, "
                f"{value.device.type}{', quantized' if value.is_quantized else ''})"
            )
        out[key] = value.detach()  # a Parameter becomes a plain tensor
    return out


def _check_tensor_name(name: Any) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_TENSOR_NAME_CHARS or not name.isprintable():
        shown = _shown(name) if isinstance(name, str) else type(name).__name__
        raise InvalidCheckpoint(
            f"tensor name {shown} is not acceptable: names must be 1 to {MAX_TENSOR_NAME_CHARS} "
            "printable characters"
        )


# --- helpers --------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(_shown(key))
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _global_name(entry: Any) -> str:
    # get_safe_globals() holds callables, or (callable, "module.name") pairs.
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str):
        return entry[1]
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"


def _describe(value: Any) -> str:
    kind = type(value)
    article = "an" if kind.__name__[:1].lower() in "aeiou" else "a"
    return f"{article} {kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else (
        f"{article} {kind.__name__}"
    )


def _shown(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_TENSORS",
    "SAFETENSORS_DTYPES",
    "STATE_DICT_KEYS",
    "CheckpointFormat",
    "LoadedCheckpoint",
    "load_checkpoint",
    "refuse_unsafe_environment",
]
