"""`heimdall local up` in the foreground, used by programs that are not Heimdall: plain boto3 on the
emulator, and a plain HTTP client on the API with the token `local up` prints."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import torch
from safetensors.torch import save_file

from heimdall_batch.architectures import resolve


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalUp:
    endpoint: str
    api_url: str
    token: str
    output: list[str] = field(default_factory=list)


@pytest.fixture
def local_up(tmp_path: Path) -> Iterator[LocalUp]:
    port, api_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "HEIMDALL_API_TOKEN")) and k != "HEIMDALL_STAGE"
    }
    command = ["local", "up", "--emulator-port", str(port), "--api-port", str(api_port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "heimdall.cli", *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)

    threading.Thread(target=read, daemon=True).start()
    # The token line comes last, once the emulator, the resources, the dispatcher and the API are up.
    deadline = time.monotonic() + 90
    token = None
    while time.monotonic() < deadline and token is None and process.poll() is None:
        token = next(
            (line.split(":", 1)[1].strip() for line in output if line.startswith("API token:")), None
        )
        time.sleep(0.2)
    assert token, "`heimdall local up` printed no API token:\n" + "".join(output)
    yield LocalUp(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{api_port}", token, output)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_a_plain_boto3_client_drives_the_pipeline(local_up: LocalUp, tmp_path: Path) -> None:
    session = boto3.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    url = local_up.endpoint
    s3 = session.client("s3", endpoint_url=url)
    sqs = session.client("sqs", endpoint_url=url)
    events = session.client("events", endpoint_url=url)
    queue = sqs.create_queue(QueueName="my-consumer")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="mine",
        EventBusName="heimdall-local-events",
        EventPattern=json.dumps(
            {"source": ["heimdall"], "detail-type": ["Bundle Indexed", "Export Job Failed"]}
        ),
    )
    events.put_targets(Rule="mine", EventBusName="heimdall-local-events", Targets=[{"Id": "1", "Arn": arn}])
    torch.manual_seed(1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resolve("localization_net")().state_dict().items()}, str(path))
    manifest = {
        "model_name": "partner-net",
        "version": "3",
        "architecture": "localization_net",
        "input_shape": [1, 3, 128, 32],
        "output_names": ["positions", "uncertainties"],
    }
    s3.put_object(
        Bucket="heimdall-local-ingest",
        Key="checkpoints/partner-net/3/heimdall.json",
        Body=json.dumps(manifest).encode(),
    )
    s3.put_object(
        Bucket="heimdall-local-ingest", Key="checkpoints/partner-net/3/w.safetensors", Body=path.read_bytes()
    )
    deadline = time.monotonic() + 240
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not got:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            got.append(json.loads(message["Body"]))
    assert got, "no event reached the subscriber"
    assert got[0]["detail-type"] == "Bundle Indexed", got[0]
    detail = got[0]["detail"]
    assert detail["model_name"] == "partner-net" and detail["imported"] is False
    onnx = s3.get_object(Bucket=detail["bucket"], Key=detail["onnx_key"])["Body"].read()
    import hashlib

    assert hashlib.sha256(onnx).hexdigest() == detail["onnx_sha256"]

    # The same model through the HTTP API, with the printed token: a developer's own drop is theirs.
    with httpx.Client(base_url=local_up.api_url, timeout=30) as api:
        listed = api.get("/api/v1/models", headers={"Authorization": f"Bearer {local_up.token}"})
        assert listed.status_code == 200, listed.text
        assert detail["model_id"] in [m["model_id"] for m in listed.json()["items"]]
        assert api.get("/api/v1/models").status_code == 401


def test_the_api_is_served_with_the_printed_token(local_up: LocalUp, tmp_path: Path) -> None:
    token_file = tmp_path / ".heimdall-local" / "api-token"
    assert token_file.read_text().strip() == local_up.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert any(line.startswith(f"API: {local_up.api_url}") for line in local_up.output)
    with httpx.Client(base_url=local_up.api_url, timeout=30) as api:
        document = api.get("/api/v1/openapi.json")  # public, as in AWS
        assert document.status_code == 200 and document.json()["openapi"].startswith("3.")
        refused = api.get("/api/v1/models", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
        listed = api.get("/api/v1/models", headers={"Authorization": f"Bearer {local_up.token}"})
        assert listed.status_code == 200 and listed.json()["items"] == []
