"""The embedded local stack: the emulator as a real HTTP endpoint, the resources, and a dispatcher.

* The emulator is moto's server on ``127.0.0.1:4566`` (or an endpoint already running, such as
  LocalStack, when ``AWS_ENDPOINT_URL`` is given).
* Resources are created with the names :meth:`heimdall.settings.Settings.resource_names` gives — the
  names the template's functions receive — and wired as in AWS: both buckets send "Object Created" to
  EventBridge's default bus; a rule there feeds the ingest queue; Batch "Job State Change" events feed
  the job-state queue.
* The dispatcher delivers those queues to the same handler modules Lambda runs
  (``functions/*/app.py``) with the same event shapes (an SQS batch for ingest with partial-batch
  responses, the EventBridge event for job state).
* The sweep function (``functions/sweep/app.py``, an EventBridge schedule in AWS) is invoked every
  ``sweep_interval_s`` seconds; ``HEIMDALL_PAIR_TIMEOUT_S`` sets how long a half pair waits before it
  rejects it.
* Conversion jobs run as subprocesses (``python -m heimdall_batch``, the Batch container's entry point)
  and report their state changes to the default bus as ``aws.batch`` events, as AWS Batch does.
* The HTTP API is served on ``127.0.0.1:3000`` by :class:`heimdall.local.gateway.LocalGateway`, which
  calls ``functions/api/app.py`` with API Gateway HTTP API's events and checks a bearer token in place
  of the JWT authorizer (the default token is written to ``{workdir}/api-token``).

Handler calls are serialised by one lock: moto's DynamoDB does not make conditional writes atomic
under concurrency as DynamoDB does, and the local stack must not invent races AWS would not have.
Nothing here is imported by a Lambda; moto is imported only when the stack starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from heimdall import wiring
from heimdall.adapters.batch import batch_job_name
from heimdall.contracts.jobs import JobSpec
from heimdall.local.api_tokens import DEFAULT_SUB, ApiTokens, load_api_tokens
from heimdall.local.gateway import Integration, LocalGateway
from heimdall.settings import ResourceNames, get_settings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4566
DEFAULT_API_PORT = 3000
#: How often the local stack runs the sweep function (seconds).
DEFAULT_SWEEP_INTERVAL_S = 5.0
REGION = "us-east-1"
FUNCTIONS_DIR = Path(__file__).resolve().parents[4] / "functions"
#: Receives before SQS moves a message to its dead-letter queue: template.yaml's IngestQueue redrive
#: policy (tests/unit/test_template.py keeps the two equal); the local queues use it for both pumps.
MAX_RECEIVE_COUNT = 5
#: Paths the inference function serves (template.yaml: InferFunction's events), with no JWT authorizer.
INFER_PREFIXES = ("/v1/",)
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "heimdall-local",
    "AWS_SECRET_ACCESS_KEY": "heimdall-local",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class _Context:
    """The parts of Lambda's context object the handlers' Powertools decorators read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:123456789012:function:{self.function_name}"


def load_function(name: str) -> ModuleType:
    """Load ``functions/{name}/app.py`` as Lambda does (a module of its own)."""
    path = FUNCTIONS_DIR / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"heimdall_function_{name}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invoker(module: ModuleType) -> Callable[[dict[str, Any], Any], Any]:
    """``module.lambda_handler``, as one Lambda invocation: metrics the handler could not publish are dropped.

    With ``POWERTOOLS_METRICS_DISABLED`` (set here: no CloudWatch locally) Powertools skips the flush
    but keeps the metrics, and prints them as EMF once 100 have piled up across invocations; in Lambda
    each container flushes every invocation, so nothing piles up.
    """
    from heimdall.observability import metrics  # noqa: PLC0415 - the handlers' own singleton

    handler = module.lambda_handler

    def invoke(event: dict[str, Any], context: Any) -> Any:
        try:
            return handler(event, context)
        finally:
            if is_metrics_disabled():
                metrics.clear_metrics()

    return invoke


