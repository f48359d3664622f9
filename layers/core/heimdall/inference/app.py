"""The inference endpoint (DESIGN §7): ``POST /v1/infer/{deployment_id}`` and the endpoint's health and usage.

The resolver the inference function (``functions/infer/app.py``) serves. Its callers are not the API's
users but holders of a deployment's API key: every route takes ``Authorization: Bearer hdk_…`` and
checks it against the stored hash in constant time (:func:`heimdall.domain.api_keys.authenticate_api_key`);
a missing, malformed, unknown, rotated or revoked key, and another deployment's key, are the same 401.

A request to infer, in order:

1. the key (401), then the deployment: a platform endpoint that is ``ACTIVE`` (409
   ``DEPLOYMENT_INACTIVE`` otherwise, ``NOT_READY`` for another type);
2. the key's rate limit, exact over every 60 s (:func:`heimdall.domain.rate_limits.admit_request`): a sliding
   log of its last admitted requests in the registry table, read with the key and written with one
   conditional write per admitted request, so it holds across instances (429 ``RATE_LIMITED`` with
   ``Retry-After``);
3. the body: ``{"inputs": {name: value}}`` or ``{"input": value}``, each value a nested list or a
   binary tensor ``{"dtype", "shape", "data_b64"}`` (see :func:`heimdall.inference.inputs.prepare_inputs`;
   400 ``INVALID_JSON`` / ``INVALID_INPUT``; 413 over the request limit; 415 when its Content-Type is
   neither JSON nor absent);
4. the model's ONNX Runtime session, created once per container and model version
   (:class:`heimdall.inference.sessions.ModelCache`: fetched from S3 to ``/tmp``, sha256 checked, structural
   pass, then the session);
5. inputs checked against the model's declared names, dtypes and shapes (400 with the expected
   shape), the bundle's normalisation when the deployment applies it, ``session.run``;
6. the usage counters (request count, last request time, total inference time), then the answer:
   outputs by the model's names, ``latency_ms`` (the run alone), ``model_version``, with
   ``X-RateLimit-Limit``/``X-RateLimit-Remaining``. A model answering NaN or infinity is a 422
   ``NON_FINITE_OUTPUT`` (JSON cannot carry it), counted in usage like any run.

Only the requests that reach the model count as usage; every request with a valid key counts against
the rate limit, whatever its body.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, RootModel

from heimdall.api.bodies import raw_body, require_media_type
from heimdall.api.documented import METHOD_NOT_ALLOWED_NOTE, documented, json_request_body
from heimdall.api.openapi import DocumentSpec, build_document, render
from heimdall.api.responses import JSON, error_response, handler_of, no_route_response
from heimdall.domain.api_keys import authorize_request
from heimdall.domain.deployments import RATE_LIMITS, Deployment, DeploymentStatus, DeploymentType, Tier
from heimdall.errors import (
    DeploymentInactive,
    HeimdallError,
    NonFiniteOutput,
    NotReady,
    RateLimited,
)
from heimdall.inference.deps import ServingDeps, serving_deps
from heimdall.inference.inputs import normalize, prepare_inputs, read_payload
from heimdall.inference.sessions import run

__all__ = ["app"]

logger = logging.getLogger(__name__)

INFER_PATH = "/v1/infer/<deployment_id>"

app = APIGatewayHttpResolver()

OPENAPI_PATH = "/v1/openapi.json"
TAGS = ["inference"]


# --- bodies (for the OpenAPI document; the handler reads the body itself, see read_payload) ---------------


class BinaryTensor(BaseModel):
    """An input as raw little-endian values of the input's own dtype, base64-encoded, in C order."""

    model_config = ConfigDict(extra="forbid")

    dtype: str = Field(description="The input's dtype (float32, int64, ...): no conversion is made.")
    shape: list[int] = Field(description="The tensor's shape; it must fit the model's declared one.")
    data_b64: str = Field(description="Standard base64 of exactly prod(shape) × itemsize bytes.")


#: A nested list of numbers (or booleans), or a binary tensor.
InputValue = list[Any] | BinaryTensor


class NamedInputs(BaseModel):
    """Every input of the model by name."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, InputValue] = Field(min_length=1)


class SingleInput(BaseModel):
    """The one input of a single-input model, whatever its name."""

    model_config = ConfigDict(extra="forbid")

    input: InputValue


class InferenceRequest(RootModel[NamedInputs | SingleInput]):
    """``{"inputs": {name: value}}`` or ``{"input": value}``."""


class InferenceOut(BaseModel):
    """The model's outputs by its own names, and the time ``session.run`` took."""

    deployment_id: str
    model_id: str
    model_version: str | None
    outputs: dict[str, Any] = Field(description="Nested lists (a number for a scalar output).")
    latency_ms: float
    normalized: bool = Field(description="Whether the bundle's normalisation was applied to the inputs.")


