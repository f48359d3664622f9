"""The API client's model routes: list, get, delete, export models, and import bundles.

An export is streamed to a file and read back with the bundle reader before it takes its name; an
import goes inline (one POST) up to :data:`INLINE_MAX_BYTES`, otherwise through a presigned upload
followed by polling the import until it is decided.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import httpx

from heimdall.bundle.reader import ReadResult, read_bundle
from heimdall.bundle.source import GZIP_MAGIC
from heimdall.cli.api_common import Json, ProgressCallback, member, poll, replacing, save_stream
from heimdall.cli.api_errors import ApiError, error_from_response
from heimdall.cli.api_session import ApiSession
from heimdall.domain.records import IMPORT_TERMINAL, ImportStatus
from heimdall.errors import ChecksumMismatch
from heimdall.settings import MIB

#: Bundles up to this size are imported with one POST; larger ones through a presigned upload
#: (the API's default ``HEIMDALL_API_MAX_INLINE_BYTES``; a server configured lower answers 413 and the
#: ``auto`` mode then switches to presigned).
INLINE_MAX_BYTES = 4 * MIB
#: Seconds between polls of an import: the first, the factor it grows by, the most.
IMPORT_POLL = (0.5, 1.5, 5.0)
ImportMode = Literal["auto", "inline", "presigned"]
_FILENAME = re.compile(r'filename="?([^";]+)"?')


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
class ImportOutcome:
    """An import the API decided: ``record`` is the ImportOut, ``model`` the ModelOut indexed."""

    mode: Literal["inline", "presigned"]
    record: Json
    model: Json


class ModelRoutes(ApiSession):
    """The model routes: list, get, delete and export models, and import bundles."""

    # --- models ------------------------------------------------------------------------------------

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
            with replacing(dest) as part:
                size, _ = save_stream(fetched.response, part, progress)
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
        record = member(answer, "import")
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
        return member(answer, "import"), member(answer, "upload")

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
        record = poll(
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


def _joined(values: list[str] | None) -> str | None:
    return None if values is None else ",".join(values)


def _suggested_name(response: httpx.Response) -> str | None:
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    return Path(match.group(1)).name if match else None
