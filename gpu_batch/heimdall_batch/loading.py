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

The loaded object must be a state_dict: a dict of name -> tensor, or a dict holding one or more
under the keys training loops and Lightning use (``state_dict``, ``model_state_dict``, ``model``,
``ema``, ``model_ema``, nested ``module``; :mod:`heimdall_batch.state_dicts`). Other top-level entries
such as ``epoch``, ``optimizer`` or Lightning's ``hyper_parameters`` are ignored: they were loaded by
the weights-only unpickler, so they are plain data (an ``argparse.Namespace`` is the one non-torch
object allowed). Which candidate the model takes, and which name prefix is removed, is decided
against the architecture's keys (:mod:`heimdall_batch.weights`). Either form may carry the manifest
under ``heimdall``; a safetensors file carries it as a JSON string in ``__metadata__["heimdall"]``.
Each format's checks are in its own module (:mod:`heimdall_batch.checkpoint_safetensors`,
:mod:`heimdall_batch.checkpoint_zip`), what the loaded object must hold in
:mod:`heimdall_batch.state_dicts`.

Every refusal is an :class:`~heimdall.errors.InvalidCheckpoint` (exit code 3), or its subclass
:class:`~heimdall.errors.UnsafeCheckpoint` when loading would need code or non-allow-listed
objects; an embedded manifest that is not a JSON object is an
:class:`~heimdall.errors.InvalidManifest`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal

import torch

from heimdall.errors import InvalidCheckpoint, UnsafeEnvironment
from heimdall.export_package.archive import fmt_bytes
from heimdall_batch.checkpoint_safetensors import (
    check_safetensors_header,
    load_safetensors,
    manifest_from_metadata,
)
from heimdall_batch.checkpoint_text import listing
from heimdall_batch.checkpoint_zip import check_pickle_globals, check_torch_zip, torch_load
from heimdall_batch.state_dicts import checked_state_dict, unwrap

CheckpointFormat = Literal["safetensors", "torch-zip"]

DEFAULT_MAX_BYTES: Final = 2 * 1024**3
DEFAULT_MAX_TENSORS: Final = 100_000

ZIP_MAGIC: Final = b"PK\x03\x04"
EMPTY_ZIP_MAGIC: Final = b"PK\x05\x06"
#: ``torch.save(..., _use_new_zipfile_serialization=False)``: pickle protocol 2 of a LONG1 magic number.
LEGACY_TORCH_MAGIC: Final = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_TAR_MAGIC_OFFSET: Final = 257
_HEAD_BYTES: Final = 512

_RESAVE_HINT: Final = "re-save it with torch.save's default zip format or as safetensors"
_CHUNK: Final = 1024 * 1024


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint loaded safely: its candidate state_dicts, format, embedded manifest (if any) and
    identity."""

    #: Every state_dict found, by dotted key path (``""``: the file's top-level dict); see
    #: :func:`heimdall_batch.state_dicts.unwrap`.
    candidates: Mapping[str, dict[str, torch.Tensor]]
    #: What the file holds, as loaded (a manifest's ``state_dict_key`` may name any dict in it).
    content: Any
    format: CheckpointFormat
    #: The dict under ``heimdall`` of a dict checkpoint, or safetensors ``__metadata__["heimdall"]``
    #: parsed; not yet validated (``heimdall.contracts.manifest.parse_manifest`` does that).
    embedded_manifest: dict[str, Any] | None
    size_bytes: int
    sha256: str

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The one candidate state_dict; :class:`~heimdall.errors.InvalidCheckpoint` when there are
        several (choosing needs the architecture: :func:`heimdall_batch.weights.choose_weights`)."""
        if len(self.candidates) != 1:
            raise InvalidCheckpoint(
                f"the checkpoint has more than one candidate state_dict ({listing(list(self.candidates))})"
            )
        return next(iter(self.candidates.values()))


def refuse_unsafe_environment() -> None:
    """Raise :class:`~heimdall.errors.UnsafeEnvironment` if this process could load unsafely.

    - ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set to anything non-empty: it flips ``torch.load`` to
      unsafe loading wherever ``weights_only`` is not passed. ``checkpoint_zip`` always passes it, but a
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
            f"{listing(foreign)}; refusing to load checkpoints"
        )


def load_checkpoint(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    state_dict_key: str | None = None,
) -> LoadedCheckpoint:
    """Load the checkpoint at ``path`` safely, whatever its name says it is (see the module doc).

    ``max_bytes`` caps the file size and a zip's declared uncompressed size; ``max_tensors`` caps
    the number of tensors (and of a zip's storage members). ``state_dict_key`` (a sidecar manifest's)
    makes the dict at that key path of a dict checkpoint the only candidate.
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
                f"the checkpoint is {fmt_bytes(size)}, over the limit of {fmt_bytes(max_bytes)}"
            )
        sha256 = _sha256(handle)
        handle.seek(0)
        head = handle.read(_HEAD_BYTES)
        kind = _detect_format(head, size)
        handle.seek(0)
        if kind == "safetensors":
            metadata = check_safetensors_header(handle, size, max_tensors)
            raw = load_safetensors(path)
            embedded = manifest_from_metadata(metadata)
            content: Any = checked_state_dict(raw, max_tensors)
            candidates = {"": content}
        else:
            check_torch_zip(handle, max_bytes, max_tensors)
            handle.seek(0)
            check_pickle_globals(handle)
            handle.seek(0)
            content = torch_load(handle)
            candidates, embedded = unwrap(content, max_tensors, state_dict_key=state_dict_key)
    return LoadedCheckpoint(
        candidates=candidates,
        content=content,
        format=kind,
        embedded_manifest=embedded,
        size_bytes=size,
        sha256=sha256,
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


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_TENSORS",
    "CheckpointFormat",
    "LoadedCheckpoint",
    "load_checkpoint",
    "refuse_unsafe_environment",
]