class UsageOut(BaseModel):
    """What the endpoint served: runs of the model, the last one's time, their total inference time."""

    deployment_id: str
    request_count: int
    last_request_at: datetime | None
    total_inference_ms: float


class HealthOut(BaseModel):
    """Whether the endpoint serves (``ready``) and whether this instance holds the model's session."""

    deployment_id: str
    status: DeploymentStatus
    ready: bool
    model_id: str
    model_version: str | None
    model_loaded: bool
    tier: Tier | None


INFERENCE_DOCUMENT = DocumentSpec(
    title="Heimdall Export inference endpoint",
    description=(
        "Platform endpoints of Heimdall Export deployments. Every operation but this document needs "
        "the deployment's API key as a bearer token (hdk_...; shown once when the deployment was "
        "created or its key rotated). Keys are rate-limited per minute by the deployment's tier. "
        'Errors are JSON {"error": {"code", "message"}}. ' + METHOD_NOT_ALLOWED_NOTE
    ),
    tags=(*TAGS, "meta"),
    public_path=OPENAPI_PATH,
    bearer_format="hdk_{key_id}_{secret}",
    bearer_description="A deployment's API key.",
    request_models=(InferenceRequest,),
)


@cache
def openapi_text() -> str:
    """The generated OpenAPI document of the inference endpoint, rendered once per container."""
    return render(build_document(app, INFERENCE_DOCUMENT))


@app.get(
    OPENAPI_PATH,
    summary="This endpoint's OpenAPI document",
    tags=["meta"],
    responses=documented(
        200, "The OpenAPI 3.1 document", content={JSON: {"schema": {"type": "object"}}}, public=True
    ),
)
def openapi_document() -> Response[str]:
    """The OpenAPI document (no key needed)."""
    return Response(status_code=200, content_type=JSON, body=openapi_text())


# --- the key and the deployment ----------------------------------------------------------------------


def _bearer() -> str | None:
    header = app.current_event.headers.get("authorization") or ""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _authorized(deps: ServingDeps, deployment_id: str) -> tuple[Deployment, str]:
    """The deployment the request's key opens, and the key's id; 401 for any key that does not."""
    record, deployment = authorize_request(deps.deployments, _bearer(), deployment_id)
    return deployment, record.key_id


def _served(deployment: Deployment) -> Deployment:
    """The deployment if it serves inference now; 409 otherwise."""
    if deployment.type is not DeploymentType.PLATFORM_ENDPOINT or not deployment.onnx_key:
        raise NotReady(
            f"deployment {deployment.deployment_id} is not a platform endpoint", field="deployment_id"
        )
    if deployment.status is not DeploymentStatus.ACTIVE:
        raise DeploymentInactive(
            f"deployment {deployment.deployment_id} is inactive; its owner can activate it again",
            field="deployment_id",
        )
    return deployment


# --- routes ------------------------------------------------------------------------------------------


@app.post(
    INFER_PATH,
    summary="Run the deployment's model",
    description=(
        "Inputs are checked against the model's declared names, dtypes and shapes; the bundle's "
        "normalisation is applied when the deployment asks for it."
    ),
    tags=TAGS,
    responses=documented(
        200,
        "The outputs",
        InferenceOut,
        errors=(400, 404, 409, 413, 415, 422, 429),
        headers={
            "X-RateLimit-Limit": {
                "description": "Requests a minute this key may make.",
                "schema": {"type": "string"},
            },
            "X-RateLimit-Remaining": {
                "description": "Requests this key may make now: its limit less those of the last 60 s.",
                "schema": {"type": "string"},
            },
        },
    ),
    openapi_extensions={"requestBody": json_request_body(InferenceRequest, "The inputs.")},
)
def infer(deployment_id: str) -> Response[str]:
    """Run the deployment's model on the request's inputs."""
    deps = serving_deps()
    deployment, key_id = _authorized(deps, deployment_id)
    _served(deployment)
    limit = RATE_LIMITS[deployment.tier or Tier.FREE]
    decision = deps.deployments.consume_rate_limit(key_id, limit, deps.now())
    if not decision.allowed:
        raise RateLimited(
            # When to retry travels in Retry-After and details.retry_after_s, not in the prose.
            f"rate limit of {limit} requests per minute reached for this key",
            retry_after_s=decision.retry_after_s,
            limit=limit,
        )
    require_media_type(app.current_event, (JSON,))
    payload = read_payload(raw_body(app.current_event, max_bytes=deps.max_request_bytes))
    loaded = deps.cache.load(
        deployment.model_id,
        str(deployment.onnx_sha256),
        _fetcher(deps, str(deployment.onnx_key)),
        workdir=deps.workdir,
        limits=deps.limits,
    )
    arrays = prepare_inputs(loaded.session.get_inputs(), payload)
    normalized = deployment.apply_normalization and deployment.normalization is not None
    if normalized:
        assert deployment.normalization is not None
        arrays = normalize(arrays, deployment.normalization)
    result = run(loaded.session, arrays)
    deps.deployments.record_usage(deployment.deployment_id, result.latency_ms, deps.now())
    answer = {
        "deployment_id": deployment.deployment_id,
        "model_id": deployment.model_id,
        "model_version": deployment.model_version,
        "outputs": result.outputs,
        "latency_ms": round(result.latency_ms, 4),
        "normalized": normalized,
    }
    try:
        body = json.dumps(answer, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise _non_finite(result.outputs) from None
    headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(decision.remaining)}
    return Response(status_code=200, content_type=JSON, body=body, headers=headers)


