"""The EventBridge adapter against botocore's Stubber: chunking, partial failures, bounded retries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from heimdall.adapters.eventbridge import MAX_ENTRIES_PER_REQUEST, EventBridgePublisher
from heimdall.events import (
    MAX_EVENT_BYTES,
    DetailType,
    Event,
    EventPublishError,
    EventSink,
    EventTooLarge,
    ExportJobStarted,
    make_event,
)

BUS = "heimdall-test"
OCCURRED = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "events",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


class Sleeps:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def publisher(client: Any, sleeps: Sleeps, **kwargs: Any) -> EventSink:
    """The adapter as logic sees it: an ``EventSink`` (mypy checks that it is one)."""
    return EventBridgePublisher(BUS, client, sleep=sleeps, jitter=lambda: 1.0, **kwargs)


def started(n: int) -> Event:
    job_id = f"job-{n}"
    return make_event(
        ExportJobStarted(
            idempotency_key=ExportJobStarted.key_for(job_id),
            occurred_at=OCCURRED,
            owner="alice",
            job_id=job_id,
            model_name="localization-net",
            version="1.0.0",
            batch_job_id=f"batch-{n}",
        )
    )


def entry(event: Event) -> dict[str, Any]:
    """The PutEvents entry the adapter must send for ``event``."""
    expected: dict[str, Any] = {
        "Source": "heimdall",
        "DetailType": event.detail_type.value,
        "Detail": event.detail_json(),
        "EventBusName": BUS,
    }
    if event.time is not None:
        expected["Time"] = event.time
    return expected


def ok(count: int) -> dict[str, Any]:
    return {"FailedEntryCount": 0, "Entries": [{"EventId": f"id-{i}"} for i in range(count)]}


def partial(failed: set[int], count: int, code: str = "ThrottlingException") -> dict[str, Any]:
    entries = [
        {"ErrorCode": code, "ErrorMessage": "Rate exceeded"} if i in failed else {"EventId": f"id-{i}"}
        for i in range(count)
    ]
    return {"FailedEntryCount": len(failed), "Entries": entries}


def test_publishes_in_chunks_of_ten(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    events = [started(i) for i in range(23)]
    for chunk in (events[:10], events[10:20], events[20:]):
        stubber.add_response("put_events", ok(len(chunk)), {"Entries": [entry(e) for e in chunk]})

    publisher(client, sleeps).publish(events)

    assert sleeps.calls == []
    assert MAX_ENTRIES_PER_REQUEST == 10


def test_chunks_respect_the_request_size_limit(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    # Three ~100 KB events: two fit in one 256 KB request, the third needs another.
    big = [Event(DetailType.EXPORT_JOB_STARTED, {"n": i, "pad": "x" * 100_000}) for i in range(3)]
    assert 2 * big[0].size_bytes < MAX_EVENT_BYTES < 3 * big[0].size_bytes
    stubber.add_response("put_events", ok(2), {"Entries": [entry(e) for e in big[:2]]})
    stubber.add_response("put_events", ok(1), {"Entries": [entry(e) for e in big[2:]]})

    publisher(client, sleeps).publish(big)


def test_partial_failure_retries_only_the_failed_entries(
    client: Any, stubber: Stubber, sleeps: Sleeps
) -> None:
    events = [started(i) for i in range(4)]
    stubber.add_response("put_events", partial({1, 3}, 4), {"Entries": [entry(e) for e in events]})
    stubber.add_response("put_events", ok(2), {"Entries": [entry(events[1]), entry(events[3])]})

    publisher(client, sleeps).publish(events)

    assert sleeps.calls == [pytest.approx(0.1)]


def test_gives_up_after_bounded_attempts_with_backoff(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    events = [started(i) for i in range(3)]
    stubber.add_response("put_events", partial({0}, 3), {"Entries": [entry(e) for e in events]})
    for _ in range(3):
        stubber.add_response("put_events", partial({0}, 1), {"Entries": [entry(events[0])]})

    with pytest.raises(EventPublishError) as raised:
        publisher(client, sleeps, max_attempts=4).publish(events)

    error = raised.value
    assert error.code == "EVENT_PUBLISH_FAILED" and error.http_status == 503
    assert error.details == {"failed": 1, "error_code": "ThrottlingException", "bus_name": BUS}
    assert "1 of 3 events" in error.message and "ThrottlingException" in error.message
    assert sleeps.calls == [pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.4)]


def test_backoff_is_capped_and_jittered(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    event = started(0)
    for _ in range(6):
        stubber.add_response("put_events", partial({0}, 1, "InternalFailure"), {"Entries": [entry(event)]})
    pub = EventBridgePublisher(
        BUS, client, max_attempts=6, base_delay_s=1.0, max_delay_s=3.0, sleep=sleeps, jitter=lambda: 0.5
    )

    with pytest.raises(EventPublishError, match="InternalFailure"):
        pub.publish([event])

    assert sleeps.calls == [0.5, 1.0, 1.5, 1.5, 1.5]


def test_a_failed_call_is_translated_without_more_retries(
    client: Any, stubber: Stubber, sleeps: Sleeps
) -> None:
    # Throttling and 5xx on the whole call are botocore's to retry (standard mode); what still fails
    # surfaces as our typed error straight away.
    stubber.add_client_error("put_events", "InternalException", "boom", http_status_code=500)

    with pytest.raises(EventPublishError) as raised:
        publisher(client, sleeps).publish([started(0)])

    assert raised.value.details["error_code"] == "InternalException"
    assert sleeps.calls == []


def test_nothing_to_publish_makes_no_call(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    publisher(client, sleeps).publish([])


def test_an_oversized_event_is_refused_before_any_call(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    huge = Event(DetailType.BUNDLE_INDEXED, {"pad": "x" * MAX_EVENT_BYTES})

    with pytest.raises(EventTooLarge):
        publisher(client, sleeps).publish([started(0), huge])


def test_no_client_is_created_until_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("client created too early")

    monkeypatch.setattr(boto3, "client", refuse)
    pub = EventBridgePublisher(BUS)
    pub.publish([])
    with pytest.raises(AssertionError, match="too early"):
        pub.publish([started(0)])


def test_max_attempts_must_allow_one_try() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        EventBridgePublisher(BUS, max_attempts=0)
