"""Route: what the conversion job can build, per framework."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from heimdall.api.documented import documented
from heimdall.logic.capabilities import FRAMEWORKS, Capabilities, capabilities

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated


@router.get(
    "/api/v1/export/capabilities",
    summary="Export formats and their quality, per framework",
    tags=["capabilities"],
    responses=documented(200, "The format x framework matrix", Capabilities),
)
def get_capabilities(
    framework: Annotated[
        str | None, Query(max_length=64, description=f"Only this framework ({', '.join(FRAMEWORKS)}).")
    ] = None,
) -> Capabilities:
    """The formats of ``framework`` (all when absent); an unknown framework is a 422 naming the known ones."""
    return capabilities(framework)
