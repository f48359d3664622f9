"""Settings come from the environment once, and a bad value names its variable."""

from __future__ import annotations

import pytest

from heimdall.errors import ConfigurationError
from heimdall.settings import HARD_MAX_BUNDLE_BYTES, MIB, get_settings


def test_defaults_describe_the_documented_limits() -> None:
    limits = get_settings().bundle_limits()
    assert limits.max_onnx_bytes == 100 * MIB
    assert limits.max_bundle_bytes == 2047 * MIB <= HARD_MAX_BUNDLE_BYTES < 2 * 1024 * MIB
    assert limits.max_samples == 10


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_MAX_ONNX_MB", "5")
    monkeypatch.setenv("HEIMDALL_STRUCTURAL_MEMORY_MB", "512")
    get_settings.cache_clear()
    limits = get_settings().bundle_limits()
    assert limits.max_onnx_bytes == 5 * MIB
    assert limits.structural_memory_bytes == 512 * MIB


@pytest.mark.parametrize(("name", "value"), [("HEIMDALL_MAX_ONNX_MB", "lots"), ("HEIMDALL_MAX_ONNX_MB", "0"),
                                             ("HEIMDALL_MAX_BUNDLE_MB", "4096")])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match=name):
        get_settings()


def test_resource_names_follow_the_stage_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_STAGE", "dev")
    monkeypatch.setenv("HEIMDALL_TABLE_NAME", "registry-from-template")
    get_settings.cache_clear()
    names = get_settings().resource_names()
    assert names.ingest_bucket == "heimdall-dev-ingest"
    assert names.artifacts_bucket == "heimdall-dev-artifacts"
    assert names.table_name == "registry-from-template"
    monkeypatch.setenv("HEIMDALL_STAGE", "Dev Stage")
    get_settings.cache_clear()
    with pytest.raises(ConfigurationError, match="HEIMDALL_STAGE"):
        get_settings()


def test_clients_follow_the_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from heimdall.adapters.aws import make_client

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LOCALSTACK_HOST", "127.0.0.1:4599")
    assert make_client("s3").meta.endpoint_url == "http://127.0.0.1:4599"  # through localstack-client
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    assert make_client("sqs").meta.endpoint_url == "http://127.0.0.1:4566"  # an explicit endpoint wins
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("LOCALSTACK_HOST")
    assert "amazonaws.com" in make_client("dynamodb").meta.endpoint_url  # real AWS
