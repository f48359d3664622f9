"""A client for the Heimdall HTTP API (DESIGN §7): one method per route, typed errors, streamed files.

Used by the API commands (:mod:`heimdall.cli.models`, :mod:`~heimdall.cli.jobs`,
:mod:`~heimdall.cli.uploads`, :mod:`~heimdall.cli.deploy`, :mod:`~heimdall.cli.endpoint`) and by
``bench/api.py``. It knows the routes and JSON shapes of the API and nothing of how they are served,
so it works the same against ``heimdall local up`` and against API Gateway. Resources come back as
the API's JSON objects (``dict``), unchanged.

What it takes care of:

* **Errors.** Every answer that is not the expected status raises :class:`ApiError` carrying the
  server's ``code``, ``message``, ``field`` and HTTP status. Bodies that are not the API's
  ``{"error": {...}}`` (API Gateway's own ``{"message": "Unauthorized"}``, an HTML error page, S3's
  XML) get a code from the status. A refused connection raises :class:`ApiUnreachable`, a timeout
  :class:`ApiTimeout`. All are :class:`~heimdall.errors.HeimdallError`, so the command line prints
  them as ``error CODE: message`` and exits 1.
* **The token goes to the API only.** ``Authorization`` is added to requests for the API's own origin;
  presigned storage URLs (a 307 from export, a job download link, a presigned upload form) are
  requested without it. Redirects are followed by hand for that reason; httpx never follows them.
  The inference routes (``/v1/...``: :meth:`ApiClient.infer`, ``deployment_usage``,
  ``deployment_health``) take a deployment's API key instead, sent in place of the token.
* **Rate limits.** A 429 raises :class:`ApiError` whose message says when to retry (``Retry-After``).
* **Files are streamed** both ways, a chunk at a time, with an optional progress callback. A download
  is written beside its destination and renamed into place only once complete and checked, so a
  failed or tampered download never leaves a file that looks good.
* **Imports** go inline (one POST) up to :data:`INLINE_MAX_BYTES`, otherwise through a presigned
  upload followed by polling ``GET /api/v1/imports/{import_id}`` until the import is decided.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast
from urllib.parse import quote

import httpx

from heimdall import __version__
from heimdall.bundle.reader import ReadResult, read_bundle
from heimdall.bundle.source import GZIP_MAGIC
from heimdall.domain.job_states import TERMINAL
from heimdall.domain.records import IMPORT_TERMINAL, ImportStatus, JobStatus
from heimdall.errors import ChecksumMismatch, ConfigurationError, HeimdallError
from heimdall.settings import MIB

#: Where the API is when nothing says otherwise: the local stack (``heimdall local up``).
DEFAULT_API_URL = "http://127.0.0.1:3000"
API_URL_VARIABLE = "HEIMDALL_API_URL"
API_TOKEN_VARIABLE = "HEIMDALL_API_TOKEN"  # noqa: S105 - a variable name, not a secret
#: The token file ``heimdall local up`` writes, relative to the folder it runs in.
LOCAL_TOKEN_FILE = Path(".heimdall-local") / "api-token"
API_PREFIX = "/api/v1"
#: The routes a deployment's API key opens (inference, usage, health), beside the API's own.
INFERENCE_PREFIX = "/v1"
#: Where ``heimdall infer`` and ``deploy usage|health`` read a deployment's API key when not given.
API_KEY_VARIABLE = "HEIMDALL_API_KEY"
USER_AGENT = f"heimdall/{__version__}"
#: Bundles up to this size are imported with one POST; larger ones through a presigned upload
#: (the API's default ``HEIMDALL_API_MAX_INLINE_BYTES``; a server configured lower answers 413 and the
#: ``auto`` mode then switches to presigned).
INLINE_MAX_BYTES = 4 * MIB
CHUNK_BYTES = MIB
MAX_REDIRECTS = 5
#: Seconds between polls: the first, the factor it grows by, the most.
IMPORT_POLL = (0.5, 1.5, 5.0)
JOB_POLL = (2.0, 1.5, 15.0)

Json = dict[str, Any]
#: Called as bytes move: ``(bytes so far, total bytes or None when unknown)``.
ProgressCallback = Callable[[int, int | None], None]
ImportMode = Literal["auto", "inline", "presigned"]
DownloadFile = Literal["package", "bundle"]

# Codes for answers whose body is not the API's error object (API Gateway, proxies, storage).
_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
_S3_ERROR = re.compile(rb"<Code>([^<]{1,128})</Code>.*?<Message>([^<]{0,512})</Message>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_FILENAME = re.compile(r'filename="?([^";]+)"?')


# --- errors ----------------------------------------------------------------------------------------


class ApiError(HeimdallError):
    """The API, or the storage behind a presigned URL, refused a request (or a job/import it followed).

    ``code`` is the server's own code (``NOT_FOUND``, ``INVALID_BUNDLE``, ...), ``status`` the HTTP
    status (``None`` when the failure was reported in a resource, such as a rejected import).
    """

    code = "API_ERROR"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None,
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message, field=field)
        # One class serves every code the server may send (including ones added after this client):
        # the code is data here, not a subclass.
        self.code = code  # type: ignore[misc]
        self.status = status
        self.details = dict(details or {})
        self.retry_after = retry_after


class ApiUnreachable(HeimdallError):
    """No connection could be made (refused, unknown host, TLS failure)."""

    code = "API_UNREACHABLE"


class ApiTimeout(HeimdallError):
    """The server did not answer in time."""

    code = "API_TIMEOUT"


class ConnectionLost(HeimdallError):
    """The connection broke mid-answer, or the server spoke something that is not HTTP."""

    code = "API_CONNECTION_ERROR"


class WaitTimedOut(HeimdallError):
    """A job or an import was still undecided when the wait ran out."""

    code = "WAIT_TIMEOUT"


class JobFailed(HeimdallError):
    """An export job that was waited for ended FAILED."""

    code = "JOB_FAILED"


class JobCancelled(JobFailed):
    """An export job that was waited for ended CANCELLED."""

    code = "JOB_CANCELLED"


def error_from_response(
    response: httpx.Response, *, code: str | None = None, origin: str = "the API"
) -> ApiError:
    """The :class:`ApiError` an error answer stands for; its body must have been read.

    ``code`` overrides the code for bodies that do not carry one (storage answers); ``origin`` names
    who answered in messages that come from the status alone.
    """
    status = response.status_code
    retry_after = response.headers.get("retry-after")
    fallback = code or _STATUS_CODES.get(status, f"HTTP_{status}")
    body = response.content
    doc = _loads(body)
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        error = doc["error"]
        details = error.get("details")
        field = error.get("field")
        return ApiError(
            str(error.get("code") or fallback),
            str(error.get("message") or response.reason_phrase) + _retry_hint(status, retry_after),
            status=status,
            field=field if isinstance(field, str) else None,
            details=details if isinstance(details, dict) else None,
            retry_after=retry_after,
        )
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):  # API Gateway's own answers
        detail = doc["message"]
    elif s3 := _S3_ERROR.search(body[:8192]):
        detail = f"{s3.group(1).decode(errors='replace')}: {s3.group(2).decode(errors='replace')}"
    else:
        text = " ".join(_TAG.sub(" ", body[:4096].decode("utf-8", errors="replace")).split())
        detail = text[:200] or response.reason_phrase or "no body"
    message = f"{origin} answered HTTP {status}: {detail}{_retry_hint(status, retry_after)}"
    return ApiError(fallback, message, status=status, retry_after=retry_after)


def _retry_hint(status: int, retry_after: str | None) -> str:
    """What a 429 adds to its message: when to try again, from ``Retry-After`` (seconds or a date)."""
    if status != 429:
        return ""
    if not retry_after or not retry_after.strip():
        return " (retry later: the answer gave no Retry-After)"
    value = retry_after.strip()
    return f" (retry after {value} s)" if value.isdigit() else f" (retry after {value})"


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedBundle:
    """A bundle exported to a local file, read back and checked."""

    path: Path
    size_bytes: int
    #: The integrity pass over the written file (components, ONNX sha256, ...).
    read: ReadResult
    #: ``X-Heimdall-Onnx-Sha256`` as the API sent it (``None`` when it sent none); equal to
    #: ``read.onnx_sha256`` whenever present, or the export raised :class:`ChecksumMismatch`.
    declared_onnx_sha256: str | None
    #: Whether the bundle came from a presigned URL the API redirected to.
    redirected: bool
    #: The file name the API suggested (``Content-Disposition``).
    suggested_name: str | None


@dataclass(frozen=True)
class DownloadedFile:
    """A job output or a deployment's artifact downloaded to a local file."""

    path: Path
    size_bytes: int
    sha256: str
    #: The API's download answer ``{url, expires_at, file, key, size_bytes, sha256}``.
    link: Json


