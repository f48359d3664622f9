"""How the API commands show what the API answers: rich tables on stdout, or with ``--json`` one JSON
document on stdout and nothing else there.

Progress bars and notes go to stderr (:data:`err_console`), so that ``--json`` output can be piped;
the tables go to :data:`out_console`. Used by every command that drives the HTTP API
(:mod:`heimdall.cli.models`, :mod:`~heimdall.cli.jobs`, :mod:`~heimdall.cli.uploads`,
:mod:`~heimdall.cli.deploy`, :mod:`~heimdall.cli.endpoint`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from heimdall.cli.api_common import Json, ProgressCallback

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
#: The colour of each job, import and upload status; any other status is cyan.
_STATUS_STYLE = {
    "SUCCEEDED": "green",
    "INDEXED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "CANCELLED": "yellow",
    "PAIRED": "green",
    "AWAITING": "yellow",
}


def show_listing(
    title: str,
    columns: tuple[str, ...],
    rows: list[tuple[str | Text, ...]],
    next_cursor: Any,
    *,
    as_json: bool,
    items: list[Json],
) -> None:
    """A listing as a table (and how to get more on stderr), or as ``{"items", "next_cursor"}``."""
    if as_json:
        print_json({"items": items, "next_cursor": next_cursor})
        return
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for index, column in enumerate(columns):
        # Ids (the first column, copied into the next command) and times stay on one line.
        table.add_column(column, overflow="fold", no_wrap=index == 0 or column == "Created")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    out_console.print(table)
    if next_cursor:
        err_console.print(f"more: rerun with --all, or with --cursor {next_cursor}", soft_wrap=True)


def details_table(title: str, rows: list[tuple[str, str | Text]]) -> Table:
    """One record as a two-column table: a bold field name, then its value (folded, never cut)."""
    table = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for label, value in rows:
        table.add_row(label, value if isinstance(value, Text) else Text(value))
    return table


def status_text(value: Any) -> Text:
    """A job, import or upload status in its colour."""
    return Text(str(value), style=_STATUS_STYLE.get(str(value), "cyan"))


def when_text(value: Any) -> Text:
    """An ISO-8601 time as ``YYYY-MM-DD HH:MM`` UTC (or as it came, when it does not parse)."""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return Text(str(value or "–"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return Text(moment.strftime("%Y-%m-%d %H:%M"))


def human_size(n: int) -> str:
    """A size in decimal units with the exact byte count: ``1.2 MB (1,234,567 bytes)``."""
    return f"{decimal(n)} ({n:,} bytes)"


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (what ``--json`` prints), flushed at once."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def transfer_progress(description: str) -> Iterator[ProgressCallback]:
    """A progress bar on stderr (when it is a terminal) and the callback that moves it."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
