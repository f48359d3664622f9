"""The strict JSON rules of bundle metadata, and of every small JSON document read with them.

The standard library's parser accepts what a bundle must not hold: duplicate keys (the last one
silently wins), ``NaN``/``Infinity``, numbers no other reader can represent, nesting deep enough to
exhaust a recursive reader. :func:`parse_strict` refuses all of these with
:class:`~heimdall.errors.InvalidJson`, at about the cost of the C parser itself; :func:`parse_json`
adds the ``max_metadata_bytes`` cap for documents read on their own (a metadata file, a manifest, a
request body).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from heimdall.bundle.source import fmt_bytes
from heimdall.errors import InvalidJson, TooLarge
from heimdall.settings import BundleLimits, get_settings

_MAX_NUMBER_DIGITS = 64
#: Text that may hold a number the strict parse must refuse (a long digit run, a 3-digit exponent).
_SUSPECT_NUMBER = re.compile(rb"[0-9]{%d}|[eE][+-]?[0-9]{3}" % (_MAX_NUMBER_DIGITS + 1))
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_MAX_INT_BITS = math.ceil(_MAX_NUMBER_DIGITS * math.log2(10))


class _Reject(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"duplicate key {key!r}")
        out[key] = value
    return out


def _too_deep(bare: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``bare`` (strings cut out) nests arrays/objects deeper than ``max_depth``.

    Innermost ``[]``/``{}`` pairs are peeled off one level per round, with C-speed bytes operations:
    cheap even for metadata of millions of tokens.
    """
    brackets = bare.translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        peeled = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if not peeled or peeled == brackets:
            return False
        brackets = peeled
    return bool(brackets)


def _check_numbers(doc: Any) -> None:
    """Refuse non-finite floats (``1e999``) and integers past 64 digits anywhere in ``doc``.

    Done as a walk after parsing rather than with ``parse_int``/``parse_float`` hooks, which the C
    parser would call once per number; and only when the text has a digit run or exponent that
    could be such a number (see :func:`parse_strict`).
    """
    stack = [doc]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                raise InvalidJson("the document is not acceptable JSON: a number is out of range")
        elif kind is int:
            if value.bit_length() > _MAX_INT_BITS:
                raise InvalidJson(
                    f"the document is not acceptable JSON: a number has more than {_MAX_NUMBER_DIGITS} digits"
                )
        elif kind is list:
            stack.extend(value)
        elif kind is dict:
            stack.extend(value.values())


def _parse_constant(name: str) -> Any:
    raise _Reject(f"{name} is not valid JSON")


def parse_json(data: bytes, limits: BundleLimits | None = None) -> Any:
    """Parse a small JSON document (a metadata file, a request body) by the bundle's strict rules.

    Invalid UTF-8, duplicate keys, NaN/Infinity, out-of-range numbers and nesting past
    ``max_json_depth`` are refused with :class:`~heimdall.errors.InvalidJson`; a document over
    ``max_metadata_bytes`` with :class:`~heimdall.errors.TooLarge`.
    """
    limits = limits or get_settings().bundle_limits()
    if len(data) > limits.max_metadata_bytes:
        raise TooLarge(f"the document is larger than the limit of {fmt_bytes(limits.max_metadata_bytes)}")
    return parse_strict(data, limits.max_json_depth)


def parse_strict(data: bytes, max_depth: int) -> Any:
    """Parse ``data`` by the strict rules (see the module docstring), nesting at most ``max_depth``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"the document is not valid UTF-8 (byte {exc.start} of the metadata)") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise InvalidJson("the document is empty")
    bare = _JSON_STRING.sub(b'""', data)  # what is left outside strings
    if _too_deep(bare, max_depth):
        raise InvalidJson(f"the document nests deeper than {max_depth} levels")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_parse_constant,
        )
    except _Reject as exc:
        raise InvalidJson(f"the document is not acceptable JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"the document is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise InvalidJson(f"the document nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        # Includes Python's own cap on integer digits (ValueError from int parsing).
        raise InvalidJson(f"the document is not valid JSON: {exc}") from None
    if _SUSPECT_NUMBER.search(bare):
        _check_numbers(doc)
    return doc


__all__ = ["parse_json", "parse_strict"]
