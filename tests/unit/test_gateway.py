"""The local API gateway over real HTTP, with a small handler of the test's own (not the API's)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from heimdall.local.api_tokens import DEFAULT_SCOPES, ApiIdentity, load_api_tokens
from heimdall.local.gateway import MAX_RESPONSE_BYTES, Integration, LocalGateway

ADMIN = "admin-token-0123456789"
READER = "reader-token-9876543210"
TOKENS = {
    ADMIN: ApiIdentity("local-user", DEFAULT_SCOPES),
    READER: ApiIdentity("reader", ("heimdall/read",)),
}


@dataclass
class Recorder:
    """The handler: records each event and answers with what ``reply`` returns."""

    reply: Callable[[dict[str, Any]], Any] = lambda event: {"statusCode": 200, "body": "ok"}
    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        return self.reply(event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def gateway(recorder: Recorder) -> Iterator[LocalGateway]:
    with LocalGateway(recorder, TOKENS, port=0, lock=threading.Lock()) as running:
        yield running


def call(
    gateway: LocalGateway,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    token: str | None = ADMIN,
) -> http.client.HTTPResponse:
    """One request sent exactly as written (http.client leaves the target and repeated headers alone)."""
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=30)
    connection.putrequest(method, target, skip_accept_encoding=True)
    for name, value in headers or []:
        connection.putheader(name, value)
    if token is not None:
        connection.putheader("Authorization", f"Bearer {token}")
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    response.read_body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def body_of(response: http.client.HTTPResponse) -> bytes:
    return response.read_body  # type: ignore[attr-defined,no-any-return]


def error_of(response: http.client.HTTPResponse) -> dict[str, Any]:
    assert response.getheader("Content-Type") == "application/json"
    error: dict[str, Any] = json.loads(body_of(response))["error"]
    return error


# --- the event ---------------------------------------------------------------------------------------------


def test_the_event_has_http_apis_shape(gateway: LocalGateway, recorder: Recorder) -> None:
    response = call(
        gateway,
        "GET",
        "/api/v1/models/%2e%2e/x%2Fy?b=1&b=2&empty=&q=a%20b+c",
        headers=[("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "a=1; b=2"), ("User-Agent", "tester/1")],
    )

    assert response.status == 200 and body_of(response) == b"ok"
    (event,) = recorder.events
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/api/v1/models/%2e%2e/x%2Fy"  # as sent: neither decoded nor normalised
    assert event["rawQueryString"] == "b=1&b=2&empty=&q=a%20b+c"
    assert event["queryStringParameters"] == {"b": "1,2", "empty": "", "q": "a b c"}
    headers = event["headers"]
    assert headers["x-multi"] == "one,two"
    assert headers["user-agent"] == "tester/1"
    assert headers["authorization"] == f"Bearer {ADMIN}"  # HTTP API passes it on after the authorizer
    assert headers["host"] == f"127.0.0.1:{gateway.port}"
    assert all(name == name.lower() for name in headers)
    assert "cookie" not in headers and event["cookies"] == ["a=1", "b=2"]
    assert "pathParameters" not in event and "stageVariables" not in event
    assert "body" not in event and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"] == {
        "method": "GET",
        "path": "/api/v1/models/%2e%2e/x%2Fy",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "tester/1",
    }
    assert context["stage"] == "$default" and context["routeKey"] == "$default"
    assert context["accountId"] and context["apiId"] and context["domainName"] == headers["host"]
    assert context["requestId"] == response.getheader("Apigw-Requestid")
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60
    assert context["time"].endswith(" +0000") and "/" in context["time"]


def test_a_request_without_a_query_has_no_parameters(gateway: LocalGateway, recorder: Recorder) -> None:
    call(gateway, "GET", "/api/v1/models")

    (event,) = recorder.events
    assert event["rawQueryString"] == ""
    assert "queryStringParameters" not in event and "cookies" not in event


@pytest.mark.parametrize(
    ("token", "sub", "scopes"),
    [(ADMIN, "local-user", ["heimdall/read", "heimdall/write"]), (READER, "reader", ["heimdall/read"])],
)
def test_each_token_brings_its_claims_and_scopes(
    gateway: LocalGateway, recorder: Recorder, token: str, sub: str, scopes: list[str]
) -> None:
    call(gateway, "GET", "/api/v1/models", token=token)

    jwt = recorder.events[0]["requestContext"]["authorizer"]["jwt"]
    assert jwt == {"claims": {"sub": sub, "scope": " ".join(scopes)}, "scopes": scopes}


def test_binary_bodies_arrive_base64_and_text_bodies_as_text(
    gateway: LocalGateway, recorder: Recorder
) -> None:
    blob = bytes(range(256)) * 4
    call(gateway, "POST", "/api/v1/models/import", body=blob, headers=[("Content-Type", "application/gzip")])
    call(gateway, "POST", "/x", body=b'{"a": "\xc3\xa9"}', headers=[("Content-Type", "application/json")])
    call(
        gateway,
        "POST",
        "/x",
        body=b"a=1&b=2",
        headers=[("Content-Type", "application/x-www-form-urlencoded")],
    )
    call(gateway, "POST", "/x", body=b"plain", headers=[("Content-Type", "text/plain; charset=utf-8")])
    call(gateway, "POST", "/x", body=b"\x1f\x8b\x08\x00gz", headers=[("Content-Type", "application/json")])

    binary, text, form, plain, not_utf8 = recorder.events
    assert binary["isBase64Encoded"] is True and base64.b64decode(binary["body"]) == blob
    assert text["isBase64Encoded"] is False and text["body"] == '{"a": "é"}'
    assert form["isBase64Encoded"] is True and base64.b64decode(form["body"]) == b"a=1&b=2"
    assert plain["isBase64Encoded"] is False and plain["body"] == "plain"
    # Declared JSON but not UTF-8 (a gzip bundle): passed losslessly rather than mangled.
    assert not_utf8["isBase64Encoded"] is True and base64.b64decode(not_utf8["body"]) == b"\x1f\x8b\x08\x00gz"


def test_a_chunked_body_is_read(gateway: LocalGateway, recorder: Recorder) -> None:
    reply = raw_exchange(
        gateway,
        f"POST /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: text/plain\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )

    assert reply.startswith(b"HTTP/1.1 200")
    assert recorder.events[0]["body"] == "hello world"


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "header"),
    [
        (None, None),
        ("not-a-known-token", None),
        (None, "Basic dXNlcjpwYXNz"),
        (None, "Bearer "),
        (None, f"Bearer {ADMIN}x"),
    ],
)
def test_no_or_a_bad_token_is_401_and_the_handler_is_not_called(
    gateway: LocalGateway, recorder: Recorder, token: str | None, header: str | None
) -> None:
    headers = [("Authorization", header)] if header is not None else []
    response = call(gateway, "GET", "/api/v1/models", token=token, headers=headers)

    assert response.status == 401
    assert error_of(response)["code"] == "UNAUTHORIZED"
    assert (response.getheader("WWW-Authenticate") or "").startswith("Bearer")
    assert recorder.events == []


def test_the_openapi_document_needs_no_token(gateway: LocalGateway, recorder: Recorder) -> None:
    response = call(gateway, "GET", "/api/v1/openapi.json", token=None)

    assert response.status == 200
    (event,) = recorder.events
    assert "authorizer" not in event["requestContext"]  # an Auth: NONE route has no authorizer
    assert call(gateway, "POST", "/api/v1/openapi.json", token=None).status == 401


# --- limits and failures -------------------------------------------------------------------------------


def raw_exchange(gateway: LocalGateway, request: str, *, timeout: float = 5) -> bytes:
    """Send ``request`` as is and read until the server closes or sends a whole response."""
    with socket.create_connection((gateway.host, gateway.port), timeout=timeout) as sock:
        sock.sendall(request.encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def test_a_body_over_the_limit_is_refused_without_waiting_for_it(
    gateway: LocalGateway, recorder: Recorder
) -> None:
    started = time.monotonic()
    reply = raw_exchange(
        gateway,
        f"POST /api/v1/models/import HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN}\r\n"
        f'Content-Type: application/json\r\nContent-Length: {11 * 1024 * 1024}\r\n\r\n{{"small": 1}}',
    )

    assert time.monotonic() - started < 2, "the server waited for a body it should refuse"
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), reply[:200]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert recorder.events == []


def test_a_chunked_body_over_the_limit_is_refused(recorder: Recorder) -> None:
    with LocalGateway(recorder, TOKENS, port=0, max_request_bytes=10) as small:
        reply = raw_exchange(
            small,
            f"POST /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n",
        )

    assert reply.startswith(b"HTTP/1.1 413")
    assert recorder.events == []


def json_error_of(reply: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and error object of a raw HTTP/1.x reply in the API's JSON error shape."""
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/json", reply[:300]
    assert int(headers["content-length"]) == len(body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) >= {"code", "message"}
    return int(status_line.split()[1]), headers, error


