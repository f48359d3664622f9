"""An in-memory event sink: the fake of :class:`~heimdall.events.EventSink` that unit tests, the demo and
benchmarks use. It checks every event as the bus path would (size, source, detail) and keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

from heimdall.events import (
    EVENT_SOURCE,
    DetailType,
    Event,
    EventDetail,
    EventPublishError,
    ensure_fits,
    parse_detail,
)

__all__ = ["InMemoryEventSink"]


class InMemoryEventSink:
    """A fake sink for unit tests: validates and records what is published.

    ``fail_next(n)`` makes the next ``n`` calls to :meth:`publish` raise ``EventPublishError`` without
    recording anything, as the adapter does when the bus keeps refusing.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._failures_left = 0

    def fail_next(self, times: int = 1) -> None:
        """Make the next ``times`` publish calls fail."""
        self._failures_left = times

    def publish(self, events: Sequence[Event]) -> None:
        """Record ``events`` after checking each one's size and detail as the real bus path would."""
        if self._failures_left > 0:
            self._failures_left -= 1
            raise EventPublishError(
                f"{len(events)} events could not be published (injected)",
                failed=len(events),
                error_code="InternalFailure",
                bus_name="in-memory",
            )
        for event in events:
            ensure_fits(event)
            if event.source != EVENT_SOURCE:
                raise ValueError(f"event source must be {EVENT_SOURCE!r}, got {event.source!r}")
            parse_detail(event.detail_type, event.detail)
        self.events.extend(events)

    @property
    def detail_types(self) -> list[DetailType]:
        """The detail type of every recorded event, in order."""
        return [event.detail_type for event in self.events]

    def details(self, detail_type: DetailType) -> list[EventDetail]:
        """The recorded details of one type, parsed back into their model."""
        return [parse_detail(e.detail_type, e.detail) for e in self.events if e.detail_type == detail_type]
