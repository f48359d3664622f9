"""How checkpoint refusals show what they name.

Tensor names, zip members, pickle globals and library messages all come from the checkpoint, so a
refusal quotes them cut short: a hostile file cannot make an error message arbitrarily long.
"""

from __future__ import annotations

from typing import Final

#: How many items a listing in a message shows before "... N more".
LISTED: Final = 5


def quoted(text: str) -> str:
    """``text`` quoted for a message, cut to 80 characters."""
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def listing(items: list[str]) -> str:
    """The first :data:`LISTED` of ``items``, comma-separated, and how many more there are."""
    shown = ", ".join(items[:LISTED])
    return shown + (f", ... {len(items) - LISTED} more" if len(items) > LISTED else "")


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["LISTED", "clip", "listing", "quoted"]
