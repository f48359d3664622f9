"""Ingest: S3 notifications (S3 → EventBridge → SQS) for checkpoints, manifests and bundles."""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from heimdall.logic.ingest import handle_ingest_record
from heimdall.observability import logger, metrics, tracer
from heimdall.wiring import ingest_deps

processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    """One notification; an exception fails only this record (partial batch response)."""
    outcome = handle_ingest_record(record.json_body, ingest_deps())
    metrics.add_metric(name="NotificationsProcessed", unit=MetricUnit.Count, value=1)
    logger.info("ingest record processed", extra={"message_id": record.message_id, "outcome": outcome})


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
