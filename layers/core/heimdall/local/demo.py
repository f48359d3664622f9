"""``heimdall demo``: the whole product on the local stack, checked step by step.

A reference ``localization_net`` checkpoint and manifest are dropped into the ingest bucket with plain
boto3; the pipeline is followed through the registry and through the events a subscriber that is not
Heimdall receives (its own rule and queue on the bus); then the bundle is re-imported as another
instance would drop it. Every step is verified, not assumed; ``summary.json`` records what happened.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heimdall.contracts.jobs import PACKAGE_FILE_NAME
from heimdall.contracts.manifest import MANIFEST_FILE_NAME
from heimdall.local.stack import LocalStack

MANIFEST: dict[str, Any] = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "input_names": ["input"],
    "output_names": ["positions", "uncertainties"],
    "dynamic_batch": True,
    "opset": 17,
    "formats": ["onnx", "onnx_int8", "tensorrt"],
    "normalization_stats": {"feature_means": [0.485, 0.456, 0.406], "feature_stds": [0.229, 0.224, 0.225]},
    "training_config": {"epochs": 50, "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam"},
    "description": "Heimdall demo: the reference localization net",
    "created_by": "heimdall demo",
}
PIPELINE_STEPS = (
    "received",
    "submitted",
    "converting",
    "succeeded",
    "indexed",
    "imported",
    "rebuilt",
    "deployed",
    "inferred",
)


class DemoFailed(Exception):
    """A step did not happen as it should (the message says which)."""


@dataclass
class DemoResult:
    model_id: str
    bundle_sha256: str
    events: list[str]
    export_job_status: str
    imported_model_id: str
    elapsed_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "bundle_sha256": self.bundle_sha256,
            "events": self.events,
            "export_job_status": self.export_job_status,
            "imported_model_id": self.imported_model_id,
            "elapsed_s": round(self.elapsed_s, 2),
            **self.details,
        }


class Subscriber:
    """A consumer that is not Heimdall: its own rule and SQS queue on the Heimdall bus."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.names is not None
        self._sqs = stack.client("sqs")
        events = stack.client("events")
        self.url = self._sqs.create_queue(QueueName="demo-subscriber")["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        bus = stack.names.event_bus_name
        events.put_rule(
            Name="demo-subscriber", EventBusName=bus, EventPattern=json.dumps({"source": ["heimdall"]})
        )
        events.put_targets(Rule="demo-subscriber", EventBusName=bus, Targets=[{"Id": "demo", "Arn": arn}])
        self.received: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        messages = self._sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            self.received.append(json.loads(message["Body"]))
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return self.received

    def types(self) -> list[str]:
        return [e["detail-type"] for e in self.received]

    def first(self, detail_type: str, **match: Any) -> dict[str, Any] | None:
        for event in self.received:
            detail = event["detail"]
            if event["detail-type"] == detail_type and all(detail.get(k) == v for k, v in match.items()):
                return dict(detail)
        return None

    def job_finished(self, job_id: str) -> dict[str, Any] | None:
        """The job's ``Export Job Succeeded`` or ``Export Job Failed`` detail, once received."""
        succeeded = self.first("Export Job Succeeded", job_id=job_id)
        return succeeded or self.first("Export Job Failed", job_id=job_id)


def write_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A seeded reference localization_net checkpoint (safetensors) and its manifest."""
    import torch  # noqa: PLC0415 - the demo converts a real model
    from safetensors.torch import save_file  # noqa: PLC0415

    from heimdall_batch.architectures import resolve  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checkpoint = folder / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in resolve("localization_net")().state_dict().items()}, str(checkpoint)
    )
    manifest = folder / MANIFEST_FILE_NAME
    manifest.write_text(json.dumps(MANIFEST, indent=2))
    return checkpoint, manifest


def run_demo(
    stack: LocalStack,
    out: Path,
    *,
    on_step: Callable[[str, str], None] = lambda step, text: None,
    timeout_s: float = 300.0,
) -> DemoResult:
    """Drive the pipeline on a started ``stack``; raises :class:`DemoFailed` when a step does not happen."""
    assert stack.names is not None
    names = stack.names
    started = time.monotonic()
    s3 = stack.client("s3")
    subscriber = Subscriber(stack)
    checkpoint, manifest = write_checkpoint(out / "input")
    prefix = f"checkpoints/{MANIFEST['model_name']}/{MANIFEST['version']}/"
    s3.put_object(Bucket=names.ingest_bucket, Key=prefix + "model.safetensors", Body=checkpoint.read_bytes())
    s3.put_object(Bucket=names.ingest_bucket, Key=prefix + MANIFEST_FILE_NAME, Body=manifest.read_bytes())
    on_step("dropped", f"s3://{names.ingest_bucket}/{prefix}model.safetensors and heimdall.json")

    def wait_for(what: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            subscriber.poll()
            value = check()
            if value:
                return value
            time.sleep(0.2)
        raise DemoFailed(
            f"timed out after {timeout_s:.0f} s waiting for {what}; events so far: {subscriber.types()}"
        )

    received = wait_for("Checkpoint Received", lambda: subscriber.first("Checkpoint Received"))
    on_step("received", f"{received['model_name']} {received['version']} ({received['architecture']})")
    submitted = wait_for("Export Job Submitted", lambda: subscriber.first("Export Job Submitted"))
    job_id = submitted["job_id"]
    on_step("submitted", f"job {job_id} → {submitted['batch_job_id']}")
    started_event = wait_for(
        "Export Job Started", lambda: subscriber.first("Export Job Started", job_id=job_id)
    )
    on_step("converting", f"conversion running ({started_event['batch_job_id']})")
    finished = wait_for("the job to finish", lambda: subscriber.job_finished(job_id))
    if finished["status"] != "SUCCEEDED":
        raise DemoFailed(f"the export job failed: {finished.get('code')}: {finished.get('message')}")
    on_step("succeeded", ", ".join(f"{f['format']} {f['status']}" for f in finished["formats"]))
    indexed = wait_for("Bundle Indexed", lambda: subscriber.first("Bundle Indexed", job_id=job_id))
    model_id = indexed["model_id"]
    on_step("indexed", f"model {model_id}")

    from heimdall import wiring  # noqa: PLC0415

    registry = wiring.job_state_deps().registry
    job = registry.get_export_job_any_owner(job_id)
    model = registry.get_model(job.owner, model_id)
    result = json.loads(
        s3.get_object(Bucket=names.artifacts_bucket, Key=f"exports/{job_id}/result.json")["Body"].read()
    )
    bundle_bytes = s3.get_object(Bucket=names.artifacts_bucket, Key=indexed["bundle_key"])["Body"].read()
    package_key = finished.get("package_key")
    (out / "bundle").mkdir(parents=True, exist_ok=True)
    local_bundle = out / "bundle" / Path(indexed["bundle_key"]).name
    local_bundle.write_bytes(bundle_bytes)
    if package_key:
        package = s3.get_object(Bucket=names.artifacts_bucket, Key=package_key)["Body"].read()
        (out / "bundle" / PACKAGE_FILE_NAME).write_bytes(package)

    # Another instance's drop: the same bundle into this instance's ingest bucket.
    s3.put_object(Bucket=names.ingest_bucket, Key=f"bundles/partner/{local_bundle.name}", Body=bundle_bytes)
    imported = wait_for("the re-import", lambda: subscriber.first("Bundle Indexed", imported=True))
    imported_model = registry.get_model(imported["owner"], imported["model_id"])
    if imported_model.onnx_sha256 != model.onnx_sha256:
        raise DemoFailed("the re-imported model's ONNX differs from the exported one")
    on_step("imported", f"{imported_model.display_name} → model {imported_model.model_id}")
    rebuilt = None
    if stack.api_url:
        rebuilt = _rebuild_imported(stack, imported_model.model_id, wait_for, subscriber)
        on_step("rebuilt", rebuilt.pop("text"))
    deployment = _deploy_and_infer(stack, model_id, checkpoint, on_step) if stack.api_url else None
    subscriber.poll()

    fp32 = next(f for f in result["formats"] if f["format"] == "onnx")
    benchmark = result.get("benchmark") or {}
    return DemoResult(
        model_id=model_id,
        bundle_sha256=hashlib.sha256(bundle_bytes).hexdigest(),
        events=subscriber.types(),
        export_job_status=job.status.value,
        imported_model_id=imported_model.model_id,
        elapsed_s=time.monotonic() - started,
        details={
            "job_id": job_id,
            "onnx_sha256": model.onnx_sha256,
            "registry_entry": model.model_dump(mode="json"),
            "imported_entry": imported_model.model_dump(mode="json"),
            "fp32_max_abs_err": max(c["max_abs_err"] for c in fp32["parity"]),
            "benchmark": benchmark,
            "formats": {
                f["format"]: {"status": f["status"], "reason": f["reason"]} for f in result["formats"]
            },
            "bundle": f"s3://{names.artifacts_bucket}/{indexed['bundle_key']}",
            "package": f"s3://{names.artifacts_bucket}/{package_key}" if package_key else None,
            "local_copies": str(out / "bundle"),
            "endpoint": stack.endpoint,
            "rebuilt": rebuilt,
            "deployment": deployment,
        },
    )


def _rebuild_imported(
    stack: LocalStack,
    model_id: str,
    wait_for: Callable[[str, Callable[[], Any]], Any],
    subscriber: Subscriber,
) -> dict[str, Any]:
    """An export job of the imported model through the HTTP API: its bundle's ONNX model becomes INT8
    (and a TensorRT engine where there is a GPU) on this instance, checked against that model."""
    import httpx  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=str(stack.api_url), headers=headers, timeout=120) as api:
        asked = {"model_id": model_id, "formats": ["onnx_int8", "tensorrt"]}
        created = api.post("/api/v1/export/jobs", json=asked)
        if created.status_code != 202:
            raise DemoFailed(f"the imported model's job answered {created.status_code}: {created.text}")
        job_id = created.json()["job_id"]
        finished = wait_for("the imported model's export job", lambda: subscriber.job_finished(job_id))
        if finished["status"] != "SUCCEEDED":
            raise DemoFailed(f"the imported model's export job failed: {finished.get('message')}")
        job = api.get(f"/api/v1/export/jobs/{job_id}").json()
    assert stack.names is not None
    result_key = f"exports/{job_id}/result.json"
    body = stack.client("s3").get_object(Bucket=stack.names.artifacts_bucket, Key=result_key)["Body"].read()
    formats = {f["format"]: f for f in json.loads(body)["formats"]}
    int8 = formats.get("onnx_int8", {})
    if int8.get("status") != "built":
        raise DemoFailed(f"INT8 was not built from the imported bundle: {int8.get('reason')}")
    int8_error = max(c["max_abs_err"] for c in int8["parity"])
    tensorrt = formats.get("tensorrt", {})
    engine = str(tensorrt.get("status"))
    if tensorrt.get("reason"):
        engine += f" ({tensorrt['reason']})"
    return {
        "job_id": job_id,
        "source": job["source"],
        "int8_max_abs_err_vs_onnx": int8_error,
        "formats": {name: {"status": f["status"], "reason": f["reason"]} for name, f in formats.items()},
        "text": f"from the imported bundle (job {job_id}): onnx_int8 built, max |INT8 - ONNX| = "
        f"{int8_error:.1e}; tensorrt {engine}",
    }


def _deploy_and_infer(
    stack: LocalStack, model_id: str, checkpoint: Path, on_step: Callable[[str, str], None]
) -> dict[str, Any]:
    """A platform endpoint of the model through the HTTP API, one inference, compared with PyTorch."""
    import httpx  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    from heimdall_batch.architectures import resolve  # noqa: PLC0415

    headers = {"Authorization": f"Bearer {stack.api_token}"}
    with httpx.Client(base_url=str(stack.api_url), headers=headers, timeout=120) as api:
        created = api.post(
            "/api/v1/deployments",
            json={
                "type": "platform_endpoint",
                "name": "demo-endpoint",
                "model_id": model_id,
                "options": {"tier": "pro", "apply_normalization": True},
            },
        )
        if created.status_code != 201:
            raise DemoFailed(f"creating the deployment answered {created.status_code}: {created.text}")
        deployment = created.json()["deployment"]
        key = created.json()["api_key"]
        on_step("deployed", f"platform endpoint {deployment['endpoint']} (pro, normalised inputs)")
        x = np.random.default_rng(0).random((1, *MANIFEST["input_shape"][1:]), dtype=np.float32)
        answer = httpx.post(
            f"{stack.api_url}{deployment['endpoint']}",
            json={"input": x.tolist()},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )
    if answer.status_code != 200:
        raise DemoFailed(f"the inference answered {answer.status_code}: {answer.text}")
    model = resolve(str(MANIFEST["architecture"]))()
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    stats = MANIFEST["normalization_stats"]
    means = np.asarray(stats["feature_means"], dtype=np.float32).reshape(1, -1, 1, 1)
    stds = np.asarray(stats["feature_stds"], dtype=np.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy((x - means) / stds))]
    outputs = answer.json()["outputs"]
    error = max(
        float(np.max(np.abs(np.asarray(outputs[name]) - value)))
        for name, value in zip(MANIFEST["output_names"], expected, strict=True)
    )
    if error > 1e-4:
        raise DemoFailed(f"the endpoint's answer differs from PyTorch's by {error:.2e}")
    latency = answer.json()["latency_ms"]
    on_step("inferred", f"{', '.join(outputs)} in {latency:.2f} ms; max |endpoint - PyTorch| = {error:.1e}")
    return {
        "deployment_id": deployment["deployment_id"],
        "endpoint": deployment["endpoint"],
        "latency_ms": latency,
        "max_abs_err_vs_pytorch": error,
    }
