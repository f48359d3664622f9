"""Paging of listings: pages, opaque cursors, page sizes.

Listings are newest first (``created_at``, then id, descending; see
:func:`heimdall.domain.records.chronological_key`) and paginated with an opaque cursor: urlsafe base64
(unpadded) of a small JSON document ``{"v": 1, "p": {...}}`` naming the position after which the next page
starts. A cursor is checked before use: anything malformed, from another listing or from another owner
raises :class:`~heimdall.errors.InvalidCursor` (400), never a 500. A cursor holds only key values of the
caller's own listing, so it needs no signature: tampering can at worst move the start of the caller's own
page.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from heimdall.errors import InvalidCursor, InvalidPagination

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_CURSOR_CHARS",
    "MAX_PAGE_SIZE",
    "Page",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "paginate",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Longest cursor accepted; a real one is a few hundred characters.
MAX_CURSOR_CHARS = 4096

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``cursor`` is ``None`` on the last page."""

    items: list[T] = field(default_factory=list)
    cursor: str | None = None


_CURSOR_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")


def encode_cursor(position: Mapping[str, str]) -> str:
    """An opaque cursor holding ``position`` (string fields only)."""
    document = json.dumps({"v": 1, "p": dict(position)}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(document.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, *, fields: Collection[str]) -> dict[str, str]:
    """The position in ``cursor``, which must hold exactly ``fields``, all strings.

    Raises :class:`InvalidCursor` for anything else: bad base64, not JSON, wrong shape or version.
    """
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("the cursor is empty or too long", field="cursor")
    if _CURSOR_CHARS.match(cursor) is None:
        raise InvalidCursor("the cursor is not urlsafe base64", field="cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        document = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("the cursor is not one this registry issued", field="cursor") from None
    position = document.get("p") if isinstance(document, dict) and document.get("v") == 1 else None
    if (
        not isinstance(position, dict)
        or set(position) != set(fields)
        or not all(isinstance(value, str) and 0 < len(value) <= 2048 for value in position.values())
    ):
        raise InvalidCursor("the cursor is not one this registry issued", field="cursor")
    return position


def check_limit(limit: int) -> int:
    """``limit`` if it is a page size the registries serve, else :class:`InvalidPagination`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidPagination(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
    return limit


def paginate(
    items: Iterable[T], *, key: Callable[[T], str], scope: str, limit: int, cursor: str | None
) -> Page[T]:
    """Newest-first page of ``items`` after ``cursor`` (for stores that hold everything in memory)."""
    check_limit(limit)
    ordered = sorted(items, key=key, reverse=True)
    if cursor is not None:
        position = decode_cursor(cursor, fields=("scope", "after"))
        if position["scope"] != scope:
            raise InvalidCursor("the cursor belongs to another listing", field="cursor")
        ordered = [item for item in ordered if key(item) < position["after"]]
    if len(ordered) <= limit:
        return Page(items=ordered)
    page = ordered[:limit]
    return Page(items=page, cursor=encode_cursor({"scope": scope, "after": key(page[-1])}))
