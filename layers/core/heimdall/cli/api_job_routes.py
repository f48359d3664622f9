"""The API client's export routes: capabilities, export jobs and checkpoint uploads.

Creates, lists, follows (polling until terminal), cancels and downloads export jobs;
:func:`job_failure` is the error a job that did not succeed stands for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from heimdall.cli.api_common import Json, ProgressCallback, poll
from heimdall.cli.api_errors import JobCancelled, JobFailed
from heimdall.cli.api_session import ApiSession, DownloadedFile
from heimdall.domain.job_states import TERMINAL
from heimdall.domain.records import JobStatus

#: Seconds between polls of a job: the first, the factor it grows by, the most.
JOB_POLL = (2.0, 1.5, 15.0)
DownloadFile = Literal["package", "bundle"]


class ExportJobRoutes(ApiSession):
    """The export routes: capabilities, export jobs (create, follow, cancel, download) and uploads."""

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

        return poll(
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
