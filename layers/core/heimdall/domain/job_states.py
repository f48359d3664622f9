"""The export-job state machine (DESIGN §6), and what a transition may write along with the status.

``PENDING → SUBMITTED → RUNNING → SUCCEEDED | FAILED | CANCELLED``, as :data:`ALLOWED` lists it;
terminal states (:data:`TERMINAL`) are absorbing. :func:`plan_transition` says what a requested change
means, and it distinguishes two kinds of "no":

* **stale, ignore** — the event is a duplicate (target = current), late (the target lies *behind* the
  current state, e.g. ``RUNNING`` after ``SUCCEEDED``, ``SUBMITTED`` after ``RUNNING``), or the job is
  already terminal. Duplicated and out-of-order deliveries are normal (Batch and S3 events both), so
  these are not errors: the repository returns ``None`` and writes nothing.
* **invalid** — the target lies *ahead* of the current state along a path the machine does not have
  (``PENDING → RUNNING``, ``PENDING → SUCCEEDED``): the registry has not yet recorded a step that must
  come first (typically ``SUBMITTED``, whose write is still in flight). This raises
  :class:`~heimdall.errors.InvalidTransition`, so the caller fails and its event is delivered again, by
  which time the missing step is usually recorded.

Both registries apply these rules: the in-memory fake directly, DynamoDB as the condition of its write
(:func:`sources_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import TypeAdapter

from heimdall.domain.records import ExportJob, JobStatus
from heimdall.errors import InvalidTransition

__all__ = [
    "ALLOWED",
    "TERMINAL",
    "TransitionPlan",
    "dump_job_field_json",
    "plan_transition",
    "sources_of",
    "validate_job_updates",
]

TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ALLOWED: Mapping[JobStatus, frozenset[JobStatus]] = MappingProxyType(
    {
        JobStatus.PENDING: frozenset({JobStatus.SUBMITTED, JobStatus.FAILED, JobStatus.CANCELLED}),
        JobStatus.SUBMITTED: frozenset(
            {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
        ),
        JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    }
)
#: How far along a state is; a target of lower rank than the current state is a late event.
_RANK: Mapping[JobStatus, int] = {
    JobStatus.PENDING: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
    **{status: 3 for status in TERMINAL},
}

TransitionPlan = Literal["apply", "ignore"]


def plan_transition(current: JobStatus, target: JobStatus) -> TransitionPlan:
    """What moving a job from ``current`` to ``target`` means.

    ``"apply"``: an edge of the machine. ``"ignore"``: stale — a duplicate, a late event, or a job that
    is already terminal (terminal states are absorbing). Raises :class:`InvalidTransition` for a target
    ahead of ``current`` along no edge (``PENDING → RUNNING``): a step is missing, retry later.
    """
    if target in ALLOWED.get(current, frozenset()):
        return "apply"
    if current in TERMINAL or target == current or _RANK[target] < _RANK[current]:
        return "ignore"
    raise InvalidTransition(
        f"an export job cannot go from {current} to {target}: a step is missing, retry later",
        field="status",
        current=str(current),
    )


@cache
def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The states from which ``target`` may be reached (the condition of a transition's write)."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)


#: Fields a transition may not set: identity, keys of the listings, and what the registry manages.
_PROTECTED_JOB_FIELDS = frozenset(
    {"job_id", "owner", "model_name", "version", "status", "created_at", "updated_at", "is_default"}
)


@cache
def _job_field_adapter(name: str) -> TypeAdapter[Any]:
    info = ExportJob.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        # The field's type with its constraints (max_length, ge, ...), as the model validates it.
        annotation = Annotated[(annotation, *info.metadata)]
    return TypeAdapter(annotation)


def validate_job_updates(updates: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the fields a transition sets along with the status, returning them parsed.

    Unknown or protected fields raise ``ValueError`` (a programming error of the caller).
    """
    parsed: dict[str, Any] = {}
    for name, value in updates.items():
        if name not in ExportJob.model_fields or name in _PROTECTED_JOB_FIELDS:
            raise ValueError(f"a transition cannot set {name!r}")
        parsed[name] = _job_field_adapter(name).validate_python(value)
    return parsed


def dump_job_field_json(name: str, value: Any) -> bytes:
    """A validated value of the job field ``name`` as JSON, exactly as the record would serialise it."""
    return _job_field_adapter(name).dump_json(value)
