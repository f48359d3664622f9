"""Half pairs on the local stack, as a user sees them: a manifest dropped alone is AWAITING in
``heimdall uploads list`` and ``GET /api/v1/uploads``, the stack's sweep rejects it after the (here
8-second) timeout with ``Checkpoint Rejected`` ``INCOMPLETE_UPLOAD`` and a quarantine copy, and a pair
completed in time starts its job and shows PAIRED."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.e2e import ApiStack, Cli, wait_for

from heimdall.local.demo import MANIFEST, Subscriber
from heimdall.local.stack import LocalStack

TIMEOUT_S = 8


@pytest.fixture(scope="module", name="api")
def quick_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """A local stack whose half pairs wait 8 s, swept every half second."""
    root = tmp_path_factory.mktemp("half-pairs-e2e")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEIMDALL_PAIR_TIMEOUT_S", str(TIMEOUT_S))
        stack = LocalStack(
            port=0, api_port=0, workdir=root / ".heimdall-local", log_level="ERROR", sweep_interval_s=0.5
        )
        stack.start()
        try:
            yield ApiStack(stack=stack, root=root, subscriber=Subscriber(stack))
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def cli(api: ApiStack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(api=api, cwd=tmp_path_factory.mktemp("cli-cwd"))


def drop(api: ApiStack, key: str, body: bytes) -> None:
    api.s3().put_object(Bucket=api.names.ingest_bucket, Key=key, Body=body)


def upload_of(api: ApiStack, key: str, status: str) -> dict[str, Any] | None:
    """The caller's upload whose first half is ``key``, once it has ``status``."""
    with api.client() as http:
        items = http.get("/api/v1/uploads", params={"status": status.lower()}).json()["items"]
    return next((u for u in items if u["uri"].endswith("/" + key)), None)


def manifest_for(model_name: str) -> bytes:
    return json.dumps({**MANIFEST, "model_name": model_name}).encode()


def test_a_lone_manifest_is_listed_awaiting_then_rejected_after_the_timeout(api: ApiStack, cli: Cli) -> None:
    key = "checkpoints/lone-net/1.0.0/heimdall.json"
    drop(api, key, manifest_for("lone-net"))
    awaiting = wait_for("the manifest listed AWAITING", lambda: upload_of(api, key, "AWAITING"), 30)
    assert (awaiting["half"], awaiting["missing"]) == ("manifest", "checkpoint")
    listed = cli.json("uploads", "list", "--status", "awaiting")["items"]
    assert awaiting["upload_id"] in [u["upload_id"] for u in listed]

    def announced_rejection() -> dict[str, Any] | None:
        found = upload_of(api, key, "REJECTED")
        return found if found and found["quarantine_uri"] else None  # REJECTED comes first, then the copy

    rejected = wait_for("the sweep to reject it", announced_rejection, TIMEOUT_S + 30, every_s=0.5)
    assert rejected["error_code"] == "INCOMPLETE_UPLOAD" and rejected["quarantine_uri"]
    table = cli.run("uploads", "list", "--status", "rejected").stdout
    assert rejected["upload_id"] in table and "INCOMPLETE_UPLOAD" in table
    shown = cli.json("uploads", "get", rejected["upload_id"])
    assert shown["status"] == "REJECTED" and "checkpoint" in shown["reason"]

    def announced() -> dict[str, Any] | None:
        api.subscriber.poll()
        return api.subscriber.first("Checkpoint Rejected", key=key)

    detail = wait_for("Checkpoint Rejected on the bus", announced, 30)
    assert detail["code"] == "INCOMPLETE_UPLOAD"
    kept = api.artifact(detail["quarantine_key"])
    assert kept == manifest_for("lone-net")
    assert rejected["quarantine_uri"].endswith(detail["quarantine_key"])


def test_a_pair_completed_in_time_starts_its_job_and_is_never_rejected(
    api: ApiStack, cli: Cli, tmp_path: Path
) -> None:
    prefix = "checkpoints/paired-net/1.0.0/"
    drop(api, prefix + "heimdall.json", manifest_for("paired-net"))
    awaiting = wait_for(
        "the manifest listed AWAITING", lambda: upload_of(api, prefix + "heimdall.json", "AWAITING"), 30
    )
    drop(api, prefix + "model.safetensors", b"not really weights")
    paired = wait_for("the pair", lambda: upload_of(api, prefix + "heimdall.json", "PAIRED"), 30)
    assert paired["upload_id"] == awaiting["upload_id"] and paired["job_id"]
    shown = cli.json("uploads", "get", paired["upload_id"])
    assert shown["status"] == "PAIRED" and shown["paired_uri"].endswith(prefix + "model.safetensors")
    job = cli.json("jobs", "get", paired["job_id"])
    assert job["model_name"] == "paired-net"
    # Past the timeout, several sweeps later: still paired, nothing rejected.
    time.sleep(TIMEOUT_S + 2)
    assert api.stack.handled["sweep"] > TIMEOUT_S  # it ran all along
    assert cli.json("uploads", "get", paired["upload_id"])["status"] == "PAIRED"
    api.subscriber.poll()
    assert api.subscriber.first("Checkpoint Rejected", key=prefix + "heimdall.json") is None