@pytest.mark.parametrize(
    ("request_text", "status", "code"),
    [
        (f"GET /api/v1/models?q={'x' * 100_000} HTTP/1.1\r\nHost: h\r\n\r\n", 414, "URI_TOO_LONG"),
        (f"GET /x HTTP/1.1\r\nHost: h\r\nX-Big: {'y' * 70_000}\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
        (
            "GET /x HTTP/1.1\r\n" + "".join(f"X-{n}: v\r\n" for n in range(120)) + "\r\n",
            431,
            "HEADERS_TOO_LARGE",
        ),
        ("GET /x HTTP/9.9\r\nHost: h\r\n\r\n", 505, "HTTP_VERSION_NOT_SUPPORTED"),
        ("GET /x HTTP/1.x\r\nHost: h\r\n\r\n", 400, "BAD_REQUEST"),
        ("GET /x HTTP/1.1 extra\r\nHost: h\r\n\r\n", 400, "BAD_REQUEST"),
        ("G(T /x HTTP/1.1\r\nHost: h\r\n\r\n", 400, "BAD_REQUEST"),
        ("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "BAD_REQUEST"),
    ],
    ids=[
        "query-100k",
        "header-line",
        "header-count",
        "version",
        "bad-version",
        "syntax",
        "method-token",
        "tls",
    ],
)
def test_requests_http_server_refuses_get_the_json_error_shape(
    gateway: LocalGateway, recorder: Recorder, request_text: str, status: int, code: str
) -> None:
    reply = raw_exchange(gateway, request_text)
    got, headers, error = json_error_of(reply)
    assert (got, error["code"]) == (status, code), reply[:300]
    assert headers["connection"] == "close" and recorder.events == []


def test_any_method_token_reaches_the_handler(gateway: LocalGateway, recorder: Recorder) -> None:
    # RFC 9110 method tokens that http.server has no do_ method for: the API answers them (405 or 404).
    for method in ("PROPFIND", "M-SEARCH", "get", "X_Y"):
        reply = raw_exchange(
            gateway, f"{method} /x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert [e["requestContext"]["http"]["method"] for e in recorder.events] == [
        "PROPFIND",
        "M-SEARCH",
        "get",
        "X_Y",
    ]


def test_an_event_over_lambdas_invocation_limit_is_413(recorder: Recorder) -> None:
    with LocalGateway(recorder, TOKENS, port=0, max_event_bytes=4000) as small:
        response = call(small, "POST", "/x", body=b"\x00" * 3000, headers=[("Content-Type", "image/png")])

    assert response.status == 413 and error_of(response)["code"] == "PAYLOAD_TOO_LARGE"
    assert recorder.events == []


def test_a_response_over_lambdas_limit_is_502(
    gateway: LocalGateway, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.reply = lambda event: {"statusCode": 200, "body": "x" * (MAX_RESPONSE_BYTES + 1)}

    response = call(gateway, "GET", "/api/v1/models/big/export")

    assert response.status == 502 and error_of(response)["code"] == "RESPONSE_TOO_LARGE"
    assert any("over Lambda" in r.getMessage() for r in caplog.records)


def test_a_handler_exception_is_500_and_logged(
    gateway: LocalGateway, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(event: dict[str, Any]) -> Any:
        raise RuntimeError("handler bug")

    recorder.reply = boom

    response = call(gateway, "GET", "/api/v1/models")

    assert response.status == 500 and error_of(response)["code"] == "INTERNAL_ERROR"
    assert any(r.exc_info and "handler bug" in str(r.exc_info[1]) for r in caplog.records)
    assert call(gateway, "GET", "/api/v1/models").status == 500  # the server is still serving


@pytest.mark.parametrize(
    "result",
    [
        {"statusCode": "teapot"},
        {"statusCode": 200, "body": 5},
        {"statusCode": 200, "body": "%%", "isBase64Encoded": True},
    ],
)
def test_a_malformed_response_is_500(
    gateway: LocalGateway, recorder: Recorder, result: dict[str, Any]
) -> None:
    recorder.reply = lambda event: result

    assert call(gateway, "GET", "/x").status == 500


# --- the response --------------------------------------------------------------------------------------


def test_the_response_is_written_back_faithfully(gateway: LocalGateway, recorder: Recorder) -> None:
    blob = bytes(range(256)) * 10
    recorder.reply = lambda event: {
        "statusCode": 201,
        "headers": {
            "Content-Type": "application/octet-stream",
            "X-Heimdall-Onnx-Sha256": "abc",
            "Content-Length": "1",
        },
        "cookies": ["a=1; Path=/", "b=2"],
        "body": base64.b64encode(blob).decode(),
        "isBase64Encoded": True,
    }

    response = call(gateway, "GET", "/api/v1/models/m/export")

    assert response.status == 201
    assert body_of(response) == blob
    assert response.getheader("Content-Length") == str(len(blob))  # the gateway's, not the handler's
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("X-Heimdall-Onnx-Sha256") == "abc"
    assert response.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2"]


def test_a_result_without_status_code_is_a_json_200(gateway: LocalGateway, recorder: Recorder) -> None:
    recorder.reply = lambda event: {"items": []}

    response = call(gateway, "GET", "/x")

    assert response.status == 200 and json.loads(body_of(response)) == {"items": []}
    assert response.getheader("Content-Type") == "application/json"


def test_no_content_has_no_body(gateway: LocalGateway, recorder: Recorder) -> None:
    recorder.reply = lambda event: {"statusCode": 204}

    response = call(gateway, "DELETE", "/api/v1/models/m")

    assert response.status == 204 and body_of(response) == b""


# --- concurrency ---------------------------------------------------------------------------------------


def test_reads_run_concurrently_and_writes_one_at_a_time(gateway: LocalGateway, recorder: Recorder) -> None:
    barrier = threading.Barrier(8, timeout=10)
    active = {"now": 0, "most": 0}
    guard = threading.Lock()

    def reply(event: dict[str, Any]) -> Any:
        if event["requestContext"]["http"]["method"] == "GET":
            barrier.wait()  # breaks (and fails the request) unless all 8 GETs are inside at once
            return {"statusCode": 200, "body": event["rawPath"]}
        with guard:
            active["now"] += 1
            active["most"] = max(active["most"], active["now"])
        time.sleep(0.05)
        with guard:
            active["now"] -= 1
        return {"statusCode": 200, "body": "written"}

    recorder.reply = reply
    with ThreadPoolExecutor(8) as pool:
        reads = list(pool.map(lambda i: call(gateway, "GET", f"/api/v1/models/m{i}"), range(8)))
        writes = list(pool.map(lambda i: call(gateway, "POST", "/x", body=b"{}"), range(8)))

    assert [r.status for r in reads] == [200] * 8
    assert sorted(body_of(r) for r in reads) == sorted(f"/api/v1/models/m{i}".encode() for i in range(8))
    assert [r.status for r in writes] == [200] * 8
    assert active["most"] == 1


def test_a_prefix_goes_to_its_own_function_without_the_authorizer_or_the_lock(recorder: Recorder) -> None:
    """As the template routes /v1/ to the inference function: no JWT (it checks its keys itself), and
    its POSTs run concurrently (it serialises its own counter writes)."""
    inside = threading.Barrier(4, timeout=10)
    served: list[dict[str, Any]] = []

    def infer(event: dict[str, Any], context: Any) -> Any:
        served.append(event)
        inside.wait()  # breaks unless all 4 POSTs are inside at once, although the lock is held
        return {"statusCode": 200, "body": "inferred"}

    lock = threading.Lock()
    integrations = {"/v1/": Integration(infer, authorizer=False, serialized=False)}
    with LocalGateway(recorder, TOKENS, port=0, lock=lock, integrations=integrations) as gateway:
        with lock, ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(lambda i: call(gateway, "POST", f"/v1/infer/d{i}", body=b"{}", token=None), range(4))
            )
        assert [(a.status, body_of(a)) for a in answers] == [(200, b"inferred")] * 4
        assert (
            call(gateway, "GET", "/api/v1/models", token=None).status == 401
        )  # the API keeps its authorizer
    assert recorder.events == [] and len(served) == 4
    assert all("authorizer" not in event["requestContext"] for event in served)


def test_a_connection_is_kept_alive(gateway: LocalGateway) -> None:
    connection = http.client.HTTPConnection(gateway.host, gateway.port, timeout=10)
    for _ in range(3):
        connection.request("GET", "/api/v1/models", headers={"Authorization": f"Bearer {ADMIN}"})
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"ok"
    connection.close()


def test_port_zero_picks_a_free_port_and_stop_releases_it(recorder: Recorder) -> None:
    gateway = LocalGateway(recorder, TOKENS, port=0).start()
    port = gateway.port
    assert port != 0 and gateway.url == f"http://127.0.0.1:{port}"
    gateway.stop()

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


# --- tokens --------------------------------------------------------------------------------------------


def test_the_default_token_is_generated_and_written_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEIMDALL_API_TOKEN", raising=False)
    monkeypatch.delenv("HEIMDALL_API_TOKENS", raising=False)

    first = load_api_tokens(tmp_path / "work")
    second = load_api_tokens(tmp_path / "work")

    assert len(first.default) >= 32 and first.default != second.default
    assert second.file == tmp_path / "work" / "api-token"
    assert second.file.read_text().strip() == second.default
    assert stat.S_IMODE(second.file.stat().st_mode) == 0o600
    assert second.table == {second.default: ApiIdentity("local-user", ("heimdall/read", "heimdall/write"))}


def test_tokens_come_from_the_environment_and_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEIMDALL_API_TOKEN", "fixed-token")
    monkeypatch.setenv(
        "HEIMDALL_API_TOKENS", json.dumps({"other": {"sub": "bob", "scopes": ["heimdall/read"]}})
    )
    (tmp_path / "api-token").write_text("old")
    (tmp_path / "api-token").chmod(0o644)

    tokens = load_api_tokens(tmp_path, {"mine": {"sub": "carol", "scopes": []}})

    assert tokens.default == "fixed-token"
    assert tokens.table == {
        "fixed-token": ApiIdentity("local-user", DEFAULT_SCOPES),
        "other": ApiIdentity("bob", ("heimdall/read",)),
        "mine": ApiIdentity("carol", ()),
    }
    assert tokens.file.read_text().strip() == "fixed-token"
    assert stat.S_IMODE(tokens.file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "raw", ["not json", "[1, 2]", '{"t": {"scopes": []}}', '{"t": {"sub": "x", "scopes": [1]}}', '{"t": 3}']
)
def test_malformed_token_tables_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("HEIMDALL_API_TOKENS", raw)

    with pytest.raises(ValueError, match=r"HEIMDALL_API_TOKENS|API token"):
        load_api_tokens(tmp_path)
