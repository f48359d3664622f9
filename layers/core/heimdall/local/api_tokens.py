"""The local stack's bearer tokens: who each token stands for, and the default token's file.

In AWS a JWT authorizer checks the caller's token and passes its claims on to the API handler; locally
the gateway (:mod:`heimdall.local.gateway`) looks a bearer token up in the table built here and turns
its :class:`ApiIdentity` into the same claims.

Standard library only, like the rest of the gateway.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SUB = "local-user"
DEFAULT_SCOPES = ("heimdall/read", "heimdall/write")
TOKEN_FILE_NAME = "api-token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class ApiIdentity:
    """Who a bearer token stands for: the JWT's ``sub`` and the scopes it grants."""

    sub: str
    scopes: tuple[str, ...] = ()

    def claims(self) -> dict[str, str]:
        """The claims a JWT authorizer would pass on (``scope`` is space-separated, as in OAuth)."""
        return {"sub": self.sub, "scope": " ".join(self.scopes)}


@dataclass(frozen=True)
class ApiTokens:
    """The local stack's token table, its default token and the file that holds that token."""

    default: str
    file: Path
    table: dict[str, ApiIdentity]


def parse_identities(raw: Mapping[str, Any]) -> dict[str, ApiIdentity]:
    """``{"<token>": {"sub": "...", "scopes": [...]}}`` (or :class:`ApiIdentity` values) → token table.

    Raises :class:`ValueError` naming the entry that is malformed.
    """
    table: dict[str, ApiIdentity] = {}
    for token, entry in raw.items():
        if not isinstance(token, str) or not token.strip():
            raise ValueError("API tokens must be non-empty strings")
        if isinstance(entry, ApiIdentity):
            table[token] = entry
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"API token entry for {token[:4]}…: expected an object with 'sub' and 'scopes'")
        sub, scopes = entry.get("sub"), entry.get("scopes", [])
        if not isinstance(sub, str) or not sub:
            raise ValueError(f"API token entry for {token[:4]}…: 'sub' must be a non-empty string")
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError(f"API token entry for {token[:4]}…: 'scopes' must be a list of strings")
        table[token] = ApiIdentity(sub=sub, scopes=tuple(scopes))
    return table


def load_api_tokens(workdir: Path, extra: Mapping[str, Any] | None = None) -> ApiTokens:
    """The local token table.

    The default token is ``HEIMDALL_API_TOKEN`` when set, else freshly generated; either way it is
    written to ``{workdir}/api-token`` (mode 0600) for the command line to find, and it stands for
    ``local-user`` with read and write scopes. ``HEIMDALL_API_TOKENS`` (a JSON object) and ``extra``
    add tokens, later sources winning.
    """
    default = os.environ.get("HEIMDALL_API_TOKEN", "").strip() or secrets.token_urlsafe(32)
    table = {default: ApiIdentity(DEFAULT_SUB, DEFAULT_SCOPES)}
    if env_tokens := os.environ.get("HEIMDALL_API_TOKENS", "").strip():
        try:
            parsed = json.loads(env_tokens)
        except json.JSONDecodeError as exc:
            raise ValueError(f"HEIMDALL_API_TOKENS is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("HEIMDALL_API_TOKENS must be a JSON object of token → {sub, scopes}")
        table.update(parse_identities(parsed))
    table.update(parse_identities(extra or {}))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / TOKEN_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have been created with wider permissions
        out.write(default + "\n")
    return ApiTokens(default=default, file=path, table=table)
