"""``python -m heimdall.api``: write or check the committed OpenAPI document.

``--write-openapi PATH`` writes the document generated from the routes; ``--check PATH`` exits 1 with
a summary of the differences when the file at PATH is not what the routes generate.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

#: Lines of the diff shown when the committed document is stale.
MAX_DIFF_LINES = 60


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m heimdall.api", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-openapi", metavar="PATH", type=Path, help="write the OpenAPI document")
    action.add_argument("--check", metavar="PATH", type=Path, help="exit 1 if PATH is not up to date")
    args = parser.parse_args(argv)

    from heimdall.api.app import openapi_text  # noqa: PLC0415 - argparse errors need no resolver

    generated = openapi_text()
    if args.write_openapi is not None:
        args.write_openapi.parent.mkdir(parents=True, exist_ok=True)
        args.write_openapi.write_text(generated, encoding="utf-8")
        print(f"wrote {args.write_openapi}")
        return 0

    path: Path = args.check
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == generated:
        print(f"{path} is up to date")
        return 0
    diff = list(
        difflib.unified_diff(
            current.splitlines(), generated.splitlines(), str(path), "generated", lineterm="", n=1
        )
    )
    changed = sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))
    print(f"{path} is stale: {changed} line(s) differ from the generated document", file=sys.stderr)
    print("\n".join(diff[:MAX_DIFF_LINES]), file=sys.stderr)
    if len(diff) > MAX_DIFF_LINES:
        print(f"... {len(diff) - MAX_DIFF_LINES} more diff lines", file=sys.stderr)
    print(f"regenerate it: python -m heimdall.api --write-openapi {path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
