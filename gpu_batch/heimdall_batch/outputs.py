"""Records of the files a job writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from heimdall.conversion import OutputFile


def file_record(path: Path) -> OutputFile:
    """sha256 and size of ``path``, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(chunk)
    return OutputFile(sha256=digest.hexdigest(), size_bytes=path.stat().st_size)
