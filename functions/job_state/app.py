"""Job state: AWS Batch "Job State Change" events move export jobs along their state machine."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from heimdall.logic.job_state import handle_batch_state_change
from heimdall.observability import logger, metrics, tracer
from heimdall.wiring import job_state_deps


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcome = handle_batch_state_change(event, job_state_deps())
    metrics.add_metric(name=f"StateChanges{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
    logger.info("batch state change", extra={"job_id": outcome.job_id, "outcome": outcome.status})
    return {"status": outcome.status, "job_id": outcome.job_id}
