"""The API client's deployment routes, and the inference routes a deployment's API key opens.

Deployments are created, listed, switched on and off, deleted, re-keyed and downloaded with the
token; ``infer``, ``deployment_usage`` and ``deployment_health`` send the deployment's API key instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from heimdall.cli.api_common import Json, ProgressCallback, json_object, member
from heimdall.cli.api_session import ApiSession, DownloadedFile


@dataclass(frozen=True)
class Inference:
    """An answer of ``POST /v1/infer/{deployment_id}`` and the key's rate-limit headers."""

    #: The JSON as the API sent it: ``{deployment_id, model_id, model_version, outputs, latency_ms,
    #: normalized}``.
    answer: Json
    #: ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining`` (``None`` when absent or not a number).
    rate_limit: int | None
    rate_remaining: int | None


class DeploymentRoutes(ApiSession):
    """The deployment routes, and the inference routes that take a deployment's API key."""

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
        member(answer, "deployment")
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
            answer=json_object(response),
            rate_limit=_int_header(response, "x-ratelimit-limit"),
            rate_remaining=_int_header(response, "x-ratelimit-remaining"),
        )

    def deployment_usage(self, deployment_id: str, key: str) -> Json:
        """``GET /v1/deployments/{deployment_id}/usage``: request count, last request, inference time."""
        return self._json("GET", ("deployments", deployment_id, "usage"), key=key)

    def deployment_health(self, deployment_id: str, key: str) -> Json:
        """``GET /v1/deployments/{deployment_id}/health``: status, model, version, whether it is loaded."""
        return self._json("GET", ("deployments", deployment_id, "health"), key=key)


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "").strip()
    return int(value) if value.isdigit() else None
