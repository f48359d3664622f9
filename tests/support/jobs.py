"""A job submitter for tests: it starts nothing and remembers what it was asked."""

from __future__ import annotations

import threading

from heimdall.contracts.jobs import JobSpec
from heimdall.errors import StorageError


class RecordingRunner:
    """A JobSubmitter that remembers what it was asked (and can be made to fail a cancel).

    Submissions and cancels may come from several threads at once (the concurrency tests).
    """

    def __init__(self) -> None:
        self.specs: list[JobSpec] = []
        self.cancelled: list[tuple[str, str]] = []
        self.cancel_fails = False
        self._lock = threading.Lock()

    def submit(self, spec: JobSpec) -> str:
        with self._lock:
            self.specs.append(spec)
            return f"batch-{len(self.specs)}"

    def cancel(self, runner_job_id: str, reason: str) -> None:
        if self.cancel_fails:
            raise StorageError("Batch is down")
        with self._lock:
            self.cancelled.append((runner_job_id, reason))
