"""Publishing Heimdall events on an EventBridge bus (or an emulator: boto3 honours ``AWS_ENDPOINT_URL``).

PutEvents can fail in two ways, and both are bounded:

- the whole call fails (throttling, 5xx, network): botocore's ``standard`` retry mode retries it a few
  times, then the error surfaces as :class:`~heimdall.events.EventPublishError`;
- the call succeeds but some entries fail (``FailedEntryCount`` > 0, each failed entry with an
  ``ErrorCode``): only those entries are sent again, up to ``max_attempts`` rounds with exponential
  backoff and full jitter; whatever still fails raises ``EventPublishError`` naming how many and the
  first error code.

Entries go out in requests of at most 10 entries and 256 KB, EventBridge's limits. Delivery is at least
once: a caller that retries after an error may publish an event twice, which is why every detail has
an ``idempotency_key``. No client is created at import time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from heimdall.adapters.aws import make_client
from heimdall.events import MAX_EVENT_BYTES, Event, EventPublishError, ensure_fits

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

logger = logging.getLogger(__name__)

#: EventBridge's limit on entries per PutEvents request.
MAX_ENTRIES_PER_REQUEST = 10


@dataclass(frozen=True)
class _FailedEntry:
    event: Event
    error_code: str
    error_message: str


class EventBridgePublisher:
    """Puts :class:`~heimdall.events.Event` objects on one bus; implements ``EventSink``."""

    def __init__(
        self,
        bus_name: str,
        client: EventBridgeClient | None = None,
        *,
        max_attempts: int = 4,
        base_delay_s: float = 0.1,
        max_delay_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """``max_attempts`` bounds the rounds for failed entries (the first try included); the wait
        before round ``n + 1`` is ``jitter() * min(max_delay_s, base_delay_s * 2**(n - 1))``.
        ``sleep`` and ``jitter`` are injectable so tests run without waiting."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.bus_name = bus_name
        self.max_attempts = max_attempts
        self._client = client
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep
        self._jitter = jitter

    @property
    def client(self) -> EventBridgeClient:
        if self._client is None:
            self._client = make_client("events")
        return self._client

    def publish(self, events: Sequence[Event]) -> None:
        """Put every event on the bus, retrying failed entries; raises ``EventPublishError``."""
        for event in events:
            ensure_fits(event)
        pending = list(events)
        for attempt in range(1, self.max_attempts + 1):
            failed = [failure for chunk in _chunks(pending) for failure in self._put(chunk)]
            if not failed:
                return
            if attempt == self.max_attempts:
                break
            delay = self._backoff(attempt)
            logger.warning(
                "%d of %d events refused by bus %s (first: %s), retrying in %.2fs (attempt %d of %d)",
                len(failed),
                len(pending),
                self.bus_name,
                failed[0].error_code,
                delay,
                attempt + 1,
                self.max_attempts,
            )
            self._sleep(delay)
            pending = [failure.event for failure in failed]
        first = failed[0]
        raise EventPublishError(
            f"{len(failed)} of {len(events)} events could not be published to bus {self.bus_name} "
            f"after {self.max_attempts} attempts; first error: {first.error_code}: {first.error_message}",
            failed=len(failed),
            error_code=first.error_code,
            bus_name=self.bus_name,
        )

    def _put(self, chunk: Sequence[Event]) -> list[_FailedEntry]:
        """One PutEvents request; returns the entries it refused."""
        entries = [self._entry(event) for event in chunk]
        try:
            response = self.client.put_events(Entries=entries)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "")) or "ClientError"
            raise EventPublishError(
                f"PutEvents on bus {self.bus_name} failed: {code}: {exc}",
                failed=len(chunk),
                error_code=code,
                bus_name=self.bus_name,
            ) from None
        except BotoCoreError as exc:
            raise EventPublishError(
                f"PutEvents on bus {self.bus_name} failed: {exc}",
                failed=len(chunk),
                error_code=type(exc).__name__,
                bus_name=self.bus_name,
            ) from None
        if not response.get("FailedEntryCount"):
            return []
        # Results come back in request order, one per entry; a failed one has ErrorCode and no EventId.
        return [
            _FailedEntry(event, result.get("ErrorCode", "Unknown"), result.get("ErrorMessage", ""))
            for event, result in zip(chunk, response["Entries"], strict=True)
            if "ErrorCode" in result
        ]

    def _entry(self, event: Event) -> PutEventsRequestEntryTypeDef:
        entry: PutEventsRequestEntryTypeDef = {
            "Source": event.source,
            "DetailType": event.detail_type.value,
            "Detail": event.detail_json(),
            "EventBusName": self.bus_name,
        }
        if event.time is not None:
            entry["Time"] = event.time
        return entry

    def _backoff(self, attempt: int) -> float:
        """Full jitter: a random wait up to the exponential cap, so that retrying callers spread out."""
        return self._jitter() * min(self._max_delay_s, self._base_delay_s * 2.0 ** (attempt - 1))


def _chunks(events: Sequence[Event]) -> Iterator[list[Event]]:
    """Consecutive groups of at most 10 events and 256 KB (as EventBridge counts entry sizes)."""
    chunk: list[Event] = []
    size = 0
    for event in events:
        event_size = event.size_bytes
        if chunk and (len(chunk) == MAX_ENTRIES_PER_REQUEST or size + event_size > MAX_EVENT_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(event)
        size += event_size
    if chunk:
        yield chunk
