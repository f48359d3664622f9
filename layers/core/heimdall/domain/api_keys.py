"""API keys of platform endpoints: making, hashing, parsing, and checking them (DESIGN §7).

``hdk_{key_id}_{secret}``: ``key_id`` is 16 hex characters (no ``_``, so it parses without a
look-up), ``secret`` is :func:`secrets.token_urlsafe` (32 bytes). Only the sha256 of the whole key is
stored; a key this random needs no slow hash. :func:`key_matches` compares in constant time. A
revoked key is not found by :meth:`~heimdall.domain.deployments.DeploymentStore.get_api_key`, so it
stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from heimdall.domain.deployments import ApiKeyRecord, Deployment, DeploymentStore
from heimdall.errors import RecordNotFound, Unauthorized

__all__ = [
    "API_KEY_PREFIX",
    "authenticate_api_key",
    "authorize_request",
    "generate_api_key",
    "hash_api_key",
    "key_matches",
    "parse_key_id",
]

API_KEY_PREFIX = "hdk_"
_KEY_ID_BYTES = 8
_SECRET_BYTES = 32
_API_KEY = re.compile(r"^hdk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def generate_api_key() -> tuple[str, str]:
    """A new ``(key_id, key)``; the key is shown to its owner once and only its hash is stored."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    return key_id, f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"


def hash_api_key(key: str) -> str:
    """The sha256 (hex) of ``key``, as stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key_id(key: str) -> str | None:
    """The key id inside ``key``, or None if it is not shaped like one of our keys."""
    match = _API_KEY.match(key) if isinstance(key, str) else None
    return None if match is None else match.group(1)


def key_matches(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_api_key(key).encode("ascii"), stored_hash.encode("ascii"))


#: Compared against when a key id is unknown, so that a miss costs the same comparison as a hit.
_NO_HASH = "0" * 64


def _unauthorized() -> Unauthorized:
    return Unauthorized("a valid API key for this deployment is required", field="authorization")


def _checked_key(key: str | None, record: ApiKeyRecord | None, deployment_id: str) -> ApiKeyRecord:
    """``record`` if ``key`` hashes to it and it belongs to ``deployment_id``; the hash is compared in
    constant time whether or not a record was found."""
    matches = key_matches(key or "", record.key_hash if record is not None else _NO_HASH)
    if record is None or not matches or record.deployment_id != deployment_id:
        raise _unauthorized()
    return record


def authenticate_api_key(store: DeploymentStore, key: str | None, deployment_id: str) -> ApiKeyRecord:
    """The key record of ``key`` if it is a live key of ``deployment_id``; else :class:`Unauthorized`.

    Missing, malformed, unknown, revoked (rotated, deleted) keys and another deployment's key are all
    the same 401; the hash is compared in constant time whether or not the key id was found.
    """
    key_id = parse_key_id(key) if key else None
    record: ApiKeyRecord | None = None
    if key_id is not None:
        try:
            record = store.get_api_key(key_id)
        except RecordNotFound:
            record = None
    return _checked_key(key, record, deployment_id)


def authorize_request(
    store: DeploymentStore, key: str | None, deployment_id: str
) -> tuple[ApiKeyRecord, Deployment]:
    """:func:`authenticate_api_key` and the deployment, read together (one round trip in DynamoDB)."""
    key_id = parse_key_id(key) if key else None
    if key_id is None:
        _checked_key(key, None, deployment_id)  # the same comparison as any other refusal
    record, deployment = store.get_api_key_and_deployment(key_id or "", deployment_id)
    checked = _checked_key(key, record, deployment_id)
    if deployment is None:  # deleted between the key's revocation and now: no key opens it
        raise _unauthorized()
    return checked, deployment
