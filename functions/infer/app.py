"""Inference: ``POST /v1/infer/{id}``, ``GET /v1/deployments/{id}/health|usage`` → heimdall.inference.app.

Runs with the onnx layer (onnxruntime, numpy); the ONNX Runtime session is created on the first
request for a model and reused by the container's later requests. This module is where the endpoint
gets its collaborators: the wired adapters, built once per container on the first request.
"""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from heimdall.inference.app import app
from heimdall.inference.deps import use_serving_deps
from heimdall.observability import logger, metrics, tracer
from heimdall.wiring import serving_deps

use_serving_deps(serving_deps)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = app.resolve(event, context)
    status = int(response.get("statusCode", 500))
    metrics.add_metric(name=f"Inference{status // 100}xx", unit=MetricUnit.Count, value=1)
    return response
