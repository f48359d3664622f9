"""What the API client's routes share: the JSON and progress types, answer checks, files, polling.

A JSON object an answer must carry, streaming a body to a file (with its sha256) that takes its
destination's name only once complete, polling a job or an import with a growing interval, and
following the pages of a listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from heimdall.cli.api_errors import ApiError, ConnectionLost, WaitTimedOut, loads_json
from heimdall.settings import MIB

#: A JSON object as the API sends it (a resource, a page, an answer).
Json = dict[str, Any]
#: Called as bytes move: ``(bytes so far, total bytes or None when unknown)``.
ProgressCallback = Callable[[int, int | None], None]
CHUNK_BYTES = MIB


def json_object(response: httpx.Response) -> Json:
    """The JSON object an answer carries (anything else is an ``INVALID_RESPONSE``)."""
    doc = loads_json(response.content)
    if not isinstance(doc, dict):
        request = response.request
        raise ApiError(
            "INVALID_RESPONSE",
            f"{request.method} {request.url.path} answered {response.status_code} without a JSON object",
            status=response.status_code,
        )
    return doc


def member(doc: Json, key: str) -> Json:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ApiError("INVALID_RESPONSE", f"the API's answer has no {key!r} object", status=None)
    return value


def save_stream(response: httpx.Response, part: Path, progress: ProgressCallback | None) -> tuple[int, str]:
    """Stream ``response``'s body into ``part``: (bytes written, their sha256)."""
    declared = response.headers.get("content-length")
    # With a content encoding the declared length is the encoded one: no total, no length check.
    encoded = "content-encoding" in response.headers
    total = int(declared) if declared and declared.isdigit() and not encoded else None
    hasher = hashlib.sha256()
    done = 0
    with part.open("xb") as sink:
        for chunk in response.iter_bytes(CHUNK_BYTES):
            sink.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done != total:
        raise ConnectionLost(f"the download stopped after {done} of {total} bytes")
    return done, hasher.hexdigest()


@contextlib.contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """A fresh file beside ``dest`` that replaces it when the block succeeds, and is removed otherwise."""
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        yield part
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def poll(
    fetch: Callable[[], Json],
    *,
    done: Callable[[Json], bool],
    timeout_s: float,
    schedule: tuple[float, float, float],
    what: str,
) -> Json:
    first, factor, most = schedule
    deadline = time.monotonic() + timeout_s
    interval = first
    while True:
        value = fetch()
        if done(value):
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimedOut(f"{what} is still {value.get('status')} after {timeout_s:g} s")
        time.sleep(min(interval, left))
        interval = min(interval * factor, most)


def follow_pages(fetch: Callable[[str | None], Json], cursor: str | None = None) -> Iterator[Json]:
    """Every page of a listing: ``fetch(cursor)`` for each, from ``cursor`` until no ``next_cursor``."""
    seen: set[str] = set()
    while True:
        page = fetch(cursor)
        yield page
        cursor = page.get("next_cursor")
        if not cursor:
            return
        if cursor in seen:  # a server bug would otherwise loop for ever
            raise ApiError("INVALID_RESPONSE", f"the API returned the cursor {cursor!r} twice", status=None)
        seen.add(cursor)
