"""What the API end-to-end tests share: a local stack with three callers, a checked HTTP client, bundles,
checkpoints in the ingest bucket, and the ``heimdall`` command line run as a subprocess.

Every response a test gets through :meth:`ApiStack.client` or :func:`raw_request` passes
:func:`check_response` first: never a 5xx, and every error is the API's JSON ``{"error": {"code",
"message"}}``. The stack is module-scoped (the ``api`` fixture): each test module gets one, with a fresh
emulator, and shares it between its tests.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from heimdall.local.demo import MANIFEST, Subscriber
from heimdall.local.stack import LocalStack
from heimdall.settings import MIB
from heimdall.testing.sample_bundles import sample_bundle
from heimdall.testing.sample_models import localization_net_onnx, padded_onnx

T = TypeVar("T")

LOCAL_SUB = "local-user"
OTHER_SUB = "other-user"
OTHER_TOKEN = "e2e-token-of-another-owner"
READ_ONLY_TOKEN = "e2e-token-read-only"
EXTRA_TOKENS = {
    OTHER_TOKEN: {"sub": OTHER_SUB, "scopes": ["heimdall/read", "heimdall/write"]},
    READ_ONLY_TOKEN: {"sub": LOCAL_SUB, "scopes": ["heimdall/read"]},
}
#: The sample bundle's model (DESIGN §4's localization net) and the sample predictions it carries.
SAMPLE_COUNT = 5
ALL_COMPONENTS = ["training_config", "performance_metrics", "normalization_stats", "sample_predictions"]
#: The API's defaults: the largest inline import, and the largest bundle an export answers in its body.
MAX_INLINE_BYTES = 4 * MIB
MAX_RESPONSE_BYTES = 5 * MIB


# --- responses -------------------------------------------------------------------------------------


def check_parts(status: int, content_type: str, body: bytes, where: str) -> None:
    """No 5xx; an error (4xx) is ``application/json`` ``{"error": {"code": str, "message": str}}``."""
    assert status < 500, f"{where} → {status} (a server error): {body[:1000]!r}"
    if status < 400:
        return
    media_type = content_type.split(";", maxsplit=1)[0].strip()
    assert media_type == "application/json", f"{where} → {status} {content_type}"
    document = json.loads(body)
    error = document.get("error") if isinstance(document, dict) else None
    assert isinstance(error, dict), f"{where} → {status}: not an error object: {body[:500]!r}"
    assert isinstance(error.get("code"), str) and error["code"], f"{where}: no error code: {error}"
    assert isinstance(error.get("message"), str) and error["message"], f"{where}: no message: {error}"


def check_response(response: httpx.Response) -> None:
    """httpx response hook: :func:`check_parts` on every answer of the API."""
    response.read()
    request = response.request
    check_parts(
        response.status_code,
        response.headers.get("content-type", ""),
        response.content,
        f"{request.method} {request.url.raw_path.decode('ascii', 'replace')}",
    )


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error of ``response``, which must have ``status`` and ``code``."""
    assert response.status_code == status, (
        f"expected {status} {code}, got {response.status_code}: {response.text}"
    )
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


@dataclass(frozen=True)
class RawResponse:
    """An answer to a request sent byte for byte (no client-side path normalisation)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The error object of an error response."""
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


