"""Records of the files a job writes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from heimdall.contracts.jobs import FormatOutcome, FormatStatus, OutputFile, ParityCheck
from heimdall.export_package.archive import file_chunks
from heimdall.types import ExportFormat


def file_record(path: Path) -> OutputFile:
    """sha256 and size of ``path``, read in chunks."""
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return OutputFile(sha256=digest.hexdigest(), size_bytes=path.stat().st_size)


def built_outcome(
    fmt: ExportFormat,
    path: Path,
    *,
    parity: list[ParityCheck],
    latency_ms: dict[str, float],
    details: dict[str, Any],
) -> FormatOutcome:
    """The outcome of a format that was built and passed its checks: its file, hash, size and figures."""
    record = file_record(path)
    return FormatOutcome(
        format=fmt,
        status=FormatStatus.BUILT,
        file=path.name,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        parity=parity,
        latency_ms=latency_ms,
        details=details,
    )
