"""Configuration, read from the environment once and cached.

Everything configurable comes from ``HEIMDALL_*`` environment variables parsed into pydantic models;
a bad value fails fast with a message naming the variable. Tests call ``get_settings.cache_clear()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from heimdall.errors import ConfigurationError

MIB = 1024 * 1024
#: The bundle format's hard ceiling: no configuration can raise it.
HARD_MAX_BUNDLE_BYTES = 2 * 1024 * MIB - 1

#: Operator domains a bundle's model may use. Anything else could need a custom-op library that we
#: would have to load into the inference process, so it is refused.
DEFAULT_ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


class BundleLimits(BaseModel):
    """Caps that keep bundle validation bounded in memory and time, whatever the input."""

    model_config = ConfigDict(frozen=True)

    max_onnx_bytes: int = Field(default=100 * MIB, gt=0)
    max_bundle_bytes: int = Field(default=HARD_MAX_BUNDLE_BYTES, gt=0, le=HARD_MAX_BUNDLE_BYTES)
    #: Everything in the document except the base64 model (components, descriptions, extras).
    max_metadata_bytes: int = Field(default=4 * MIB, gt=0)
    max_json_depth: int = Field(default=64, gt=1)
    max_samples: int = Field(default=10, ge=1, le=10)
    max_nodes: int = Field(default=200_000, gt=0)
    max_subgraph_depth: int = Field(default=8, ge=0)
    allowed_domains: tuple[str, ...] = DEFAULT_ALLOWED_DOMAINS
    #: The structural pass runs in a child process held to these.
    structural_timeout_s: float = Field(default=120.0, gt=0)
    structural_memory_bytes: int = Field(default=1024 * MIB, gt=64 * MIB)


class ResourceNames(BaseModel):
    """Where things live: buckets, the registry table, the event bus, the Batch queue and definition."""

    model_config = ConfigDict(frozen=True)

    ingest_bucket: str
    artifacts_bucket: str
    table_name: str
    event_bus_name: str
    job_queue: str
    job_definition: str


#: The longest a presigned URL may live (12 h; S3 itself allows 7 days with long-lived keys).
MAX_PRESIGN_TTL_S = 12 * 3600
#: Lambda's synchronous response limit is 6 MB (base64 adds a third): the default stays well under it.
DEFAULT_MAX_RESPONSE_BYTES = 5 * MIB
DEFAULT_MAX_INLINE_BYTES = 4 * MIB
DEFAULT_PAIR_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class ApiLimits:
    """What the HTTP API accepts and returns inline, and how long its presigned URLs live."""

    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    presign_ttl_s: int = 900


class Settings(BaseSettings):
    """The environment as the project reads it (prefix ``HEIMDALL_``)."""

    model_config = SettingsConfigDict(env_prefix="HEIMDALL_", extra="ignore")

    stage: str = Field(default="local", pattern=r"^[a-z0-9][a-z0-9-]{0,20}$")
    #: Resource names. In AWS the template sets each variable to the resource it created; locally the
    #: defaults (derived from the stage) are what the local stack creates. One naming rule, one place.
    ingest_bucket: str | None = None
    artifacts_bucket: str | None = None
    table_name: str | None = None
    event_bus_name: str | None = None
    job_queue: str | None = None
    job_definition: str | None = None
    max_onnx_mb: int = Field(default=100, gt=0, le=HARD_MAX_BUNDLE_BYTES // MIB)
    max_bundle_mb: int = Field(default=HARD_MAX_BUNDLE_BYTES // MIB, gt=0, le=HARD_MAX_BUNDLE_BYTES // MIB)
    max_metadata_mb: int = Field(default=4, gt=0, le=1024)
    max_nodes: int = Field(default=200_000, gt=0)
    max_subgraph_depth: int = Field(default=8, ge=0)
    structural_timeout_s: float = Field(default=120.0, gt=0)
    structural_memory_mb: int = Field(default=1024, gt=64)
    #: Owner of records made from direct S3 drops (no caller identity). The local stack sets it to
    #: the local user so that a developer's own drops show up in ``heimdall list``.
    drop_owner: str = Field(default="system", min_length=1, max_length=256)
    #: Largest bundle the API accepts in a request body (larger ones use a presigned upload). Lambda
    #: takes at most 6 MB of request, and API Gateway base64-encodes binary bodies (4/3): 4 MiB is all
    #: that fits.
    api_max_inline_bytes: int = Field(default=DEFAULT_MAX_INLINE_BYTES, gt=0, le=DEFAULT_MAX_INLINE_BYTES)
    #: Largest exported bundle returned in the response body (larger: a redirect to S3).
    api_max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, gt=0, le=int(5.5 * MIB))
    presign_ttl_s: int = Field(default=900, ge=1, le=MAX_PRESIGN_TTL_S)
    #: Whether API calls need the ``heimdall/read`` / ``heimdall/write`` scopes (false: any caller
    #: the authorizer let through may do everything).
    api_require_scopes: bool = True
    #: How long a checkpoint or manifest waits for the other half of its pair before the sweep rejects
    #: it (``INCOMPLETE_UPLOAD``): a day by default, at most 30.
    pair_timeout_s: int = Field(default=DEFAULT_PAIR_TIMEOUT_S, ge=1, le=30 * 86400)

    def resource_names(self) -> ResourceNames:
        """The names of the project's AWS resources for this stage."""
        prefix = f"heimdall-{self.stage}"
        return ResourceNames(
            ingest_bucket=self.ingest_bucket or f"{prefix}-ingest",
            artifacts_bucket=self.artifacts_bucket or f"{prefix}-artifacts",
            table_name=self.table_name or f"{prefix}-registry",
            event_bus_name=self.event_bus_name or f"{prefix}-events",
            job_queue=self.job_queue or f"{prefix}-conversion",
            job_definition=self.job_definition or f"{prefix}-conversion",
        )

    def bundle_limits(self) -> BundleLimits:
        """The bundle caps these settings describe."""
        return BundleLimits(
            max_onnx_bytes=self.max_onnx_mb * MIB,
            max_bundle_bytes=min(self.max_bundle_mb * MIB, HARD_MAX_BUNDLE_BYTES),
            max_metadata_bytes=self.max_metadata_mb * MIB,
            max_nodes=self.max_nodes,
            max_subgraph_depth=self.max_subgraph_depth,
            structural_timeout_s=self.structural_timeout_s,
            structural_memory_bytes=self.structural_memory_mb * MIB,
        )

    def api_limits(self) -> ApiLimits:
        """The HTTP API's limits these settings describe."""
        return ApiLimits(
            max_inline_bytes=self.api_max_inline_bytes,
            max_response_bytes=self.api_max_response_bytes,
            presign_ttl_s=self.presign_ttl_s,
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Parse the environment once; a bad variable raises ``ConfigurationError`` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"HEIMDALL_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None
