"""Command-line options shared by several commands (declared once, so their flags and help agree).

The component selection is what ``heimdall bundle pack`` and ``heimdall export`` offer. The API
options are what every command that drives the HTTP API takes, with the same defaults everywhere:

* ``--api``: ``HEIMDALL_API_URL``, else the local stack (``http://127.0.0.1:3000``);
* ``--token``: ``HEIMDALL_API_TOKEN``, else ``.heimdall-local/api-token`` in the current folder (what
  ``heimdall local up`` writes), else none (the API then answers 401);
* ``--json``, and for listings ``--limit``, ``--all`` and ``--cursor``; ``--output`` for a file.

Beside them, what those options mean: :func:`connect` opens the client for ``--api`` and ``--token``,
:func:`collect_pages` follows ``--all`` and ``--cursor``, :func:`check_folder` and
:func:`split_choices` refuse a bad ``--output`` or comma-separated list as usage errors (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from heimdall.cli.api_client import ApiClient
from heimdall.cli.api_common import Json, follow_pages
from heimdall.cli.api_session import API_TOKEN_VARIABLE, API_URL_VARIABLE, LOCAL_TOKEN_FILE, resolve_token
from heimdall.domain.paging import MAX_PAGE_SIZE
from heimdall.errors import ConfigurationError

# Component selection, as `heimdall bundle pack` and `heimdall export` offer it.
NoConfig = Annotated[bool, typer.Option("--no-config", help="Leave out training_config.")]
NoMetrics = Annotated[bool, typer.Option("--no-metrics", help="Leave out performance_metrics.")]
NoNormalization = Annotated[bool, typer.Option("--no-normalization", help="Leave out normalization_stats.")]
NoSamples = Annotated[bool, typer.Option("--no-samples", help="Leave out sample_predictions.")]
NumSamples = Annotated[
    int | None,
    typer.Option("-n", "--num-samples", min=1, max=10, help="Keep at most N sample predictions (1-10)."),
]
Description = Annotated[
    str | None, typer.Option("-d", "--description", help="Set bundle_metadata.description.")
]

# --- options every API command takes ---------------------------------------------------------------

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api",
        envvar=API_URL_VARIABLE,
        metavar="URL",
        help="Base URL of the Heimdall API (default: the local stack).",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=API_TOKEN_VARIABLE,
        help=f"Bearer token (default: {LOCAL_TOKEN_FILE} in this folder, written by `heimdall local up`).",
        show_default=False,
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout (and nothing else).")
]
Limit = Annotated[
    int, typer.Option("--limit", min=1, max=MAX_PAGE_SIZE, help=f"Items per page (1-{MAX_PAGE_SIZE}).")
]
AllPages = Annotated[bool, typer.Option("--all", help="Follow the cursors and show every item.")]
Cursor = Annotated[str | None, typer.Option("--cursor", help="Start at this cursor (a page's next_cursor).")]
Output = Annotated[
    Path, typer.Option("--output", "-o", dir_okay=False, metavar="FILE", help="The file to write.")
]


@contextmanager
def connect(api: str, token: str | None) -> Iterator[ApiClient]:
    """The client for ``--api`` with the resolved token; a malformed URL is a usage error (exit 2)."""
    try:
        client = ApiClient(api, resolve_token(token))
    except ConfigurationError as exc:
        raise typer.BadParameter(exc.message, param_hint="--api") from None
    with client:
        yield client


def collect_pages(
    fetch: Callable[[str | None], Json], cursor: str | None, all_pages: bool
) -> tuple[list[Json], Any]:
    """The items of one page, or of every page from ``cursor`` on; and the cursor still to follow."""
    items: list[Json] = []
    page: Json = {}
    for page in follow_pages(fetch, cursor):
        items.extend(page.get("items") or [])
        if not all_pages:
            break
    return items, page.get("next_cursor")


def split_choices(value: str | None, allowed: list[str], option: str) -> list[str] | None:
    """A comma-separated option as a list of known names (``None`` when the option was not given)."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        known = ",".join(allowed)
        raise typer.BadParameter(f"unknown: {', '.join(unknown)}; choose from {known}", param_hint=option)
    return names


def check_folder(output: Path) -> None:
    """Refuse an ``--output`` whose folder does not exist, before anything is sent."""
    if not output.parent.is_dir():
        raise typer.BadParameter(f"the folder {output.parent} does not exist", param_hint="--output")
