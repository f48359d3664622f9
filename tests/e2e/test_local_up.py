"""`heimdall local up` in the foreground, used by a program that is not Heimdall: plain boto3 only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import save_file

from heimdall_batch.architectures import resolve


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def local_up(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "HEIMDALL_STAGE"}
    process = subprocess.Popen(
        [sys.executable, "-m", "heimdall.cli", "local", "up", "--emulator-port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    time.sleep(2)  # resources are created right after the server starts
    yield f"http://127.0.0.1:{port}"
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_a_plain_boto3_client_drives_the_pipeline(local_up: str, tmp_path: Path) -> None:
    kw = {
        "endpoint_url": local_up,
        "region_name": "us-east-1",
        "aws_access_key_id": "x",
        "aws_secret_access_key": "x",
    }
    s3, sqs, events = boto3.client("s3", **kw), boto3.client("sqs", **kw), boto3.client("events", **kw)
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
    got: list[dict] = []
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
