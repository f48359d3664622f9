"""Parameters several routes share: record ids in paths, and pagination."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.domain.paging import DEFAULT_PAGE_SIZE, MAX_CURSOR_CHARS, MAX_PAGE_SIZE
from heimdall.logic.api import require_id

Limit = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"Page size (1 to {MAX_PAGE_SIZE}, {DEFAULT_PAGE_SIZE} by default).",
    ),
]
Cursor = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=MAX_CURSOR_CHARS,
        description="The next_cursor of the previous page (absent: the first page).",
    ),
]


def path_id(value: str, *, what: str, field: str) -> str:
    """A record id from the path, percent-decoded; anything not shaped like an id is simply not found.

    Path tricks (``..``, ``%2e%2e``, encoded slashes) never reach the registry, and are a 404 like any
    other id that names nothing (:func:`heimdall.logic.api.require_id`): a malformed id is not a
    validation error of the request.
    """
    return require_id(unquote(value, errors="replace"), what=what, field=field)
