"""A client for the Heimdall HTTP API (DESIGN §7): one method per route, typed errors, streamed files.

Used by the API commands (:mod:`heimdall.cli.models`, :mod:`~heimdall.cli.jobs`,
:mod:`~heimdall.cli.uploads`, :mod:`~heimdall.cli.deploy`, :mod:`~heimdall.cli.endpoint`). It knows the
routes and JSON shapes of the API and nothing of how they are served, so it works the same against
``heimdall local up`` and against API Gateway. Resources come back as the API's JSON objects
(``dict``), unchanged.

What it takes care of:

* **Errors** (:mod:`~heimdall.cli.api_errors`). Every answer that is not the expected status raises
  an ``ApiError`` carrying the server's ``code``, ``message``, ``field`` and HTTP status. Bodies that
  are not the API's ``{"error": {...}}`` (API Gateway's own ``{"message": "Unauthorized"}``, an HTML
  error page, S3's XML) get a code from the status. A refused connection raises ``ApiUnreachable``, a
  timeout ``ApiTimeout``. All are :class:`~heimdall.errors.HeimdallError`, so the command line prints
  them as ``error CODE: message`` and exits 1.
* **The token goes to the API only** (:class:`~heimdall.cli.api_session.ApiSession`).
  ``Authorization`` is added to requests for the API's own origin; presigned storage URLs (a 307 from
  export, a job download link, a presigned upload form) are requested without it. Redirects are
  followed by hand for that reason; httpx never follows them. The inference routes (``/v1/...``:
  :meth:`~ApiClient.infer`, ``deployment_usage``, ``deployment_health``) take a deployment's API key
  instead, sent in place of the token.
* **Rate limits.** A 429 raises an ``ApiError`` whose message says when to retry (``Retry-After``).
* **Files are streamed** both ways, a chunk at a time, with an optional progress callback. A download
  is written beside its destination and renamed into place only once complete and checked, so a
  failed or tampered download never leaves a file that looks good.
* **Imports** go inline (one POST) up to :data:`~heimdall.cli.api_model_routes.INLINE_MAX_BYTES`,
  otherwise through a presigned upload followed by polling ``GET /api/v1/imports/{import_id}`` until
  the import is decided.

:class:`ApiClient` puts the route groups together, each a set of methods over
:class:`~heimdall.cli.api_session.ApiSession`: models and imports (:mod:`~heimdall.cli.api_model_routes`),
export jobs and uploads (:mod:`~heimdall.cli.api_job_routes`), deployments and inference
(:mod:`~heimdall.cli.api_deployment_routes`). What they share is in :mod:`~heimdall.cli.api_common`.
"""

from __future__ import annotations

from heimdall.cli.api_common import Json
from heimdall.cli.api_deployment_routes import DeploymentRoutes
from heimdall.cli.api_job_routes import ExportJobRoutes
from heimdall.cli.api_model_routes import ModelRoutes


class ApiClient(ModelRoutes, ExportJobRoutes, DeploymentRoutes):
    """The Heimdall HTTP API over httpx. Use as a context manager (or call :meth:`close`).

    ``base_url`` may carry a path prefix (an API Gateway stage); ``token`` is sent as a bearer token
    to that origin only. ``transport`` replaces httpx's network transport (tests, benchmarks).
    """

    def openapi(self) -> Json:
        """``GET /api/v1/openapi.json``: the API's OpenAPI document."""
        return self._json("GET", ("openapi.json",))
