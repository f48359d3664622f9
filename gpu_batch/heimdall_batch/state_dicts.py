"""What a loaded checkpoint must hold: state_dicts of dense CPU tensors, and perhaps a manifest.

A dict of name -> tensor, or a dict holding one or more under the keys training loops and Lightning
use (:data:`CONTAINER_KEYS`: ``state_dict``, ``model_state_dict``, ``model``, ``module``, ``ema``,
``model_ema``, ``state_dict_ema``), possibly nested (``{"model": {"module": ...}}``). Every such
state_dict is a *candidate*, named by its dotted key path (``""`` for the top-level dict); which one
the model takes is decided once the architecture's keys are known (:mod:`heimdall_batch.weights`).
Other top-level entries such as ``epoch``, ``optimizer`` or ``hyper_parameters`` are ignored: they
were loaded by the weights-only unpickler, so they are plain data. The dict under ``heimdall`` is the
embedded manifest, which must be plain JSON data. Names must be printable and of bounded length,
whatever the format they came from (:mod:`heimdall_batch.checkpoint_safetensors` checks its header's
names with :func:`check_tensor_name` too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import torch

from heimdall.contracts.manifest import EMBEDDED_MANIFEST_KEY
from heimdall.errors import InvalidCheckpoint, InvalidManifest
from heimdall_batch.checkpoint_text import LISTED, clip, listing, quoted

#: Keys of a dict checkpoint that may hold a state_dict, besides the state_dict being the dict.
CONTAINER_KEYS: Final = (
    "state_dict", "model_state_dict", "model", "module", "ema", "model_ema", "state_dict_ema"
)
#: Containers whose weights are an exponential moving average of the trained ones.
EMA_KEYS: Final = frozenset({"ema", "model_ema", "state_dict_ema"})
MAX_TENSOR_NAME_CHARS: Final = 1024
#: How deep containers may nest (``{"model": {"module": ...}}`` is two).
_MAX_NESTING: Final = 3


def unwrap(
    obj: Any, max_tensors: int, *, state_dict_key: str | None = None
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any] | None]:
    """Find the candidate state_dicts (by key path) and the embedded manifest in what ``torch.load``
    returned. A container that is not a state_dict is passed over when another one is; when none is,
    the first one's refusal is raised. With ``state_dict_key`` (a manifest's), that is the only one."""
    if not isinstance(obj, dict):
        raise InvalidCheckpoint(
            f"the checkpoint holds {_describe(obj)}, not a state_dict (a dict of name -> tensor)"
        )
    manifest_value = obj.get(EMBEDDED_MANIFEST_KEY)
    has_manifest = EMBEDDED_MANIFEST_KEY in obj and not isinstance(manifest_value, torch.Tensor)
    embedded = _embedded_manifest(manifest_value) if has_manifest else None
    if state_dict_key is not None:
        return {state_dict_key: state_dict_at(obj, state_dict_key, max_tensors)}, embedded
    found = _containers(obj, "", 0)
    if not found:
        inner = {k: v for k, v in obj.items() if not (has_manifest and k == EMBEDDED_MANIFEST_KEY)}
        if inner and not any(isinstance(v, torch.Tensor) for v in inner.values()):
            keys = [clip(repr(k), 40) for k in list(inner)[: LISTED + 1]]
            raise InvalidCheckpoint(
                "the checkpoint is a dict with no tensors and no "
                f"{listing(list(CONTAINER_KEYS))} entry (keys: {listing(keys)})"
            )
        found = [("", inner)]
    candidates: dict[str, dict[str, torch.Tensor]] = {}
    first_error: InvalidCheckpoint | None = None
    for path, container in found:
        try:
            candidates[path] = checked_state_dict(container, max_tensors, where=path)
        except InvalidCheckpoint as exc:
            first_error = first_error or exc
    if not candidates:
        assert first_error is not None
        raise first_error
    return candidates, embedded


def _containers(obj: Mapping[Any, Any], path: str, depth: int) -> list[tuple[str, Mapping[Any, Any]]]:
    """The innermost container dicts under ``obj``, each with its dotted key path."""
    found: list[tuple[str, Mapping[Any, Any]]] = []
    for key in CONTAINER_KEYS:
        value = obj.get(key)
        if not isinstance(value, dict):
            continue
        where = f"{path}.{key}" if path else key
        nested = _containers(value, where, depth + 1) if depth + 1 < _MAX_NESTING else []
        found.extend(nested or [(where, value)])
    return found


def state_dict_at(obj: Any, key_path: str, max_tensors: int) -> dict[str, torch.Tensor]:
    """The state_dict at a dotted key path of a dict checkpoint (a manifest's ``state_dict_key``)."""
    value = obj
    for part in key_path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InvalidCheckpoint(
                f"the checkpoint has no entry {quoted(key_path)} (the manifest's state_dict_key)",
                field="state_dict_key",
            )
        value = value[part]
    if not isinstance(value, dict):
        raise InvalidCheckpoint(
            f"the checkpoint's entry {quoted(key_path)} (the manifest's state_dict_key) holds "
            f"{_describe(value)}, not a dict of name -> tensor",
            field="state_dict_key",
        )
    return checked_state_dict(value, max_tensors, where=key_path)


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


def checked_state_dict(
    inner: Mapping[Any, Any], max_tensors: int, *, where: str = ""
) -> dict[str, torch.Tensor]:
    """``inner`` as a state_dict of dense CPU tensors; ``where`` (a key path) names it in refusals."""
    if not inner:
        under = f" under {quoted(where)}" if where else ""
        raise InvalidCheckpoint(f"the checkpoint's state_dict{under} is empty")
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


__all__ = [
    "CONTAINER_KEYS",
    "EMA_KEYS",
    "MAX_TENSOR_NAME_CHARS",
    "check_tensor_name",
    "checked_state_dict",
    "state_dict_at",
    "unwrap",
]
