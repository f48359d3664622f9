"""Reading an export package without trusting it.

:func:`open_export_package` checks the archive before any member is used (a readable zip; safe,
unique member names; no encryption; stored or deflated members; at most ``max_bytes`` of declared
content and :data:`MAX_ENTRIES` members), reads ``metadata.json`` with limits, validates it
(:class:`~heimdall.export_package.metadata.PackageMetadata`) and checks that every file it lists is
in the archive with the size it records. :class:`ExportPackage` then hands out members only checked
against the sha256 ``metadata.json`` records. Every refusal is
:class:`~heimdall.errors.PackageInconsistent` (422).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

from heimdall.errors import PackageInconsistent
from heimdall.export_package.archive import COPY_CHUNK, fmt_bytes, shown, unsafe_member_name
from heimdall.export_package.layout import METADATA_FILE_NAME
from heimdall.export_package.metadata import FileRecord, PackageMetadata, parse_metadata, validated

#: Declared uncompressed content an export package may hold, all members together.
MAX_PACKAGE_BYTES: Final = 2 * 1024**3
#: Members an export package may hold (the generator writes about a dozen).
MAX_ENTRIES: Final = 1000
#: ``metadata.json`` is read whole, so it has a cap of its own.
MAX_METADATA_BYTES: Final = 16 * 1024**2


class ExportPackage:
    """An open, checked export package: its members, its metadata, verified reads and copies."""

    def __init__(self, archive: zipfile.ZipFile, members: Mapping[str, zipfile.ZipInfo]) -> None:
        self._archive = archive
        self._members = members
        #: The document as it was written, unknown keys included (deployment packages carry it on).
        self.raw_metadata: dict[str, Any] = parse_metadata(
            self._read_small(METADATA_FILE_NAME, MAX_METADATA_BYTES)
        )
        self.metadata = validated(PackageMetadata, self.raw_metadata)
        for name, record in sorted(self.metadata.files.items()):
            member = members.get(name)
            if member is None:
                raise PackageInconsistent(
                    f"metadata.json lists {shown(name)}, which the export package does not hold", file=name
                )
            if member.file_size != record.size_bytes:
                raise PackageInconsistent(
                    f"{shown(name)} holds {member.file_size} bytes, metadata.json records "
                    f"{record.size_bytes}",
                    file=name,
                )

    def has(self, name: str) -> bool:
        return name in self._members

    def record(self, name: str) -> FileRecord:
        """The sha256 and size ``metadata.json`` records for ``name`` (which must be in the package)."""
        if name not in self._members:
            raise PackageInconsistent(f"the export package has no {shown(name)}", file=name)
        record = self.metadata.files.get(name)
        if record is None:
            raise PackageInconsistent(f"metadata.json records no sha256 for {shown(name)}", file=name)
        return record

    def read_verified(self, name: str, limit: int) -> bytes:
        """The whole of a small member, checked against its recorded sha256."""
        record = self.record(name)
        if record.size_bytes > limit:
            raise PackageInconsistent(
                f"{shown(name)} is {fmt_bytes(record.size_bytes)}, over the limit of {fmt_bytes(limit)}",
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
                        f"{shown(name)} holds more than the {record.size_bytes} bytes metadata.json records",
                        file=name,
                    )
                digest.update(chunk)
                yield chunk
        if size != record.size_bytes or digest.hexdigest() != record.sha256:
            raise PackageInconsistent(
                f"{shown(name)} does not match metadata.json: sha256 {digest.hexdigest()[:12]}… "
                f"({size} bytes), recorded {record.sha256[:12]}… ({record.size_bytes} bytes)",
                file=name,
            )

    def _read_small(self, name: str, limit: int) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise PackageInconsistent(f"the export package has no {name}", file=name)
        if member.file_size > limit:
            raise PackageInconsistent(
                f"{name} is {fmt_bytes(member.file_size)}, over the limit of {fmt_bytes(limit)}", file=name
            )
        with self._reading(name) as stream:
            data = self._chunk(stream, name, limit + 1)
        if len(data) > limit:  # pragma: no cover - zipfile stops at the declared size
            raise PackageInconsistent(f"{name} is over the limit of {fmt_bytes(limit)}", file=name)
        return data

    @contextmanager
    def _reading(self, name: str) -> Iterator[IO[bytes]]:
        try:
            with self._archive.open(self._members[name]) as stream:
                yield stream
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise PackageInconsistent(
                f"the export package's {shown(name)} cannot be read: {str(exc)[:200]}", file=name
            ) from None

    @staticmethod
    def _chunk(stream: IO[bytes], name: str, size: int = COPY_CHUNK) -> bytes:
        try:
            return stream.read(size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise PackageInconsistent(
                f"the export package's {shown(name)} is corrupt: {str(exc)[:200]}", file=name
            ) from None


@contextmanager
def open_export_package(path: Path, *, max_bytes: int) -> Iterator[ExportPackage]:
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
            if unsafe_member_name(name):
                raise PackageInconsistent(
                    f"the export package has an unsafe member name {shown(name)} (absolute, '..' or "
                    "not a plain relative path)"
                )
            if name in by_name:
                raise PackageInconsistent(f"the export package holds {shown(name)} twice")
            if member.flag_bits & 0x1:
                raise PackageInconsistent(f"the export package's {shown(name)} is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PackageInconsistent(
                    f"the export package's {shown(name)} uses an unsupported compression method "
                    f"({member.compress_type})"
                )
            if member.file_size > max_bytes:
                raise PackageInconsistent(
                    f"the export package's {shown(name)} declares {fmt_bytes(member.file_size)} "
                    f"uncompressed, over the limit of {fmt_bytes(max_bytes)}"
                )
            by_name[name] = member
        declared = sum(member.file_size for member in members)
        if declared > max_bytes:
            raise PackageInconsistent(
                f"the export package declares {fmt_bytes(declared)} of content, over the limit of "
                f"{fmt_bytes(max_bytes)}"
            )
        yield ExportPackage(archive, by_name)
