"""The request that creates a deployment (``POST /api/v1/deployments``): one model per deployment type,
each with the options that type takes, and the limits on those options (DESIGN §7).

:class:`CreateDeploymentRequest` is the body as the API reads it; what it holds, one of
:class:`DownloadRequest`, :class:`EndpointRequest`, :class:`EdgeRequest` and :class:`ContainerRequest`
told apart by ``type``, is what :func:`heimdall.logic.deployments.create_deployment` takes, as is.
Each option and its limit is declared here once, so that validation and the OpenAPI document (which
shows every type's options) cannot disagree. What the options need of the model or the export job
deployed (a build at that precision, normalisation stats, an image reference the package builder
accepts) only the use case can check.

The original Heimdall's names (the seeds) are aliases: ``deployment_type`` of ``type`` and
``deployment_config`` of ``options``. An alias that disagrees with the current name sent beside it is
:class:`~heimdall.errors.RequestInvalid` naming the alias, raised as is from inside pydantic; a refused
option sent under the seed name is named as sent (``deployment_config.tier``).

A request with several faults names the same one first as it always has: its ``type``, then its own
fields and its source, then its options (:meth:`CreateDeploymentRequest._by_type`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    RootModel,
    model_validator,
)

from heimdall.domain.deployments import RATE_LIMITS, DeploymentType, Tier
from heimdall.domain.records import Name, RecordId
from heimdall.errors import RequestInvalid

__all__ = [
    "MAX_IMAGE_REFERENCE",
    "ContainerOptions",
    "ContainerRequest",
    "CreateDeploymentRequest",
    "DeploymentOptions",
    "DeploymentRequest",
    "DownloadFile",
    "DownloadOptions",
    "DownloadRequest",
    "EdgeOptions",
    "EdgePrecision",
    "EdgeRequest",
    "EndpointOptions",
    "EndpointRequest",
    "ModelPrecision",
    "option_field_as_sent",
]

#: What a ``download`` links to: the export package, the bundle, or the ONNX model.
DownloadFile = Literal["package", "bundle", "onnx"]
#: The models a platform endpoint can serve: FP32 (the model itself) or an export's FP16 / INT8 build.
ModelPrecision = Literal["fp32", "fp16", "int8"]
#: The model an edge package ships: ``auto`` takes INT8 when it was built, else FP16, else FP32.
EdgePrecision = Literal["auto", "int8", "fp16", "fp32"]
#: The longest Triton image reference a ``container`` takes.
MAX_IMAGE_REFERENCE = 256

_SEED_TYPE = "deployment_type"
_SEED_OPTIONS = "deployment_config"


# --- options ---------------------------------------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DownloadOptions(_Options):
    """``download``: what the link fetches: the export package, the bundle, or the ONNX model."""

    file: DownloadFile = Field(
        default="package",
        description="package: the export job's package; bundle: the job's bundle, else the model's "
        "stored one; onnx: the model's ONNX file (with its sha256). An imported model without an export "
        "job has no package.",
    )


class EndpointOptions(_Options):
    """``platform_endpoint``: the key's tier, whether inputs get the bundle's normalisation, and which
    model it runs: the FP32 ONNX model (the default) or the FP16 / INT8 model its export job built."""

    tier: Tier = Field(
        default=Tier.FREE,
        description="Requests per minute per API key: "
        + ", ".join(f"{tier} {limit}" for tier, limit in RATE_LIMITS.items())
        + ".",
    )
    apply_normalization: bool = Field(
        default=False,
        description="Normalise inputs with the bundle's normalization_stats (the model needs complete ones).",
    )
    precision: ModelPrecision = Field(
        default="fp32", description="fp16 and int8 serve the model the export job built at that precision."
    )


class EdgeOptions(_Options):
    """``edge_package``: the model precision shipped (``auto``: INT8, else FP16, else FP32)."""

    precision: EdgePrecision = Field(
        default="auto", description="auto: the best the export built; another: that build, which must exist."
    )


class ContainerOptions(_Options):
    """``container``: the Triton server image the Dockerfile builds on (default: the pinned one)."""

    triton_image: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IMAGE_REFERENCE,
        description="A pinned image reference (a tag or a digest) of a Triton Inference Server image.",
    )


DeploymentOptions: TypeAlias = DownloadOptions | EndpointOptions | EdgeOptions | ContainerOptions


# --- requests --------------------------------------------------------------------------------------


def _type_or_seed_type(schema: dict[str, Any]) -> None:
    """``type`` or its seed alias ``deployment_type``: one of them is required, not ``type`` itself."""
    schema["required"] = [name for name in schema.get("required", []) if name != "type"]
    schema["anyOf"] = [{"required": ["type"]}, {"required": [_SEED_TYPE]}]


class _Request(BaseModel):
    """What every type's request has. Each type adds its ``options`` (and their seed name) after these:
    the order of the fields is the order in which their faults are reported."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_type_or_seed_type)

    type: DeploymentType
    name: Name
    model_id: RecordId | None = Field(default=None, description="Deploy this model.")
    export_job_id: RecordId | None = Field(
        default=None, description="Deploy what this export job produced (exactly one of the two)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.model_id is None) == (self.export_job_id is None):
            raise ValueError("give exactly one of model_id and export_job_id")
        return self


_SEED_TYPE_DOC = "The original Heimdall's name of type (with type too, they must agree)."
_SEED_OPTIONS_DOC = "The original Heimdall's name of options (with options too, they must agree)."


class DownloadRequest(_Request):
    """A presigned link to a stored file: the export package, the bundle or the ONNX model."""

    type: Literal[DeploymentType.DOWNLOAD]
    options: DownloadOptions = Field(default_factory=DownloadOptions)
    deployment_type: Literal[DeploymentType.DOWNLOAD] | None = Field(default=None, description=_SEED_TYPE_DOC)
    deployment_config: DownloadOptions | None = Field(default=None, description=_SEED_OPTIONS_DOC)


class EndpointRequest(_Request):
    """The model served by ``POST /v1/infer/{deployment_id}``, with an API key shown once."""

    type: Literal[DeploymentType.PLATFORM_ENDPOINT]
    options: EndpointOptions = Field(default_factory=EndpointOptions)
    deployment_type: Literal[DeploymentType.PLATFORM_ENDPOINT] | None = Field(
        default=None, description=_SEED_TYPE_DOC
    )
    deployment_config: EndpointOptions | None = Field(default=None, description=_SEED_OPTIONS_DOC)


class EdgeRequest(_Request):
    """A zip for mobile and edge devices: one ONNX model, Kotlin and Swift wrappers (an export's package)."""

    type: Literal[DeploymentType.EDGE_PACKAGE]
    options: EdgeOptions = Field(default_factory=EdgeOptions)
    deployment_type: Literal[DeploymentType.EDGE_PACKAGE] | None = Field(
        default=None, description=_SEED_TYPE_DOC
    )
    deployment_config: EdgeOptions | None = Field(default=None, description=_SEED_OPTIONS_DOC)


class ContainerRequest(_Request):
    """A zip with a Dockerfile on a Triton server image and the Triton repository (an export's package)."""

    type: Literal[DeploymentType.CONTAINER]
    options: ContainerOptions = Field(default_factory=ContainerOptions)
    deployment_type: Literal[DeploymentType.CONTAINER] | None = Field(
        default=None, description=_SEED_TYPE_DOC
    )
    deployment_config: ContainerOptions | None = Field(default=None, description=_SEED_OPTIONS_DOC)


DeploymentRequest: TypeAlias = DownloadRequest | EndpointRequest | EdgeRequest | ContainerRequest

_REQUESTS: dict[DeploymentType, type[DeploymentRequest]] = {
    DeploymentType.DOWNLOAD: DownloadRequest,
    DeploymentType.PLATFORM_ENDPOINT: EndpointRequest,
    DeploymentType.EDGE_PACKAGE: EdgeRequest,
    DeploymentType.CONTAINER: ContainerRequest,
}


class _TypeOf(BaseModel):
    """Only the ``type`` of a request: a missing or unknown one is refused naming ``type``."""

    type: DeploymentType


class CreateDeploymentRequest(RootModel[Annotated[DeploymentRequest, Field(discriminator="type")]]):
    """A deployment of a model (``model_id``) or of an export job (``export_job_id``): exactly one.
    ``type`` says what it delivers, and which ``options`` it takes."""

    @model_validator(mode="wrap")
    @classmethod
    def _by_type(
        cls, data: Any, handler: ModelWrapValidatorHandler[CreateDeploymentRequest]
    ) -> CreateDeploymentRequest:
        """The request of its ``type``, its faults named in order: the seed names, ``type``, the
        request's own fields and its source, then its options (under the name they were sent as)."""
        if not isinstance(data, dict):
            return handler(data)  # refused: not an object
        data = _seed_names(data)
        model = _REQUESTS[_TypeOf.model_validate(data).type]
        # The request's own fields and its source first: the options only as objects, not what they hold.
        blank: dict[str, Any] = {
            key: {} for key in ("options", _SEED_OPTIONS) if isinstance(data.get(key), dict)
        }
        model.model_validate({**data, **blank})
        if _SEED_OPTIONS in blank:  # then the options, named as sent: deployment_config.tier
            model.model_validate({**data, "options": {}})
        return handler(model.model_validate(data))


def _seed_names(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the seed names' values under the current names too (both stay: a refused option
    can then be named as it was sent)."""
    for alias, name in ((_SEED_TYPE, "type"), (_SEED_OPTIONS, "options")):
        if alias not in data:
            continue
        if name in data and data[name] != data[alias]:
            raise RequestInvalid(
                f"{alias} and {name} name the same thing and differ; send one of them", field=alias
            )
        data = {**data, name: data[alias]}
    return data


def option_field_as_sent(field: str | None, request: DeploymentRequest) -> str | None:
    """A refused option's field (``options.tier``) as the caller named it: ``deployment_config.tier``
    when the options came under the seed name."""
    if request.deployment_config is not None and field is not None and field.split(".")[0] == "options":
        return _SEED_OPTIONS + field.removeprefix("options")
    return field
