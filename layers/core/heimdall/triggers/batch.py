"""AWS Batch "Batch Job State Change" events, as EventBridge delivers them, parsed into a model.

Powertools has no parser model for these. :class:`BatchJobDetail` reads only what the job-state use case
(:mod:`heimdall.logic.job_state`) acts on, and reads it leniently: the rule in the template already
filters on ``source``, ``detail-type`` and the job queue, so an odd field reads as absent rather than
failing the event, and an event without a ``detail`` object is simply not a Batch job's
(:func:`parse_batch_state_change` returns None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _mapping(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else {}


def _text_or_none(value: Any) -> str | None:
    return str(value) if value else None


def _int_or_none(value: Any) -> Any:
    return value if isinstance(value, int) else None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class BatchContainerModel(_Model):
    """``detail.container``: only the exit code of the last attempt is read."""

    exit_code: Annotated[int | None, BeforeValidator(_int_or_none)] = Field(None, alias="exitCode")


class BatchJobDetail(_Model):
    """The ``detail`` of a "Batch Job State Change": which job, its new status, and why it ended."""

    #: Batch's job id (not Heimdall's), when the event names it.
    job_id: Annotated[str | None, BeforeValidator(_text_or_none)] = Field(None, alias="jobId")
    job_name: Annotated[str, BeforeValidator(str)] = Field("", alias="jobName")
    #: ``SUBMITTED`` … ``RUNNING``, ``SUCCEEDED``, ``FAILED``, verbatim.
    status: Annotated[str, BeforeValidator(str)] = ""
    status_reason: Annotated[str | None, BeforeValidator(_text_or_none)] = Field(None, alias="statusReason")
    #: The job's parameters; Heimdall submits its job id as ``job_id``.
    parameters: Annotated[dict[str, Any], BeforeValidator(_mapping)] = Field(default_factory=dict)
    container: Annotated[BatchContainerModel, BeforeValidator(_mapping)] = Field(
        default_factory=BatchContainerModel
    )


def parse_batch_state_change(event: object) -> BatchJobDetail | None:
    """The event's detail, or None when it has no ``detail`` object (no Batch job state change)."""
    detail = event.get("detail") if isinstance(event, Mapping) else None
    if not isinstance(detail, Mapping):
        return None
    return BatchJobDetail.model_validate(dict(detail))
