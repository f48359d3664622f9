"""Zip conventions of the export package and the deployment packages built from it.

Writing: :func:`write_zip` makes deterministic archives (entries in sorted order, one fixed
timestamp, fixed Unix modes, model files stored and text deflated), so the same inputs give the same
bytes and a retried job or build overwrites its zip with an identical one. Reading: one rule for the
member names an archive may hold (:func:`unsafe_member_name`), used for the export package and for
uploaded PyTorch checkpoints alike. :func:`json_bytes` is how every generated JSON document is
written. Standard library only.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

#: The one timestamp every entry carries (the earliest a zip can record).
ZIP_TIMESTAMP: Final = (1980, 1, 1, 0, 0, 0)
FILE_MODE: Final = 0o100644  # a regular file, rw-r--r--
SCRIPT_MODE: Final = 0o100755  # a regular file, rwxr-xr-x
_UNIX: Final = 3  # ``create_system`` of an entry made on Unix, whatever platform writes it
#: Files are copied in chunks of this size, never held in memory whole.
COPY_CHUNK: Final = 1024 * 1024

_DRIVE: Final = re.compile(r"[A-Za-z]:")


def unsafe_member_name(name: str) -> bool:
    """Whether a zip member name is anything but a plain relative path.

    Refused: the empty name, absolute paths, drive letters, backslashes, empty, ``.`` and ``..``
    parts (a trailing ``/`` leaves an empty part, so directory entries are refused too), NUL and
    every other character that is not printable.
    """
    return (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or _DRIVE.match(name) is not None
        or any(part in ("", ".", "..") for part in name.split("/"))
        or not name.isprintable()
    )


def shown(name: str) -> str:
    """A member name as an error message shows it: clipped and with every odd character escaped."""
    return ascii(name[:120])


def fmt_bytes(n: int) -> str:
    """A size for people: bytes below 1 KiB, else KiB, MiB or GiB with one decimal."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    unit = "bytes"
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit the loop stops at is the one shown
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def json_bytes(document: Mapping[str, Any]) -> bytes:
    """A generated JSON document: two-space indent, UTF-8 as is, no NaN or infinity, final newline."""
    return (json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def file_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks of :data:`COPY_CHUNK`."""
    with path.open("rb") as stream:
        while chunk := stream.read(COPY_CHUNK):
            yield chunk


@dataclass(frozen=True)
class ZipEntry:
    """One member to write: generated ``data`` (deflated), or ``size`` bytes that ``chunks`` yields
    (stored: model weights barely compress, and storing keeps the bytes independent of zlib)."""

    data: bytes | None = None
    chunks: Callable[[], Iterable[bytes]] | None = None
    size: int = 0
    executable: bool = False

    @classmethod
    def of_file(cls, path: Path) -> ZipEntry:
        """A file on disk, copied in chunks."""
        return cls(chunks=lambda: file_chunks(path), size=path.stat().st_size)


def write_zip(target: Path, entries: Mapping[str, ZipEntry]) -> None:
    """Write ``entries`` in sorted order with fixed metadata; atomically replace ``target``.

    A failure (a ``chunks`` that raises, say) leaves no partial file behind.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name in sorted(entries):
                entry = entries[name]
                info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
                info.create_system = _UNIX
                info.external_attr = (SCRIPT_MODE if entry.executable else FILE_MODE) << 16
                if entry.chunks is not None:
                    info.compress_type = zipfile.ZIP_STORED
                    info.file_size = entry.size  # decides zip64 up front
                    with archive.open(info, "w") as out:
                        for chunk in entry.chunks():
                            out.write(chunk)
                else:
                    assert entry.data is not None  # an entry holds one or the other
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, entry.data)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

