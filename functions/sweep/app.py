"""Sweep: on a schedule, rejects half pairs that waited past HEIMDALL_PAIR_TIMEOUT_S (INCOMPLETE_UPLOAD)."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from heimdall.logic.uploads import sweep_incomplete_uploads
from heimdall.observability import logger, metrics, tracer
from heimdall.wiring import sweep_deps


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcome = sweep_incomplete_uploads(sweep_deps())
    metrics.add_metric(name="IncompleteUploadsRejected", unit=MetricUnit.Count, value=len(outcome.rejected))
    if outcome.rejected or outcome.skipped:
        logger.info("half pairs swept", extra={"rejected": outcome.rejected, "skipped": outcome.skipped})
    return {"rejected": outcome.rejected, "skipped": outcome.skipped}
