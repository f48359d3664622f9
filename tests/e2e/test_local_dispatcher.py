"""The local stack's dispatcher never dies: a handler that raises is logged and counted, its messages go
back to the queue and, after the template's redrive count, to the dead-letter queue; the loop goes on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from tests.support.e2e import make_bundle, wait_for

from heimdall.local import stack as stack_module
from heimdall.local.api_tokens import DEFAULT_SUB
from heimdall.local.stack import MAX_RECEIVE_COUNT, LocalStack

POISON = "poison"


class _Raising(ModuleType):
    """A function module whose handler raises for any event that mentions :data:`POISON`."""

    def __init__(self, real: ModuleType) -> None:
        super().__init__(real.__name__)
        self._real = real
        self.raised = 0

    def lambda_handler(self, event: dict[str, Any], context: Any) -> Any:
        if POISON in json.dumps(event):
            self.raised += 1
            raise RuntimeError("an injected handler failure")
        return self._real.lambda_handler(event, context)


@pytest.fixture(scope="module")
def injected() -> dict[str, _Raising]:
    return {}


@pytest.fixture(scope="module", name="stack")
def stack_fixture(
    tmp_path_factory: pytest.TempPathFactory, injected: dict[str, _Raising]
) -> Iterator[LocalStack]:
    real_load = stack_module.load_function

    def load(name: str) -> ModuleType:
        module = real_load(name)
        if name not in ("ingest", "job_state"):
            return module
        injected[name] = _Raising(module)
        return injected[name]

    patch = pytest.MonkeyPatch()
    patch.setattr(stack_module, "load_function", load)
    stack = LocalStack(port=0, api_port=None, workdir=tmp_path_factory.mktemp("dispatch"), log_level="ERROR")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        patch.undo()


def dead_letters(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    """The poison messages in the queue's DLQ (the emulator's state outlives a module's stack)."""
    sqs = stack.client("sqs")
    messages: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=stack.queue_urls[f"{name}-dlq"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    return [message for message in messages if POISON in message["Body"]]


def test_a_raising_ingest_handler_sends_its_message_to_the_dlq_and_later_drops_are_indexed(
    stack: LocalStack, injected: dict[str, _Raising]
) -> None:
    assert stack.names is not None
    s3 = stack.client("s3")
    s3.put_object(Bucket=stack.names.ingest_bucket, Key=f"bundles/{POISON}.heimdall", Body=make_bundle())
    # Every receive of the poison fails the whole batch; after the redrive count it is a dead letter.
    letters = wait_for("the poison message in the DLQ", lambda: dead_letters(stack, "ingest"), timeout_s=90)
    assert POISON in letters[0]["Body"]
    assert injected["ingest"].raised == MAX_RECEIVE_COUNT
    assert stack.handler_failures["ingest"] == MAX_RECEIVE_COUNT
    assert all(thread.is_alive() for thread in stack._threads)

    # The dispatcher is still there: a later drop is indexed.
    later = make_bundle(seed=3, model={"model_name": "after-the-poison"})
    s3.put_object(Bucket=stack.names.ingest_bucket, Key="bundles/later.heimdall", Body=later)
    from heimdall import wiring

    registry = wiring.ingest_deps().bundles.registry
    models = wait_for(
        "the later drop indexed",
        lambda: registry.list_models(DEFAULT_SUB, name="after-the-poison").items,
        timeout_s=90,
    )
    assert len(models) == 1
    assert stack.handler_failures["ingest"] == MAX_RECEIVE_COUNT  # nothing else failed


def test_a_raising_job_state_handler_sends_its_event_to_the_dlq_and_the_pump_goes_on(
    stack: LocalStack, injected: dict[str, _Raising]
) -> None:
    def state_change(job_id: str) -> dict[str, Any]:
        detail = {
            "jobName": f"heimdall-{job_id}",
            "jobId": f"local-{job_id}",
            "jobQueue": "local",
            "status": "RUNNING",
            "parameters": {"job_id": job_id},
        }
        return {"Source": "aws.batch", "DetailType": "Batch Job State Change", "Detail": json.dumps(detail)}

    stack._post_default_bus(state_change(POISON))
    letters = wait_for("the poison state change in the DLQ", lambda: dead_letters(stack, "job-state"), 90)
    assert POISON in letters[0]["Body"]
    assert stack.handler_failures["job_state"] == MAX_RECEIVE_COUNT
    handled = stack.handled["job_state"]
    stack._post_default_bus(state_change("an-unknown-job"))  # handled: an unknown job is ignored
    wait_for("the next state change handled", lambda: stack.handled["job_state"] > handled, timeout_s=60)
    assert all(thread.is_alive() for thread in stack._threads)