@app.get(
    "/v1/deployments/<deployment_id>/usage",
    summary="The endpoint's usage",
    tags=TAGS,
    responses=documented(200, "Runs, last run, total inference time", UsageOut, errors=(404,)),
)
def usage(deployment_id: str) -> Response[str]:
    """What the endpoint served: request count, last request time, total inference time."""
    deps = serving_deps()
    deployment, _ = _authorized(deps, deployment_id)
    summary = deps.deployments.get_usage(deployment.deployment_id)
    return _json(UsageOut(deployment_id=deployment.deployment_id, **summary.model_dump()))


@app.get(
    "/v1/deployments/<deployment_id>/health",
    summary="The endpoint's health",
    tags=TAGS,
    responses=documented(
        200, "Ready or not, and whether this instance holds the model", HealthOut, errors=(404,)
    ),
)
def health(deployment_id: str) -> Response[str]:
    """Whether the endpoint serves (``ready``) and whether this instance has the model loaded."""
    deps = serving_deps()
    deployment, _ = _authorized(deps, deployment_id)
    loaded = deployment.onnx_sha256 is not None and (
        deps.cache.get(deployment.model_id, deployment.onnx_sha256) is not None
    )
    return _json(
        HealthOut(
            deployment_id=deployment.deployment_id,
            status=deployment.status,
            ready=deployment.status is DeploymentStatus.ACTIVE,
            model_id=deployment.model_id,
            model_version=deployment.model_version,
            model_loaded=loaded,
            tier=deployment.tier,
        )
    )


def _json(answer: BaseModel) -> Response[str]:
    return Response(status_code=200, content_type=JSON, body=answer.model_dump_json())


# --- the body and the answer -------------------------------------------------------------------------


def _fetcher(deps: ServingDeps, onnx_key: str) -> Callable[[Path], None]:
    def fetch(path: Path) -> None:
        uri = f"s3://{deps.names.artifacts_bucket}/{onnx_key}"
        deps.store.download(uri, path, max_bytes=deps.limits.max_onnx_bytes)

    return fetch


def _non_finite(outputs: dict[str, list[Any]]) -> NonFiniteOutput:
    names = [name for name, values in outputs.items() if not _all_finite(values)]
    return NonFiniteOutput(
        f"the model answered NaN or infinity in {', '.join(repr(n) for n in names)} for these inputs",
        field="outputs",
        outputs=names,
    )


def _all_finite(values: Any) -> bool:
    if isinstance(values, list):
        return all(_all_finite(v) for v in values)
    return not isinstance(values, float) or math.isfinite(values)


# --- errors ------------------------------------------------------------------------------------------


@handler_of(app, HeimdallError)
def _typed(exc: HeimdallError) -> Response[str]:
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="heimdall-inference"'
    if exc.http_status >= 500:
        logger.error("inference request failed", extra={"code": exc.code, "error": exc.message})
    return error_response(
        exc.http_status, exc.code, exc.message, field=exc.field, details=exc.details, headers=headers
    )


@handler_of(app, NotFoundError)
def _no_route(exc: NotFoundError) -> Response[str]:
    return no_route_response(app)


@handler_of(app, Exception)
def _unexpected(exc: Exception) -> Response[str]:
    logger.exception("unhandled error in the inference endpoint", extra={"error_type": type(exc).__name__})
    return error_response(500, "INTERNAL_ERROR", "internal error")
