"""Canned HTTP servers and runners for the command-line tests (``test_cli_remote``, ``test_cli_deploy``).

:class:`FakeServer` is a real HTTP server on loopback, in a thread: it answers ``(method, path)`` with
queued :class:`Reply` objects and records every request it got (:class:`Seen`), so that a test asserts
on what a command sent as well as on what it printed. One stands in for the API, another for S3 on
another port. Import the fixtures by name into a test module (pytest finds them there):
``api_fixture`` (``api``), ``storage_fixture`` (``storage``) and the autouse ``isolated_fixture``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner, Result

from heimdall.cli import api_job_routes, api_model_routes, app

TOKEN = "test-token-123"

# --- the canned servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request a fake server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(value: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


def api_error(status: int, code: str, message: str) -> Reply:
    return json_reply({"error": {"code": code, "message": message}}, status)


class FakeServer:
    """A loopback HTTP server answering (method, path) with queued replies; the last one repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                seen = Seen(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length),
                )
                fake.seen.append(seen)
                queue = fake.routes.get((seen.method, seen.path))
                reply = (
                    (queue.pop(0) if len(queue) > 1 else queue[0])
                    if queue
                    else api_error(404, "NOT_FOUND", "no route")
                )
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def on(self, method: str, path: str, *replies: Reply) -> None:
        self.routes[(method, path)] = list(replies)

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(name="api")
def api_fixture() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(name="storage")
def storage_fixture() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(name="isolated", autouse=True)
def isolated_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API settings from the developer's environment; a cwd without a local token file; fast polls."""
    for name in ("HEIMDALL_API_URL", "HEIMDALL_API_TOKEN", "HEIMDALL_API_KEY", "HEIMDALL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api_model_routes, "IMPORT_POLL", (0.01, 1.0, 0.01))
    monkeypatch.setattr(api_job_routes, "JOB_POLL", (0.01, 1.0, 0.01))


def run(server: FakeServer | str, *args: str | Path, token: str | None = TOKEN) -> Result:
    """``heimdall ARGS --api URL [--token T]``; no output may hold a traceback."""
    url = server if isinstance(server, str) else server.url
    extra = ["--api", url] + (["--token", token] if token else [])
    result = CliRunner().invoke(app, [*map(str, args), *extra], env={"COLUMNS": "200"})
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def assert_error(result: Result, code: str, *fragments: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert f"error {code}: " in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert result.stdout == ""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))