@dataclass(frozen=True)
class Inference:
    """An answer of ``POST /v1/infer/{deployment_id}`` and the key's rate-limit headers."""

    #: The JSON as the API sent it: ``{deployment_id, model_id, model_version, outputs, latency_ms,
    #: normalized}``.
    answer: Json
    #: ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining`` (``None`` when absent or not a number).
    rate_limit: int | None
    rate_remaining: int | None


@dataclass(frozen=True)
class ImportOutcome:
    """An import the API decided: ``record`` is the ImportOut, ``model`` the ModelOut indexed."""

    mode: Literal["inline", "presigned"]
    record: Json
    model: Json


# --- the client ------------------------------------------------------------------------------------


class ApiClient:
    """The Heimdall HTTP API over httpx. Use as a context manager (or call :meth:`close`).

    ``base_url`` may carry a path prefix (an API Gateway stage); ``token`` is sent as a bearer token
    to that origin only. ``transport`` replaces httpx's network transport (tests, benchmarks).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ConfigurationError(f"the API URL must be http(s)://host[:port][/prefix], got {base_url!r}")
        self.base_url = str(url).rstrip("/")
        self._origin = _origin(url)
        self._token = token or None
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # followed by hand, so that the token never leaves the API's origin
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models ------------------------------------------------------------------------------------

    def openapi(self) -> Json:
        """``GET /api/v1/openapi.json``: the API's OpenAPI document."""
        return self._json("GET", ("openapi.json",))

    def list_models(
        self, *, limit: int | None = None, cursor: str | None = None, name: str | None = None
    ) -> Json:
        """``GET /api/v1/models``: one page ``{"items": [ModelOut], "next_cursor"}``."""
        return self._json("GET", ("models",), params={"limit": limit, "cursor": cursor, "name": name})

    def get_model(self, model_id: str) -> Json:
        """``GET /api/v1/models/{model_id}``: one ModelOut."""
        return self._json("GET", ("models", model_id))

    def delete_model(self, model_id: str) -> None:
        """``DELETE /api/v1/models/{model_id}``: the record and its stored objects."""
        self._call("DELETE", ("models", model_id), ok=(200, 204))

    def export_model(
        self,
        model_id: str,
        dest: Path,
        *,
        include_config: bool = True,
        include_metrics: bool = True,
        include_normalization: bool = True,
        include_samples: bool = True,
        num_samples: int | None = None,
        description: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ExportedBundle:
        """``GET /api/v1/models/{model_id}/export`` into ``dest``, following a redirect to storage.

        The file is read back with the bundle reader before it takes ``dest``'s name: a bundle that
        does not read, or whose ONNX sha256 differs from the API's ``X-Heimdall-Onnx-Sha256``, raises
        and leaves ``dest`` as it was.
        """
        params = {
            # Only what differs from the API's defaults, so that the URL says what was asked for.
            "include_config": None if include_config else "false",
            "include_metrics": None if include_metrics else "false",
            "include_normalization": None if include_normalization else "false",
            "include_samples": None if include_samples else "false",
            "num_samples": num_samples,
            "description": description,
        }
        with self._fetch(self._url("models", model_id, "export"), params=params) as fetched:
            declared = fetched.first.headers.get("x-heimdall-onnx-sha256")
            suggested = _suggested_name(fetched.response)
            with _replacing(dest) as part:
                size, _ = _save(fetched.response, part, progress)
                read = read_bundle(part)
                if declared and declared.strip().lower() != read.onnx_sha256:
                    raise ChecksumMismatch(
                        f"the exported bundle's ONNX model hashes to {read.onnx_sha256} but the API declared "
                        f"{declared.strip()} (X-Heimdall-Onnx-Sha256); {dest} was not written",
                        field="onnx_sha256",
                    )
        return ExportedBundle(
            path=dest,
            size_bytes=size,
            read=read,
            declared_onnx_sha256=declared.strip().lower() if declared else None,
            redirected=fetched.redirected,
            suggested_name=suggested,
        )

    # --- imports -----------------------------------------------------------------------------------

    def import_bundle(
        self,
        path: Path,
        *,
        components: list[str] | None = None,
        mode: ImportMode = "auto",
        timeout_s: float = 600.0,
        progress: ProgressCallback | None = None,
        on_uploaded: Callable[[Json], None] | None = None,
    ) -> ImportOutcome:
        """Import the bundle at ``path``: inline up to :data:`INLINE_MAX_BYTES` (``auto``), else presigned.

        A presigned import is followed until INDEXED (the outcome) or REJECTED (an :class:`ApiError`
        with the bundle's error code), for at most ``timeout_s`` seconds (:class:`WaitTimedOut`).
        """
        size = path.stat().st_size
        if mode == "inline" or (mode == "auto" and size <= INLINE_MAX_BYTES):
            try:
                return self.import_inline(path, components=components)
            except ApiError as exc:
                if mode == "inline" or exc.code != "PAYLOAD_TOO_LARGE":
                    raise
                # The server's inline limit is below ours: the presigned route has no such limit.
        record, upload = self.start_presigned_import(size, filename=path.name, components=components)
        self.upload_presigned(upload, path, progress=progress)
        if on_uploaded is not None:
            on_uploaded(record)
        final = self.wait_for_import(str(record["import_id"]), timeout_s=timeout_s)
        return ImportOutcome(mode="presigned", record=final, model=self._imported_model(final, None))

    def import_inline(self, path: Path, *, components: list[str] | None = None) -> ImportOutcome:
        """``POST /api/v1/models/import`` with the bundle as the body (JSON, or gzip by its magic bytes)."""
        body = path.read_bytes()  # at most the inline limit: the API takes it in one piece anyway
        content_type = "application/gzip" if body.startswith(GZIP_MAGIC) else "application/json"
        answer = self._json(
            "POST",
            ("models", "import"),
            params={"components": _joined(components)},
            content=body,
            headers={"Content-Type": content_type},
            ok=(200, 201),
        )
        record = _member(answer, "import")
        return ImportOutcome(
            mode="inline", record=record, model=self._imported_model(record, answer.get("model"))
        )

    def start_presigned_import(
        self, size_bytes: int, *, filename: str | None = None, components: list[str] | None = None
    ) -> tuple[Json, Json]:
        """``POST /api/v1/models/import?mode=presigned``: the PENDING ImportOut and the upload form."""
        answer = self._json(
            "POST",
            ("models", "import"),
            params={"mode": "presigned", "components": _joined(components)},
            json_body={"size_bytes": size_bytes, **({"filename": filename[:255]} if filename else {})},
            ok=(200, 201, 202),
        )
        return _member(answer, "import"), _member(answer, "upload")

    def upload_presigned(self, upload: Json, path: Path, *, progress: ProgressCallback | None = None) -> None:
        """POST the presigned form (``fields`` then ``file``) to storage, streaming the file from disk."""
        size = path.stat().st_size
        fields = {str(k): str(v) for k, v in (upload.get("fields") or {}).items()}
        with path.open("rb") as raw, self._transport_errors(str(upload["url"]), api=False):
            body = cast(BinaryIO, _CountingFile(raw, size, progress))
            response = self._http.post(
                str(upload["url"]), data=fields, files={"file": (path.name, body, "application/octet-stream")}
            )
        if not response.is_success:
            raise error_from_response(response, code="UPLOAD_FAILED", origin="the storage")

    def _imported_model(self, record: Json, model: Any) -> Json:
        """The ModelOut of an indexed import: the one the API sent along, else fetched by its id."""
        if isinstance(model, dict):
            return model
        if not record.get("model_id"):
            raise ApiError(
                "INVALID_RESPONSE", f"import {record.get('import_id')} names no model", status=None
            )
        return self.get_model(str(record["model_id"]))

    def get_import(self, import_id: str) -> Json:
        """``GET /api/v1/imports/{import_id}``: one ImportOut."""
        return self._json("GET", ("imports", import_id))

    def wait_for_import(self, import_id: str, *, timeout_s: float = 600.0) -> Json:
        """Poll an import until INDEXED (returned) or REJECTED (raised, with the bundle's error code)."""
        record = _poll(
            lambda: self.get_import(import_id),
            done=lambda r: r.get("status") in IMPORT_TERMINAL,
            timeout_s=timeout_s,
            schedule=IMPORT_POLL,
            what=f"import {import_id}",
        )
        if record.get("status") == ImportStatus.REJECTED:
            raise ApiError(
                str(record.get("error_code") or "IMPORT_REJECTED"),
                f"import {import_id} was rejected: {record.get('reason') or 'no reason given'}",
                status=None,
                details={"import_id": import_id},
            )
        return record

    # --- capabilities and export jobs --------------------------------------------------------------

    def capabilities(self, framework: str | None = None) -> Json:
        """``GET /api/v1/export/capabilities``: the formats each framework can be exported to."""
        return self._json("GET", ("export", "capabilities"), params={"framework": framework})

    def create_export_job(
        self,
        *,
        model_id: str | None = None,
        checkpoint_uri: str | None = None,
        manifest_uri: str | None = None,
        formats: list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Json:
        """``POST /api/v1/export/jobs`` from a model or a checkpoint location: the new ExportJobOut."""
        body: Json = {}
        if model_id is not None:
            body["model_id"] = model_id
        if checkpoint_uri is not None:
            body["checkpoint_uri"] = checkpoint_uri
        if manifest_uri is not None:
            body["manifest_uri"] = manifest_uri
        if formats:
            body["formats"] = list(formats)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", ("export", "jobs"), json_body=body, headers=headers, ok=(200, 201, 202))

    def get_export_job(self, job_id: str) -> Json:
        """``GET /api/v1/export/jobs/{job_id}``: one ExportJobOut."""
        return self._json("GET", ("export", "jobs", job_id))

    def list_model_exports(
        self, model_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        """``GET /api/v1/models/{model_id}/exports``: one page of that model's export jobs."""
        return self._json("GET", ("models", model_id, "exports"), params={"limit": limit, "cursor": cursor})

    def set_default_export(self, job_id: str) -> Json:
        """``POST /api/v1/export/jobs/{job_id}/set-default``: the job, now the default."""
        return self._json("POST", ("export", "jobs", job_id, "set-default"))

    def list_uploads(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        """``GET /api/v1/uploads``: one page of checkpoint uploads (status: awaiting, paired, rejected)."""
        return self._json("GET", ("uploads",), params={"status": status, "limit": limit, "cursor": cursor})

    def get_upload(self, upload_id: str) -> Json:
        """``GET /api/v1/uploads/{upload_id}``: one UploadOut."""
        return self._json("GET", ("uploads", upload_id))

    def cancel_export_job(self, job_id: str) -> Json:
        """``DELETE /api/v1/export/jobs/{job_id}``: the job, now CANCELLED."""
        return self._json("DELETE", ("export", "jobs", job_id))

    def wait_for_job(
        self, job_id: str, *, timeout_s: float = 3600.0, on_status: Callable[[Json], None] | None = None
    ) -> Json:
        """Poll a job until it is terminal (SUCCEEDED, FAILED or CANCELLED) and return it.

        ``on_status`` sees the job each time its status changes; :func:`job_failure` turns a job that
        did not succeed into the error to raise.
        """
        last: list[Any] = []

        def fetch() -> Json:
            job = self.get_export_job(job_id)
            if on_status is not None and job.get("status") not in last:
                on_status(job)
            last[:] = [job.get("status")]
            return job

        return _poll(
            fetch,
            done=lambda j: j.get("status") in TERMINAL,
            timeout_s=timeout_s,
            schedule=JOB_POLL,
            what=f"job {job_id}",
        )

    def download_link(self, job_id: str, *, file: DownloadFile = "package") -> Json:
        """``GET /api/v1/export/jobs/{job_id}/download``: a presigned link to the job's output.

        The answer is ``{url, expires_at, file, key, size_bytes, sha256}``.
        """
        return self._json("GET", ("export", "jobs", job_id, "download"), params={"file": file})

    def download_export(
        self,
        job_id: str,
        dest: Path,
        *,
        file: DownloadFile = "package",
        progress: ProgressCallback | None = None,
    ) -> DownloadedFile:
        """Download a job's package (or bundle) into ``dest``, checking the size and sha256 the API gave."""
        return self._download(self.download_link(job_id, file=file), dest, progress)

    # --- deployments -------------------------------------------------------------------------------

    def create_deployment(
        self,
        *,
        deployment_type: str,
        name: str,
        model_id: str | None = None,
        export_job_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Json:
        """``POST /api/v1/deployments`` from a model or an export job: ``{deployment, api_key, download}``.

        ``api_key`` (platform endpoints only) is in this answer and nowhere else: the API keeps its hash.
        ``download`` is the artifact's presigned link for the types that deliver a file.
        """
        body: Json = {"type": deployment_type, "name": name, "options": dict(options or {})}
        if model_id is not None:
            body["model_id"] = model_id
        if export_job_id is not None:
            body["export_job_id"] = export_job_id
        answer = self._json("POST", ("deployments",), json_body=body, ok=(200, 201))
        _member(answer, "deployment")
        return answer

    def get_deployment(self, deployment_id: str) -> Json:
        """``GET /api/v1/deployments/{deployment_id}``: one DeploymentOut."""
        return self._json("GET", ("deployments", deployment_id))

    def list_deployments(
        self, *, model_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        """``GET /api/v1/deployments``: one page ``{"items": [DeploymentOut], "next_cursor"}``."""
        params = {"model_id": model_id, "limit": limit, "cursor": cursor}
        return self._json("GET", ("deployments",), params=params)

    def activate_deployment(self, deployment_id: str) -> Json:
        """``PATCH /api/v1/deployments/{deployment_id}/activate``: the deployment, now ACTIVE."""
        return self._json("PATCH", ("deployments", deployment_id, "activate"))

    def deactivate_deployment(self, deployment_id: str) -> Json:
        """``PATCH /api/v1/deployments/{deployment_id}/deactivate``: the deployment, now INACTIVE."""
        return self._json("PATCH", ("deployments", deployment_id, "deactivate"))

    def delete_deployment(self, deployment_id: str) -> None:
        """``DELETE /api/v1/deployments/{deployment_id}``: the deployment, its key, history and usage."""
        self._call("DELETE", ("deployments", deployment_id), ok=(200, 204))

    def deployment_history(self, deployment_id: str) -> Json:
        """``GET /api/v1/deployments/{deployment_id}/history``: ``{"items": [{at, actor, action, ...}]}``."""
        return self._json("GET", ("deployments", deployment_id, "history"))

    def rotate_deployment_key(self, deployment_id: str) -> Json:
        """``POST /api/v1/deployments/{deployment_id}/rotate-key``: ``{deployment, api_key}``.

        The old key stops working; the new one is in this answer and nowhere else.
        """
        return self._json("POST", ("deployments", deployment_id, "rotate-key"), ok=(200, 201))

    def deployment_download(self, deployment_id: str) -> Json:
        """``GET /api/v1/deployments/{deployment_id}/download``: a presigned link to its artifact."""
        return self._json("GET", ("deployments", deployment_id, "download"))

    def download_deployment(
        self,
        deployment_id: str,
        dest: Path,
        *,
        link: Json | None = None,
        progress: ProgressCallback | None = None,
    ) -> DownloadedFile:
        """Download a deployment's artifact into ``dest``, checking the size and sha256 the API gave.

        ``link`` is a download answer already in hand (the one ``create_deployment`` returns);
        without it one is asked for.
        """
        return self._download(link or self.deployment_download(deployment_id), dest, progress)

    # --- inference (a deployment's API key, not the token) -----------------------------------------

    def infer(self, deployment_id: str, key: str, body: Json) -> Inference:
        """``POST /v1/infer/{deployment_id}`` with the deployment's API ``key`` instead of the token.

        ``body`` is ``{"inputs": {name: nested list}}`` or ``{"input": nested list}``.
        """
        response = self._call("POST", ("infer", deployment_id), json_body=body, key=key)
        return Inference(
            answer=_object(response),
            rate_limit=_int_header(response, "x-ratelimit-limit"),
            rate_remaining=_int_header(response, "x-ratelimit-remaining"),
        )

    def deployment_usage(self, deployment_id: str, key: str) -> Json:
        """``GET /v1/deployments/{deployment_id}/usage``: request count, last request, inference time."""
        return self._json("GET", ("deployments", deployment_id, "usage"), key=key)

    def deployment_health(self, deployment_id: str, key: str) -> Json:
        """``GET /v1/deployments/{deployment_id}/health``: status, model, version, whether it is loaded."""
        return self._json("GET", ("deployments", deployment_id, "health"), key=key)

    # --- plumbing ----------------------------------------------------------------------------------

    def _download(self, link: Json, dest: Path, progress: ProgressCallback | None) -> DownloadedFile:
        """Stream a presigned download answer's file into ``dest``; its size and sha256 must match."""
        url = link.get("url")
        if not isinstance(url, str):
            raise ApiError("INVALID_RESPONSE", "the API's download answer has no url", status=None)
        with self._fetch(url) as fetched, _replacing(dest) as part:
            size, sha256 = _save(fetched.response, part, progress)
            expected_sha, expected_size = link.get("sha256"), link.get("size_bytes")
            if isinstance(expected_size, int) and expected_size != size:
                raise ChecksumMismatch(
                    f"downloaded {size} bytes but the API declared {expected_size}; {dest} was not written",
                    field="size_bytes",
                )
            if isinstance(expected_sha, str) and expected_sha.lower() != sha256:
                raise ChecksumMismatch(
                    f"the download hashes to {sha256} but the API declared {expected_sha}; "
                    f"{dest} was not written",
                    field="sha256",
                )
        return DownloadedFile(path=dest, size_bytes=size, sha256=sha256, link=link)

    def _url(self, *segments: str, prefix: str = API_PREFIX) -> str:
        return self.base_url + prefix + "".join("/" + _segment(s) for s in segments)

    def _headers(self, extra: Mapping[str, str] | None = None, *, key: str | None = None) -> dict[str, str]:
        """``extra`` with the bearer: a deployment's API ``key`` when given (never with the token)."""
        headers = dict(extra or {})
        bearer = key if key is not None else self._token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return headers

    def _call(
        self,
        method: str,
        path: tuple[str, ...],
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        key: str | None = None,
    ) -> httpx.Response:
        """One request to the API; with ``key``, to the inference routes with that key as the bearer."""
        url = self._url(*path, prefix=API_PREFIX if key is None else INFERENCE_PREFIX)
        with self._transport_errors(url, api=True):
            response = self._http.request(
                method,
                url,
                params=_query(params),
                json=json_body,
                content=content,
                headers=self._headers(headers, key=key),
            )
        if response.status_code not in ok:
            raise self._error(response, keyed=key is not None)
        return response

    def _json(self, method: str, path: tuple[str, ...], **kwargs: Any) -> Json:
        return _object(self._call(method, path, **kwargs))

    def _error(self, response: httpx.Response, *, keyed: bool = False) -> ApiError:
        error = error_from_response(response)
        if error.status == 401 and keyed:
            error.message += (
                f" (the deployment's API key was refused: check --key or {API_KEY_VARIABLE}; "
                "`heimdall deploy rotate-key` issues a new one)"
            )
        elif error.status == 401 and not self._token:
            error.message += (
                f" (no token was sent: pass --token, set {API_TOKEN_VARIABLE}, or run where "
                f"`heimdall local up` wrote {LOCAL_TOKEN_FILE})"
            )
        return error

    @contextlib.contextmanager
    def _fetch(self, url: str, *, params: Mapping[str, Any] | None = None) -> Iterator[_Fetched]:
        """GET ``url`` as a stream, following redirects by hand; the token goes to the API's origin only."""
        # Merged, not passed as ``params=``: httpx would replace the URL's own query, and with it the
        # signature of a presigned URL.
        target = httpx.URL(url).copy_merge_params(_query(params))
        first: httpx.Response | None = None
        for _ in range(MAX_REDIRECTS + 1):
            own = _origin(target) == self._origin
            request = self._http.build_request("GET", target, headers=self._headers() if own else None)
            with self._transport_errors(str(target), api=own):
                response = self._http.send(request, stream=True)
            try:
                if first is None:
                    first = response
                if response.has_redirect_location:
                    target = response.url.join(response.headers["location"])
                    continue
                if not response.is_success:
                    response.read()
                    if own:
                        raise self._error(response)
                    raise error_from_response(response, code="DOWNLOAD_FAILED", origin="the storage")
                with self._transport_errors(str(target), api=own):
                    yield _Fetched(first=first, response=response, redirected=response is not first)
                return
            finally:
                response.close()
        raise ApiError("TOO_MANY_REDIRECTS", f"more than {MAX_REDIRECTS} redirects from {url}", status=None)

    @contextlib.contextmanager
    def _transport_errors(self, url: str, *, api: bool) -> Iterator[None]:
        """Turn httpx's transport exceptions into the project's typed errors."""
        where = _origin_text(httpx.URL(url))
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            hint = (
                f"; is `heimdall local up` running? (or pass --api / set {API_URL_VARIABLE})" if api else ""
            )
            raise ApiUnreachable(f"cannot connect to {where}: {_reason(exc)}{hint}") from None
        except httpx.TimeoutException as exc:
            raise ApiTimeout(f"{where} did not answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ConnectionLost(f"the connection to {where} failed: {_reason(exc)}") from None


def job_failure(job: Json) -> JobFailed:
    """The error a job that ended FAILED or CANCELLED stands for."""
    result = job.get("result")
    if not isinstance(result, dict):
        result = {}
    code = result.get("error_code")
    reason = job.get("reason") or result.get("error_message") or "no reason given"
    detail = f"{code}: {reason}" if code else str(reason)
    if job.get("status") == JobStatus.CANCELLED:
        return JobCancelled(f"job {job.get('job_id')} was cancelled: {detail}")
    return JobFailed(f"job {job.get('job_id')} failed: {detail}")


def resolve_token(explicit: str | None, cwd: Path | None = None) -> str | None:
    """The bearer token: ``explicit`` (``--token`` or its variable), else the local stack's token file."""
    if explicit:
        return explicit.strip()
    local = (cwd or Path.cwd()) / LOCAL_TOKEN_FILE
    if local.is_file():
        return local.read_text(encoding="utf-8").strip() or None
    return None


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


# --- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    first: httpx.Response
    response: httpx.Response
    redirected: bool


class _CountingFile:
    """A binary file that reports how much of it was read (httpx's multipart encoder reads it)."""

    def __init__(self, raw: BinaryIO, size: int, progress: ProgressCallback | None) -> None:
        self._raw, self._size, self._progress, self._done = raw, size, progress, 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._done += len(data)
        if self._progress is not None:
            self._progress(self._done, self._size)
        return data

    # What httpx needs to learn the length (Content-Length) and to rewind before it reads.
    def fileno(self) -> int:
        return self._raw.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and offset == 0:
            self._done = 0
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _poll(
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


def _save(response: httpx.Response, part: Path, progress: ProgressCallback | None) -> tuple[int, str]:
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
def _replacing(dest: Path) -> Iterator[Path]:
    """A fresh file beside ``dest`` that replaces it when the block succeeds, and is removed otherwise."""
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        yield part
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _segment(value: str) -> str:
    # Ids are percent-encoded whole: "a/b" stays one segment, and "." or ".." cannot climb the path.
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if set(value) <= {"."} else quoted


def _object(response: httpx.Response) -> Json:
    """The JSON object an answer carries (anything else is an ``INVALID_RESPONSE``)."""
    doc = _loads(response.content)
    if not isinstance(doc, dict):
        request = response.request
        raise ApiError(
            "INVALID_RESPONSE",
            f"{request.method} {request.url.path} answered {response.status_code} without a JSON object",
            status=response.status_code,
        )
    return doc


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "").strip()
    return int(value) if value.isdigit() else None


def _member(doc: Json, key: str) -> Json:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ApiError("INVALID_RESPONSE", f"the API's answer has no {key!r} object", status=None)
    return value


def _query(params: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: str(v) for k, v in (params or {}).items() if v is not None}


def _joined(values: list[str] | None) -> str | None:
    return None if values is None else ",".join(values)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


def _origin_text(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', errors='replace')}"


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _suggested_name(response: httpx.Response) -> str | None:
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    return Path(match.group(1)).name if match else None
