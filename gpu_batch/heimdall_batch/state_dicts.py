"""What a loaded checkpoint must hold: a state_dict of dense CPU tensors, and perhaps a manifest.

A dict of name -> tensor, or a dict holding one under ``state_dict``, ``model_state_dict`` or
``model`` (other top-level entries such as ``epoch`` or ``optimizer`` are ignored: they were loaded by
the weights-only unpickler, so they are plain data). The dict under ``heimdall`` is the embedded
manifest, which must be plain JSON data. Names must be printable and of bounded length, whatever the
format they came from (:mod:`heimdall_batch.checkpoint_safetensors` checks its header's names with
:func:`check_tensor_name` too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import torch

from heimdall.contracts.manifest import EMBEDDED_MANIFEST_KEY
from heimdall.errors import InvalidCheckpoint, InvalidManifest
from heimdall_batch.checkpoint_text import LISTED, clip, listing, quoted

#: Keys of a dict checkpoint that may hold the state_dict, besides the state_dict being the dict.
STATE_DICT_KEYS: Final = ("state_dict", "model_state_dict", "model")
MAX_TENSOR_NAME_CHARS: Final = 1024


def unwrap(obj: Any, max_tensors: int) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
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
            keys = [clip(repr(k), 40) for k in list(inner)[: LISTED + 1]]
            raise InvalidCheckpoint(
                "the checkpoint is a dict with no tensors and no state_dict, model_state_dict or model "
                f"entry (keys: {listing(keys)})"
            )
    embedded = _embedded_manifest(manifest_value) if has_manifest else None
    return checked_state_dict(inner, max_tensors), embedded


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


def checked_state_dict(inner: Mapping[Any, Any], max_tensors: int) -> dict[str, torch.Tensor]:
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
        check_tensor_name(key)
        if not isinstance(value, torch.Tensor):
            raise InvalidCheckpoint(
                f"the state_dict entry {quoted(key)} holds {_describe(value)}, not a tensor"
            )
        if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
            raise InvalidCheckpoint(
                f"the state_dict entry {quoted(key)} is not a dense CPU tensor ({value.layout}, "
                f"{value.device.type}{', quantized' if value.is_quantized else ''})"
            )
        out[key] = value.detach()  # a Parameter becomes a plain tensor
    return out


def check_tensor_name(name: Any) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_TENSOR_NAME_CHARS or not name.isprintable():
        shown = quoted(name) if isinstance(name, str) else type(name).__name__
        raise InvalidCheckpoint(
            f"tensor name {shown} is not acceptable: names must be 1 to {MAX_TENSOR_NAME_CHARS} "
            "printable characters"
        )


def _describe(value: Any) -> str:
    kind = type(value)
    article = "an" if kind.__name__[:1].lower() in "aeiou" else "a"
    return f"{article} {kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else (
        f"{article} {kind.__name__}"
    )


__all__ = ["MAX_TENSOR_NAME_CHARS", "STATE_DICT_KEYS", "check_tensor_name", "checked_state_dict", "unwrap"]