def raw_request(
    base_url: str, method: str, target: str, *, token: str | None = None, body: bytes | None = None
) -> RawResponse:
    """Send ``target`` exactly as written (``..`` and ``%2e`` stay as they are), checked as any answer."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request(method, target, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        headers_out = {name.lower(): value for name, value in answer.getheaders()}
    finally:
        connection.close()
    check_parts(answer.status, headers_out.get("content-type", ""), data, f"{method} {target}")
    return RawResponse(answer.status, headers_out, data)


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent calls (command lines, mostly: a second of start-up each) at once; their results."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 60.0, every_s: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


# --- bundles and checkpoints -----------------------------------------------------------------------


@cache
def sample_onnx() -> bytes:
    """The reference localization net as ONNX (built once)."""
    return localization_net_onnx()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_bundle(onnx: bytes | None = None, *, compress: bool = False, **overrides: Any) -> bytes:
    """A valid canonical bundle (all four optional components, :data:`SAMPLE_COUNT` samples)."""
    overrides.setdefault("num_samples", SAMPLE_COUNT)
    return sample_bundle(sample_onnx() if onnx is None else onnx, compress=compress, **overrides)


@cache
def large_bundle() -> bytes:
    """A valid bundle over the inline import limit and, base64 included, over the export response limit.

    Its model is a padded ONNX graph (``input [1, rows] → output [1, 256]``) whose metadata says so.
    """
    onnx = padded_onnx(4 * MIB + 256 * 1024, dynamic_batch=False)
    import onnx as onnx_lib

    graph = onnx_lib.load_model_from_string(onnx).graph
    rows = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    data = make_bundle(
        onnx,
        seed=7,
        model={
            "model_name": "padded-net",
            "architecture": "padded",
            "input_shape": [1, rows],
            "output_shape": [[1, 256]],
        },
    )
    assert len(data) > max(MAX_INLINE_BYTES, MAX_RESPONSE_BYTES), len(data)
    return data


def tampered(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """``data`` (a plain bundle) with its JSON changed by ``change``."""
    document = json.loads(data)
    change(document)
    return json.dumps(document).encode()


@dataclass(frozen=True)
class StagedCheckpoint:
    model_name: str
    version: str
    checkpoint_uri: str
    manifest_uri: str


def stage_checkpoint(
    api: ApiStack, model_name: str, checkpoint: bytes, file_name: str, formats: tuple[str, ...] = ("onnx",)
) -> StagedCheckpoint:
    """A checkpoint and its manifest in the ingest bucket, in folders of their own.

    Neither drop starts a conversion (a checkpoint with a ``heimdall.json`` beside it would: the
    pipeline's direct-drop path): the manifest's folder holds no checkpoint and the checkpoint's no
    manifest, so only an API request with both URIs converts it.
    """
    manifest = {**MANIFEST, "model_name": model_name, "formats": list(formats), "created_by": "e2e"}
    version = str(manifest["version"])
    bucket = api.names.ingest_bucket
    manifest_key = f"checkpoints/{model_name}/{version}/heimdall.json"
    checkpoint_key = f"checkpoints/{model_name}/weights/{file_name}"
    s3 = api.s3()
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    s3.put_object(Bucket=bucket, Key=checkpoint_key, Body=checkpoint)
    return StagedCheckpoint(
        model_name, version, f"s3://{bucket}/{checkpoint_key}", f"s3://{bucket}/{manifest_key}"
    )


# --- the stack ---------------------------------------------------------------------------------------


@dataclass
class ApiStack:
    """A started local stack whose token file lies in ``root/.heimdall-local`` (as `local up` leaves it)."""

    stack: LocalStack
    root: Path
    subscriber: Subscriber

    @property
    def url(self) -> str:
        assert self.stack.api_url is not None
        return self.stack.api_url

    @property
    def token(self) -> str:
        assert self.stack.api_token is not None
        return self.stack.api_token

    @property
    def names(self) -> Any:
        assert self.stack.names is not None
        return self.stack.names

    def s3(self) -> Any:
        return self.stack.client("s3")

    def client(self, token: str | None = "", **headers: str) -> httpx.Client:
        """A client of the API whose every answer is checked; ``token`` None sends none, "" the default."""
        token = self.token if token == "" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(
            base_url=self.url, headers=headers, timeout=60, event_hooks={"response": [check_response]}
        )

    def artifact_keys(self, prefix: str) -> list[str]:
        listing = self.s3().list_objects_v2(Bucket=self.names.artifacts_bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", [])]

    def artifact(self, key: str) -> bytes:
        body: bytes = self.s3().get_object(Bucket=self.names.artifacts_bucket, Key=key)["Body"].read()
        return body

    def job_events_settled(self) -> bool:
        """No conversion is running and every state change it reported has been handled."""
        runner = self.stack.runner
        assert runner is not None
        if any(thread.is_alive() for thread in runner.threads):
            return False
        attributes = self.stack.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.queue_urls["job-state"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return all(value == "0" for value in attributes.values())


@pytest.fixture(scope="module", name="api")
def api_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """The emulator, the dispatcher and the API on free ports, with the default, another owner's and a
    read-only token."""
    root = tmp_path_factory.mktemp("api-e2e")
    stack = LocalStack(
        port=0, api_port=0, workdir=root / ".heimdall-local", log_level="ERROR", api_tokens=EXTRA_TOKENS
    )
    stack.start()
    try:
        yield ApiStack(stack=stack, root=root, subscriber=Subscriber(stack))
    finally:
        stack.stop()


# --- the command line ----------------------------------------------------------------------------------

def heimdall(*args: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``heimdall ARGS`` outside any stack (the conversion commands); the caller checks the exit."""
    env = dict(os.environ)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.run(
        [sys.executable, "-m", "heimdall.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


_DEFAULT = "default"


@dataclass
class Cli:
    """``python -m heimdall.cli`` against the stack, with ``HEIMDALL_API_URL``/``HEIMDALL_API_TOKEN`` set."""

    api: ApiStack
    cwd: Path
    calls: list[list[str]] = field(default_factory=list)

    def env(self, token: str | None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "HEIMDALL_API_", "HEIMDALL_STAGE"))
        }
        env.update({"HEIMDALL_API_URL": self.api.url, "COLUMNS": "250", "NO_COLOR": "1"})
        if token is not None:
            env["HEIMDALL_API_TOKEN"] = token
        return env

    def start(
        self, *args: str, token: str | None = _DEFAULT, cwd: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start ``heimdall ARGS`` in the background; :meth:`finish` collects it."""
        chosen = self.api.token if token == _DEFAULT else token
        self.calls.append(list(args))
        return subprocess.Popen(
            [sys.executable, "-m", "heimdall.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(chosen),
            cwd=cwd or self.cwd,
        )

    @staticmethod
    def finish(process: subprocess.Popen[str], expect: int = 0) -> subprocess.CompletedProcess[str]:
        """Wait for a started command: it must exit with ``expect`` and print no traceback."""
        try:
            stdout, stderr = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert isinstance(process.args, list)  # start() passes the command as a list
        command = " ".join(str(a) for a in process.args[3:])
        shown = f"heimdall {command} → {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        assert done.returncode == expect, shown
        assert "Traceback" not in done.stdout + done.stderr, shown
        assert "INTERNAL_ERROR" not in done.stderr, shown
        return done

    def run(
        self, *args: str, token: str | None = _DEFAULT, cwd: Path | None = None, expect: int = 0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``heimdall ARGS``; the exit status must be ``expect`` and nothing may print a traceback."""
        return self.finish(self.start(*args, token=token, cwd=cwd), expect)

    def json(self, *args: str, **kwargs: Any) -> Any:
        """Run ``heimdall ARGS --json`` and parse what it printed (stdout holds only the JSON)."""
        return json.loads(self.run(*args, "--json", **kwargs).stdout)

    def fails(self, *args: str, code: str, **kwargs: Any) -> str:
        """Run ``heimdall ARGS``, which must fail (exit 1) with ``error CODE: …`` as the last line on stderr
        (notes on the way may come before it); returns that line."""
        done = self.run(*args, expect=1, **kwargs)
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        assert last.startswith(f"error {code}: "), done.stderr
        assert done.stdout == "", done.stdout
        return last
