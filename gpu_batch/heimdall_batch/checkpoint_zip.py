"""PyTorch zip checkpoints: inspected with :mod:`zipfile` before torch sees them, then loaded weights-only.

Member names must be safe and unique (the one top-level folder may be any plain path component:
torch names it after the file), no member may be a link, the declared sizes must fit the limit,
TorchScript archives are refused, and only the members ``torch.save`` writes may be present (an extra
pickle is refused even though ``torch.load`` would never read it). The globals of ``data.pkl`` are
listed statically and any that is not allow-listed is refused; then ``torch.load(weights_only=True)``
is the authority. There is no fallback to unsafe loading, under any error.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import IO, Any, Final

import torch

from heimdall.errors import InvalidCheckpoint, UnsafeCheckpoint
from heimdall.export_package.archive import fmt_bytes, unsafe_member_name
from heimdall_batch.checkpoint_text import clip, listing, quoted

#: Members of a ``torch.save`` zip, after the archive's one top-level folder; nothing else is allowed.
_ZIP_TEXT_MEMBERS: Final[Mapping[str, re.Pattern[bytes]]] = {
    "version": re.compile(rb"[0-9]{1,20}\n?"),
    ".format_version": re.compile(rb"[0-9]{1,20}\n?"),
    ".storage_alignment": re.compile(rb"[0-9]{1,20}\n?"),
    ".data/version": re.compile(rb"[0-9]{1,20}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9]{1,64}\n?"),
    "byteorder": re.compile(rb"(little|big)\n?"),
}
#: Non-torch globals a checkpoint may hold beyond what ``weights_only`` allows by itself: Lightning
#: stores ``save_hyperparameters()`` of an argparse parser as a ``Namespace`` under ``hyper_parameters``.
#: Unpickling one only sets attributes on a plain object (it has no ``__setstate__``), so it runs no code.
EXTRA_SAFE_GLOBALS: Final = (argparse.Namespace,)
_EXTRA_SAFE_NAMES: Final = frozenset(f"{g.__module__}.{g.__qualname__}" for g in EXTRA_SAFE_GLOBALS)
_ZIP_PICKLE_MEMBER: Final = "data.pkl"
_ZIP_STORAGE_MEMBER: Final = re.compile(r"data/[0-9]{1,12}")
#: torch names the top-level folder after the file (``epoch=1-step=4.ckpt`` -> ``epoch=1-step=4``,
#: ``model (1).pt`` -> ``model (1)``), so any plain path component is accepted: ``unsafe_member_name``
#: has already refused empty parts, ``.``, ``..``, backslashes, NUL and unprintable characters.
_ZIP_PREFIX_MAX_CHARS: Final = 255
#: The file-type bits of a member's Unix mode (the high 16 bits of ``external_attr``).
_S_IFMT: Final = 0o170000
_S_IFLNK: Final = 0o120000
#: Allowance for the non-storage members when capping the member count at ``max_tensors``.
_ZIP_OTHER_MEMBERS: Final = 16
_TORCHSCRIPT_HINT: Final = (
    "a TorchScript archive (torch.jit.save), not a state_dict: save model.state_dict() with "
    "torch.save or as safetensors"
)


def check_torch_zip(handle: IO[bytes], max_bytes: int, max_tensors: int) -> None:
    """Everything that can be checked with :mod:`zipfile` before torch opens the archive."""
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidCheckpoint(f"the checkpoint is not a readable zip archive: {clip(str(exc))}") from None
    with archive:
        members = archive.infolist()
        if len(members) > max_tensors + _ZIP_OTHER_MEMBERS:
            raise InvalidCheckpoint(f"the zip archive has {len(members)} members, over the limit")
        seen: set[str] = set()
        for member in members:
            name = member.filename
            if unsafe_member_name(name):
                raise InvalidCheckpoint(f"the zip archive has an unsafe member name {quoted(name)}")
            if name in seen:
                raise InvalidCheckpoint(f"the zip archive has a duplicate member {quoted(name)}")
            seen.add(name)
            if (member.external_attr >> 16) & _S_IFMT == _S_IFLNK:
                raise InvalidCheckpoint(f"the zip member {quoted(name)} is a symbolic link")
            if member.flag_bits & 0x1:
                raise InvalidCheckpoint(f"the zip member {quoted(name)} is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InvalidCheckpoint(f"the zip member {quoted(name)} uses an unsupported compression")
        declared = sum(member.file_size for member in members)
        if declared > max_bytes:
            raise InvalidCheckpoint(
                f"the zip archive declares {fmt_bytes(declared)} of content, over the limit of "
                f"{fmt_bytes(max_bytes)}"
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
        if len(prefix) > _ZIP_PREFIX_MAX_CHARS:
            raise InvalidCheckpoint(
                f"the zip archive's top-level folder {quoted(prefix)} is over {_ZIP_PREFIX_MAX_CHARS} "
                "characters"
            )
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
                    f"the zip member {quoted(member.filename)} does not hold what torch.save writes there"
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
            f"the zip archive has an extra pickle {quoted(member.filename)} that torch.save does not "
            "write; pickles can run code when loaded, so the checkpoint is refused"
        )
    raise InvalidCheckpoint(
        f"the zip archive has a member torch.save does not write: {quoted(member.filename)}"
    )


def check_pickle_globals(handle: IO[bytes]) -> None:
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
    unsafe = [name for name in unsafe if name not in _EXTRA_SAFE_NAMES]
    if unsafe:
        raise _unsafe_globals(sorted(unsafe))


def _unsafe_globals(names: list[str]) -> UnsafeCheckpoint:
    message = (
        f"the checkpoint's pickle references {len(names)} global{'' if len(names) == 1 else 's'} that "
        f"weights-only loading does not allow ({listing([clip(n, 120) for n in names])}); "
        "a state_dict needs only tensors and containers"
    )
    if any(name.startswith("torch.nn.modules.") for name in names):
        message += "; it looks like a pickled whole model: save model.state_dict() instead"
    return UnsafeCheckpoint(message, globals=names[:20])


def torch_load(handle: IO[bytes]) -> Any:
    # A file object, not the path: torch.load hands any path ending in ".safetensors" to the
    # safetensors library, and the format has already been decided by content.
    try:
        # The context widens the allow-list for this call only; refuse_unsafe_environment checks the
        # process-wide one before any load.
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
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
            f"torch.load could not read the checkpoint: {type(exc).__name__}: {clip(str(exc))}"
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
    return clip(lines[0] if lines else "unsupported pickle content")


__all__ = ["EXTRA_SAFE_GLOBALS", "check_pickle_globals", "check_torch_zip", "torch_load"]
