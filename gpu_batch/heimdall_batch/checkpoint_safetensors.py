"""safetensors checkpoints: the header validated as the format specifies it, then the library loads.

A safetensors file is an 8-byte little-endian header length, a JSON header, then the data area. The
header is checked here before the ``safetensors`` library sees the file: its size, UTF-8, strict JSON
(no duplicate keys, no ``NaN``), known dtypes, shapes, offsets that tile the data area exactly, the
tensor count and the names. The embedded manifest is a JSON string in ``__metadata__["heimdall"]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

import torch

from heimdall.bundle.strict_json import parse_json
from heimdall.contracts.manifest import EMBEDDED_MANIFEST_KEY
from heimdall.errors import BundleError, InvalidCheckpoint, InvalidManifest
from heimdall_batch.checkpoint_text import clip, quoted
from heimdall_batch.state_dicts import check_tensor_name

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
MAX_TENSOR_RANK: Final = 16


def check_safetensors_header(handle: IO[bytes], size: int, max_tensors: int) -> dict[str, str]:
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
        check_tensor_name(name)
        spans.append(_tensor_span(name, entry, data_size))
    spans.sort()
    expected = 0
    previous = ""
    for begin, end, name in spans:
        if begin < expected:
            raise InvalidCheckpoint(f"safetensors tensors {quoted(previous)} and {quoted(name)} overlap")
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
        raise InvalidCheckpoint(f"safetensors header is not acceptable JSON: {clip(str(exc))}") from None
    if not isinstance(header, dict):
        raise InvalidCheckpoint("safetensors header is not a JSON object")
    return header


def _tensor_span(name: str, entry: Any, data_size: int) -> tuple[int, int, str]:
    where = f"safetensors tensor {quoted(name)}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise InvalidCheckpoint(f"{where} must be an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise InvalidCheckpoint(
            f"{where} has unknown dtype {quoted(str(dtype))} (known: {', '.join(SAFETENSORS_DTYPES)})"
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


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError  # noqa: PLC0415 - only this format needs it
    from safetensors.torch import load_file  # noqa: PLC0415

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise InvalidCheckpoint(f"safetensors could not load the checkpoint: {clip(str(exc))}") from None


def manifest_from_metadata(metadata: Mapping[str, str]) -> dict[str, Any] | None:
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


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(quoted(key))
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


__all__ = [
    "MAX_SAFETENSORS_HEADER_BYTES",
    "MAX_TENSOR_RANK",
    "SAFETENSORS_DTYPES",
    "check_safetensors_header",
    "load_safetensors",
    "manifest_from_metadata",
]