class SubprocessJobRunner:
    """Runs conversion jobs as subprocesses and reports Batch-shaped state changes to the default bus."""

    def __init__(self, env: dict[str, str], post_event: Callable[[dict[str, Any]], None], logs: Path) -> None:
        self._env = env
        self._post = post_event
        self._logs = logs
        self.threads: list[threading.Thread] = []
        # Per Batch id: the running process, and the reason of a cancel asked for (before or during it).
        self._processes: dict[str, subprocess.Popen[bytes] | None] = {}
        self._cancelled: dict[str, str] = {}
        self._jobs_lock = threading.Lock()

    def submit(self, spec: JobSpec) -> str:
        batch_id = f"local-{uuid.uuid4().hex[:12]}"
        with self._jobs_lock:
            self._processes[batch_id] = None  # known, not started yet (cancel may come first)
        thread = threading.Thread(
            target=self._run, args=(spec, batch_id), name=f"job-{spec.job_id}", daemon=True
        )
        self.threads.append(thread)
        thread.start()
        return batch_id

    def _state(self, spec: JobSpec, batch_id: str, status: str, **extra: Any) -> None:
        detail = {
            "jobName": batch_job_name(spec.job_id),
            "jobId": batch_id,
            "jobQueue": "local",
            "status": status,
            "parameters": {"job_id": spec.job_id},
            **extra,
        }
        self._post(
            {"Source": "aws.batch", "DetailType": "Batch Job State Change", "Detail": json.dumps(detail)}
        )

    def cancel(self, runner_job_id: str, reason: str) -> None:
        """Stop the job's process (as Batch's TerminateJob does); an unknown or finished job is ignored."""
        with self._jobs_lock:
            if runner_job_id not in self._processes:
                return
            self._cancelled[runner_job_id] = reason
            process = self._processes[runner_job_id]
        if process is not None and process.poll() is None:
            process.terminate()

    def _run(self, spec: JobSpec, batch_id: str) -> None:
        time.sleep(0.2)  # let the submitter record SUBMITTED first, as Batch's queueing delay would
        self._logs.mkdir(parents=True, exist_ok=True)
        log = self._logs / f"{spec.job_id}.log"
        with log.open("w") as out, self._jobs_lock:
            process = None
            if batch_id not in self._cancelled:  # cancelled while queued: Batch never starts it
                process = subprocess.Popen(
                    [sys.executable, "-m", "heimdall_batch"],
                    env={**os.environ, **self._env, "HEIMDALL_JOB_SPEC": spec.model_dump_json()},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                self._processes[batch_id] = process
        if process is not None:
            self._state(spec, batch_id, "RUNNING")
            returncode: int | None = process.wait()
        else:
            returncode = None
        with self._jobs_lock:
            del self._processes[batch_id]
            cancelled = self._cancelled.pop(batch_id, None)
        status = "SUCCEEDED" if returncode == 0 and cancelled is None else "FAILED"
        reason = cancelled or "Essential container in task exited"
        container = {} if returncode is None else {"container": {"exitCode": returncode}}
        self._state(spec, batch_id, status, statusReason=reason, **container)


class LocalStack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        stage: str = "local",
        endpoint: str | None = None,
        workdir: Path | None = None,
        log_level: str = "INFO",
        api_port: int | None = DEFAULT_API_PORT,
        api_tokens: Mapping[str, Any] | None = None,
        sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
    ) -> None:
        """``api_port`` 0 serves the API on a free port, None not at all; ``api_tokens`` adds bearer
        tokens (``{"<token>": {"sub": "...", "scopes": [...]}}``) to the default one;
        ``sweep_interval_s`` is how often the sweep function runs (AWS: every 5 minutes)."""
        self.log_level = log_level
        self.port = port
        self.stage = stage
        self.endpoint = endpoint
        self.workdir = workdir or Path.cwd() / ".heimdall-local"
        self.names: ResourceNames | None = None
        self._server: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handler_lock = threading.Lock()
        self._saved_env: dict[str, str | None] = {}
        self.runner: SubprocessJobRunner | None = None
        self.queue_urls: dict[str, str] = {}
        self.handled: dict[str, int] = {"ingest": 0, "job_state": 0, "sweep": 0}
        self.sweep_interval_s = sweep_interval_s
        #: Handler invocations that raised (each one's messages went back to its queue; a failed sweep
        #: waits for its next run).
        self.handler_failures: dict[str, int] = {"ingest": 0, "job_state": 0, "sweep": 0}
        self.api_port = api_port
        self._api_tokens = api_tokens
        self.gateway: LocalGateway | None = None
        self.tokens: ApiTokens | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's request log
        if self.endpoint is None:
            from moto.server import ThreadedMotoServer  # noqa: PLC0415 - the emulator, only when local

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
        env = {
            **FAKE_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "HEIMDALL_STAGE": self.stage,
            "POWERTOOLS_LOG_LEVEL": self.log_level,
            "POWERTOOLS_METRICS_DISABLED": "true",  # no CloudWatch here: metrics would only print
            "HEIMDALL_DROP_OWNER": DEFAULT_SUB,  # a developer's own S3 drops are theirs in the API
        }
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        get_settings.cache_clear()
        wiring.reset()
        self.names = get_settings().resource_names()
        self._provision()
        self.runner = SubprocessJobRunner(env, self._post_default_bus, self.workdir / "jobs")
        wiring.use_job_submitter(self.runner)
        ingest = load_function("ingest")
        job_state = load_function("job_state")
        self._threads = [
            threading.Thread(target=self._pump_ingest, args=(ingest,), name="dispatch-ingest", daemon=True),
            threading.Thread(
                target=self._pump_job_state, args=(job_state,), name="dispatch-job-state", daemon=True
            ),
            threading.Thread(
                target=self._run_sweep, args=(load_function("sweep"),), name="dispatch-sweep", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()
        if self.api_port is not None:
            try:
                self._start_api(self.api_port)
            except BaseException:
                self.stop()
                raise
        return self

    def _start_api(self, port: int) -> None:
        self.tokens = load_api_tokens(self.workdir, self._api_tokens)
        api = load_function("api")
        # Inference requests run concurrently, as Lambda instances do; only their counter writes
        # (rate limit, usage) take the handler lock, the atomicity DynamoDB gives them in AWS.
        wiring.use_counter_lock(self._handler_lock)
        infer = Integration(
            invoker(load_function("infer")),
            lambda: _Context("infer", memory_limit_in_mb=2048),
            authorizer=False,
            serialized=False,
        )
        self.gateway = LocalGateway(
            invoker(api),
            self.tokens.table,
            port=port,
            lock=self._handler_lock,
            context_factory=lambda: _Context("api"),
            integrations={prefix: infer for prefix in INFER_PREFIXES},
        ).start()

    @property
    def api_url(self) -> str | None:
        """The HTTP API's base URL (``http://127.0.0.1:3000``), or None when it is not served."""
        return self.gateway.url if self.gateway is not None else None

    @property
    def api_token(self) -> str | None:
        """The default bearer token (identity ``local-user``, read and write scopes)."""
        return self.tokens.default if self.tokens is not None else None

    def stop(self) -> None:
        if self.gateway is not None:  # first: no request may reach a stack that is going away
            self.gateway.stop()
            self.gateway = None
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        wiring.use_job_submitter(None)
        wiring.use_counter_lock(None)
        wiring.reset()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()

    # --- clients and resources -----------------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A plain boto3 client on the emulator (what any other program would use)."""
        import boto3  # noqa: PLC0415

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)  # type: ignore[call-overload]

    def _provision(self) -> None:
        from heimdall.adapters.dynamodb.table import create_registry_table  # noqa: PLC0415

        names = self.names
        assert names is not None
        s3, events, sqs = self.client("s3"), self.client("events"), self.client("sqs")
        for bucket in (names.ingest_bucket, names.artifacts_bucket):
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket)
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
            )
        create_registry_table(self.client("dynamodb"), names.table_name)
        with contextlib.suppress(events.exceptions.ResourceAlreadyExistsException):
            events.create_event_bus(Name=names.event_bus_name)
        for name, pattern in (
            (
                "ingest",
                {
                    "source": ["aws.s3"],
                    "detail-type": ["Object Created"],
                    "detail": {"bucket": {"name": [names.ingest_bucket, names.artifacts_bucket]}},
                },
            ),
            ("job-state", {"source": ["aws.batch"], "detail-type": ["Batch Job State Change"]}),
        ):
            queue = f"heimdall-{self.stage}-{name}"
            dlq_url = sqs.create_queue(QueueName=f"{queue}-dlq")["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            url = sqs.create_queue(
                QueueName=queue,
                Attributes={
                    "VisibilityTimeout": "5",
                    "RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
                    ),
                },
            )["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            events.put_rule(Name=f"heimdall-{self.stage}-{name}", EventPattern=json.dumps(pattern))
            events.put_targets(Rule=f"heimdall-{self.stage}-{name}", Targets=[{"Id": name, "Arn": arn}])
            self.queue_urls[name] = url
            self.queue_urls[f"{name}-dlq"] = dlq_url

    def _post_default_bus(self, entry: dict[str, Any]) -> None:
        self.client("events").put_events(Entries=[entry])

    # --- the dispatcher --------------------------------------------------------------------------------

    def _receive(self, sqs: Any, name: str) -> list[dict[str, Any]]:
        try:
            response = sqs.receive_message(
                QueueUrl=self.queue_urls[name],
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
            )
        except Exception:  # the emulator going away (stop) or hiccuping: the loop must go on
            if not self._stop.is_set():
                logger.warning("receiving from the %s queue failed; retrying", name, exc_info=True)
                time.sleep(0.5)
            return []
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _settle(self, sqs: Any, name: str, messages: list[dict[str, Any]], failed: set[str]) -> None:
        """Delete what was processed; hand what failed back to the queue at once.

        A failed message is made visible again (as Lambda's SQS event source does after a failed
        batch, without waiting out the visibility timeout); the queue's redrive policy
        (:data:`MAX_RECEIVE_COUNT` receives) then moves one that keeps failing to the DLQ.
        """
        for message in messages:
            with contextlib.suppress(Exception):  # a lost delete or release is a redelivery, not a crash
                if message["MessageId"] in failed:
                    sqs.change_message_visibility(
                        QueueUrl=self.queue_urls[name],
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=0,
                    )
                else:
                    sqs.delete_message(QueueUrl=self.queue_urls[name], ReceiptHandle=message["ReceiptHandle"])

    def _failed(self, kind: str, messages: list[dict[str, Any]]) -> set[str]:
        """Log and count a handler invocation that raised; all its messages failed."""
        self.handler_failures[kind] += 1
        logger.exception("the %s handler raised; its %d message(s) go back to the queue", kind, len(messages))
        return {message["MessageId"] for message in messages}

    def _pump_ingest(self, module: ModuleType) -> None:
        handler = invoker(module)
        sqs = self.client("sqs")
        while not self._stop.is_set():
            messages = self._receive(sqs, "ingest")
            if not messages:
                continue
            event = {"Records": [_sqs_record(m) for m in messages]}
            try:
                with self._handler_lock:
                    response = handler(event, _Context("ingest"))
                failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
            except Exception:
                # Powertools raises when every record of a batch failed; in Lambda the whole batch is
                # then retried. Here too: nothing is deleted, and the dispatcher goes on.
                failed = self._failed("ingest", messages)
            self._settle(sqs, "ingest", messages, failed)
            self.handled["ingest"] += len(messages) - len(failed)

    def _pump_job_state(self, module: ModuleType) -> None:
        handler = invoker(module)
        sqs = self.client("sqs")
        while not self._stop.is_set():
            for message in self._receive(sqs, "job-state"):
                failed: set[str] = set()
                try:
                    with self._handler_lock:
                        handler(json.loads(message["Body"]), _Context("job_state"))
                except Exception:
                    failed = self._failed("job_state", [message])  # as Lambda's retry, then the DLQ
                self._settle(sqs, "job-state", [message], failed)
                if not failed:
                    self.handled["job_state"] += 1

    def _run_sweep(self, module: ModuleType) -> None:
        """The sweep function on its schedule, as EventBridge invokes it; a failed run is logged and the
        next one tries again (the schedule's retry policy is none)."""
        handler = invoker(module)
        while not self._stop.wait(self.sweep_interval_s):
            try:
                with self._handler_lock:
                    handler(_scheduled_event(), _Context("sweep"))
            except Exception:
                logger.warning("sweep failed; the next run tries again", exc_info=True)
                self.handler_failures["sweep"] += 1
                continue
            self.handled["sweep"] += 1


def _scheduled_event() -> dict[str, Any]:
    """EventBridge's "Scheduled Event", as a schedule rule delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:123456789012:rule/heimdall-local-sweep"],
        "detail": {},
    }


def _sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    """An SQS message as Lambda's SQS event source delivers it."""
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:ingest",
        "awsRegion": REGION,
    }
