"""``heimdall deploy ...`` and ``heimdall infer`` against a canned HTTP API (:mod:`tests.support.cli_fakes`).

The fake API answers with the contract's shapes (DeploymentOut, the create and rotate answers, the
download link, the inference answer); the fake storage serves presigned downloads. Each test asserts
on what the command sent (method, path, body, which bearer) and on what it printed and its exit code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli_fakes import (  # noqa: F401 - api_fixture, storage_fixture, isolated_fixture are fixtures
    TOKEN,
    FakeServer,
    Reply,
    api_error,
    api_fixture,
    assert_error,
    isolated_fixture,
    json_reply,
    leftovers,
    run,
    storage_fixture,
)
from typer.testing import CliRunner

from heimdall.cli import api_client, api_errors, app

API_KEY = "hdk_0123456789abcdef_" + "s" * 43
NEW_KEY = "hdk_fedcba9876543210_" + "n" * 43
ARTIFACT = b"PK\x03\x04 edge package bytes " * 500
ARTIFACT_SHA256 = hashlib.sha256(ARTIFACT).hexdigest()

# --- canned resources ------------------------------------------------------------------------------


def deployment_out(
    deployment_id: str = "d1", deployment_type: str = "platform_endpoint", **changes: Any
) -> dict[str, Any]:
    platform = deployment_type == "platform_endpoint"
    deployment = {
        "deployment_id": deployment_id,
        "model_id": "m1",
        "export_job_id": "j1",
        "type": deployment_type,
        "name": "shelf-detector",
        "status": "ACTIVE",
        "tier": "free" if platform else None,
        "apply_normalization": False,
        "options": {},
        "created_at": "2025-03-04T05:06:07+00:00",
        "updated_at": "2025-03-04T05:06:07+00:00",
        "key_id": "0123456789abcdef" if platform else None,
        "endpoint": f"/v1/infer/{deployment_id}" if platform else None,
        "artifact": None
        if platform
        else {
            "key": f"deployments/{deployment_id}/edge.zip",
            "file_name": "edge.zip",
            "size_bytes": len(ARTIFACT),
            "sha256": ARTIFACT_SHA256,
        },
        "usage": {
            "request_count": 7,
            "last_request_at": "2025-03-05T01:02:03+00:00",
            "total_inference_ms": 21.5,
        }
        if platform
        else None,
    }
    return {**deployment, **changes}


def download_link(storage: FakeServer, deployment_id: str = "d1", **changes: Any) -> dict[str, Any]:
    storage.on("GET", f"/artifacts/deployments/{deployment_id}/edge.zip", Reply(200, ARTIFACT))
    link = {
        "url": f"{storage.url}/artifacts/deployments/{deployment_id}/edge.zip?X-Amz-Signature=sig",
        "expires_at": "2025-03-04T06:06:07+00:00",
        "file": "edge.zip",
        "key": f"deployments/{deployment_id}/edge.zip",
        "size_bytes": len(ARTIFACT),
        "sha256": ARTIFACT_SHA256,
    }
    return {**link, **changes}


def inference_answer() -> dict[str, Any]:
    return {
        "deployment_id": "d1",
        "model_id": "m1",
        "model_version": "1.0.0",
        "outputs": {"boxes": [[0.125, 0.5, 0.75, 1.0, 2.5, 3.0, 4.0]], "label": [[3]]},
        "latency_ms": 3.25,
        "normalized": False,
    }


def infer_run(api: FakeServer, *args: str | Path) -> Any:
    """``heimdall infer ...`` or ``deploy usage|health``: they take --api and --key but no --token."""
    return run(api, *args, token=None)


# --- deploy create ---------------------------------------------------------------------------------


def test_create_platform_endpoint_prints_the_key_once_with_a_warning(api: FakeServer) -> None:
    created = deployment_out(tier="pro", apply_normalization=True)
    api.on(
        "POST",
        "/api/v1/deployments",
        json_reply({"deployment": created, "api_key": API_KEY, "download": None}, 201),
    )
    result = run(
        api,
        "deploy",
        "create",
        "--model",
        "m1",
        "--type",
        "platform_endpoint",
        "--name",
        "shelf-detector",
        "--tier",
        "pro",
        "--normalize",
        "--precision",
        "int8",
    )
    assert result.exit_code == 0, result.stderr
    (seen,) = api.seen
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.json() == {
        "type": "platform_endpoint",
        "name": "shelf-detector",
        "model_id": "m1",
        "options": {"tier": "pro", "apply_normalization": True, "precision": "int8"},
    }
    assert result.stdout.count(API_KEY) == 1
    for text in ("will not be shown again", f"POST {api.url}/v1/infer/d1", "pro", "applied", "ACTIVE"):
        assert text in result.stdout, result.stdout


def test_create_json_is_the_answer_and_holds_the_key(api: FakeServer) -> None:
    answer = {"deployment": deployment_out(), "api_key": API_KEY, "download": None}
    api.on("POST", "/api/v1/deployments", json_reply(answer, 201))
    result = run(
        api, "deploy", "create", "--job", "j1", "--type", "platform_endpoint", "--name", "n", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {**answer, "downloaded": None}
    assert "will not be shown again" in result.stderr
    assert api.seen[0].json() == {
        "type": "platform_endpoint",
        "name": "n",
        "export_job_id": "j1",
        "options": {},
    }


def test_create_download_with_output_uses_the_link_in_the_answer(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    created = deployment_out(deployment_type="download", options={"file": "bundle"})
    answer = {"deployment": created, "api_key": None, "download": download_link(storage)}
    api.on("POST", "/api/v1/deployments", json_reply(answer, 201))
    result = run(
        api,
        "deploy",
        "create",
        "--job",
        "j1",
        "--type",
        "download",
        "--name",
        "n",
        "--file",
        "bundle",
        "-o",
        "a.zip",
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a.zip").read_bytes() == ARTIFACT
    assert [(s.method, s.path) for s in api.seen] == [("POST", "/api/v1/deployments")]
    assert api.seen[0].json()["options"] == {"file": "bundle"}
    (fetched,) = storage.seen
    assert "authorization" not in fetched.headers
    assert fetched.query == {"X-Amz-Signature": ["sig"]}
    assert "created deployment d1" in result.stderr
    assert "API key" not in result.stdout
    assert ARTIFACT_SHA256 in result.stdout and "matches the API's" in result.stdout
    assert leftovers(tmp_path) == []


def test_create_edge_package_asks_for_the_link_when_the_answer_has_none(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    created = deployment_out(deployment_type="edge_package")
    api.on(
        "POST",
        "/api/v1/deployments",
        json_reply({"deployment": created, "api_key": None, "download": None}, 201),
    )
    api.on("GET", "/api/v1/deployments/d1/download", json_reply(download_link(storage)))
    args = (
        "deploy",
        "create",
        "--model",
        "m1",
        "--type",
        "edge_package",
        "--name",
        "n",
        "--precision",
        "int8",
    )
    result = run(api, *args, "-o", "edge.zip", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["deployment"]["type"] == "edge_package"
    assert summary["downloaded"]["sha256"] == ARTIFACT_SHA256 and summary["downloaded"]["sha256_checked"]
    assert (tmp_path / "edge.zip").read_bytes() == ARTIFACT
    assert api.seen[0].json()["options"] == {"precision": "int8"}
    assert api.seen[1].headers["authorization"] == f"Bearer {TOKEN}"


def test_create_container_sends_the_triton_image(api: FakeServer) -> None:
    created = deployment_out(deployment_type="container", options={"triton_image": "nvcr.io/triton:24.05"})
    api.on(
        "POST",
        "/api/v1/deployments",
        json_reply({"deployment": created, "api_key": None, "download": None}, 201),
    )
    args = ("deploy", "create", "--model", "m1", "--type", "container", "--name", "n")
    result = run(api, *args, "--triton-image", "nvcr.io/triton:24.05")
    assert result.exit_code == 0, result.stderr
    assert api.seen[0].json()["options"] == {"triton_image": "nvcr.io/triton:24.05"}
    assert "nvcr.io/triton:24.05" in result.stdout and "edge.zip" in result.stdout


def test_create_refused_by_the_api_is_an_error(api: FakeServer) -> None:
    api.on("POST", "/api/v1/deployments", api_error(409, "NO_EXPORT_PACKAGE", "model m1 was imported"))
    args = ("deploy", "create", "--model", "m1", "--type", "edge_package", "--name", "n", "-o", "e.zip")
    assert_error(run(api, *args), "NO_EXPORT_PACKAGE", "model m1 was imported")
    assert not Path("e.zip").exists()


# --- usage errors ----------------------------------------------------------------------------------

CREATE = ("deploy", "create", "--name", "n")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param([*CREATE, "--type", "download"], "exactly one of --model and --job", id="no-source"),
        pytest.param([*CREATE, "--type", "download", "--model", "m", "--job", "j"], "exactly one", id="both"),
        pytest.param([*CREATE, "--model", "m"], "--type", id="no-type"),
        pytest.param([*CREATE, "--model", "m", "--type", "lambda"], "--type", id="unknown-type"),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "download", "--tier", "pro"], "--tier goes", id="tier"
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "edge_package", "--no-normalize"],
            "--normalize goes",
            id="norm",
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "container", "--precision", "fp16"],
            "--precision goes with --type platform_endpoint or edge_package only",
            id="precision",
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "platform_endpoint", "--tier", "gold"],
            "--tier",
            id="bad-tier",
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "container", "--file", "bundle"], "--file goes", id="file"
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "download", "--triton-image", "x"],
            "--triton-image",
            id="image",
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "platform_endpoint", "-o", "x.zip"],
            "no file to download",
            id="o",
        ),
        pytest.param(
            [*CREATE, "--model", "m", "--type", "download", "-o", "no/x.zip"], "does not exist", id="dir"
        ),
        pytest.param(["deploy", "download", "d1"], "--output", id="download-without-output"),
        pytest.param(["deploy", "list", "--limit", "0"], "--limit", id="limit-zero"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(api: FakeServer, args: list[str], says: str) -> None:
    result = run(api, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert says in result.stderr, result.stderr
    assert api.seen == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        pytest.param(b"not json at all", "not valid JSON", id="not-json"),
        pytest.param(b'{"input": [1, 2', "not valid JSON", id="truncated"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b'{"input": [NaN]}', "NaN", id="nan"),
        pytest.param(b'{"input": [1], "input": [2]}', "duplicate key", id="duplicate-key"),
        pytest.param(b'{"input": ["\xff"]}', "UTF-8", id="bad-utf8"),
        pytest.param(b"[" * 200 + b"]" * 200, "deeper", id="too-deep"),
        pytest.param(b'"pixels"', "it is a string", id="string"),
        pytest.param(b"3.5", "it is a number", id="number"),
        pytest.param(b'{"image": [1, 2]}', "it has the keys image", id="other-key"),
        pytest.param(
            b'{"input": [1], "inputs": {"x": [1]}}', "it has the keys input, inputs", id="both-keys"
        ),
        pytest.param(b'{"input": {"x": [1]}}', '"input" is an object, not a list', id="input-object"),
        pytest.param(b'{"inputs": [[1]]}', '"inputs" is a list, not an object', id="inputs-list"),
        pytest.param(b'{"inputs": {}}', '"inputs" names no input', id="inputs-empty"),
        pytest.param(b'{"inputs": {"x": "abc", "y": [1]}}', '"x" is a string, not a list', id="inputs-value"),
        pytest.param(b'{"inputs": {"": [1]}}', "empty name", id="inputs-empty-name"),
    ],
)
def test_infer_refuses_input_files_it_cannot_send(
    api: FakeServer, tmp_path: Path, content: bytes, says: str
) -> None:
    (tmp_path / "in.json").write_bytes(content)
    result = infer_run(api, "infer", "d1", "--key", API_KEY, "--input", "in.json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "--input" in result.stderr and says in result.stderr, result.stderr
    assert api.seen == []


def test_infer_refuses_a_missing_or_oversized_file_and_a_missing_key(
    api: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = infer_run(api, "infer", "d1", "--key", API_KEY, "--input", "nope.json")
    assert missing.exit_code == 2 and "nope.json is not a file" in missing.stderr
    monkeypatch.setattr("heimdall.cli.endpoint.INPUT_MAX_BYTES", 64)
    (tmp_path / "big.json").write_text(json.dumps({"input": list(range(100))}))
    big = infer_run(api, "infer", "d1", "--key", API_KEY, "--input", "big.json")
    assert big.exit_code == 2 and "larger than the API takes" in big.stderr
    (tmp_path / "in.json").write_text("[1]")
    no_key = infer_run(api, "infer", "d1", "--input", "in.json")
    assert no_key.exit_code == 2 and "HEIMDALL_API_KEY" in no_key.stderr
    usage = infer_run(api, "deploy", "usage", "d1")
    assert usage.exit_code == 2 and "--key" in usage.stderr
    assert api.seen == []


# --- get, list, activate, deactivate, delete, history, rotate-key ----------------------------------


def test_management_commands_send_what_the_contract_says(api: FakeServer) -> None:
    api.on("GET", "/api/v1/deployments/d1", json_reply(deployment_out()))
    api.on(
        "GET",
        "/api/v1/deployments",
        json_reply({"items": [deployment_out("d1"), deployment_out("d2", "download")], "next_cursor": None}),
    )
    api.on("PATCH", "/api/v1/deployments/d1/deactivate", json_reply(deployment_out(status="INACTIVE")))
    api.on("PATCH", "/api/v1/deployments/d1/activate", json_reply(deployment_out()))
    api.on("DELETE", "/api/v1/deployments/d2", Reply(204))

    got = run(api, "deploy", "get", "d1")
    assert got.exit_code == 0, got.stderr
    for text in (
        "deployment d1",
        "shelf-detector",
        "platform_endpoint",
        "0123456789abcdef",
        "/v1/infer/d1",
        "7",
    ):
        assert text in got.stdout
    listed = run(api, "deploy", "list", "--model", "m1", "--limit", "5")
    assert listed.exit_code == 0 and "d1" in listed.stdout and "download" in listed.stdout
    deactivated = run(api, "deploy", "deactivate", "d1", "--json")
    assert deactivated.exit_code == 0 and json.loads(deactivated.stdout)["status"] == "INACTIVE"
    activated = run(api, "deploy", "activate", "d1")
    assert activated.exit_code == 0 and "ACTIVE" in activated.stdout
    deleted = run(api, "deploy", "delete", "d2", "--json")
    assert deleted.exit_code == 0 and json.loads(deleted.stdout) == {"deployment_id": "d2", "deleted": True}

    assert [(s.method, s.path) for s in api.seen] == [
        ("GET", "/api/v1/deployments/d1"),
        ("GET", "/api/v1/deployments"),
        ("PATCH", "/api/v1/deployments/d1/deactivate"),
        ("PATCH", "/api/v1/deployments/d1/activate"),
        ("DELETE", "/api/v1/deployments/d2"),
    ]
    assert api.seen[1].query == {"model_id": ["m1"], "limit": ["5"]}
    assert all(s.headers["authorization"] == f"Bearer {TOKEN}" for s in api.seen)


def test_list_json_follows_cursors(api: FakeServer) -> None:
    api.on(
        "GET",
        "/api/v1/deployments",
        json_reply({"items": [deployment_out("d1")], "next_cursor": "c1"}),
        json_reply({"items": [deployment_out("d2")], "next_cursor": None}),
    )
    result = run(api, "deploy", "list", "--all", "--json")
    assert result.exit_code == 0, result.stderr
    assert [d["deployment_id"] for d in json.loads(result.stdout)["items"]] == ["d1", "d2"]
    assert api.seen[1].query == {"limit": ["50"], "cursor": ["c1"]}


def test_history_shows_each_entry(api: FakeServer) -> None:
    items = [
        {
            "at": "2025-03-04T05:06:07+00:00",
            "actor": "alice",
            "action": "created",
            "before": None,
            "after": "ACTIVE",
            "detail": {"type": "platform_endpoint"},
        },
        {
            "at": "2025-03-04T06:00:00+00:00",
            "actor": "bob",
            "action": "deactivated",
            "before": "ACTIVE",
            "after": "INACTIVE",
            "detail": {},
        },
    ]
    api.on("GET", "/api/v1/deployments/d1/history", json_reply({"items": items}))
    result = run(api, "deploy", "history", "d1")
    assert result.exit_code == 0, result.stderr
    for text in ("created", "alice", "– → ACTIVE", "deactivated", "ACTIVE → INACTIVE", "2025-03-04 06:00"):
        assert text in result.stdout, result.stdout
    as_json = run(api, "deploy", "history", "d1", "--json")
    assert json.loads(as_json.stdout)["items"] == items


def test_rotate_key_prints_the_new_key_once(api: FakeServer) -> None:
    api.on(
        "POST",
        "/api/v1/deployments/d1/rotate-key",
        json_reply({"deployment": deployment_out(), "api_key": NEW_KEY}),
    )
    result = run(api, "deploy", "rotate-key", "d1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count(NEW_KEY) == 1
    assert "previous key no longer works" in result.stdout and "will not be shown again" in result.stdout
    as_json = run(api, "deploy", "rotate-key", "d1", "--json")
    assert json.loads(as_json.stdout)["api_key"] == NEW_KEY
    assert [(s.method, s.path) for s in api.seen] == [("POST", "/api/v1/deployments/d1/rotate-key")] * 2


@pytest.mark.parametrize(
    ("args", "method", "path", "reply", "code", "says"),
    [
        pytest.param(
            ["get", "nope"],
            "GET",
            "/api/v1/deployments/nope",
            api_error(404, "NOT_FOUND", "deployment nope not found"),
            "NOT_FOUND",
            "nope not found",
            id="404",
        ),
        pytest.param(
            ["activate", "d1"],
            "PATCH",
            "/api/v1/deployments/d1/activate",
            api_error(409, "CONFLICT", "deployment d1 is already ACTIVE"),
            "CONFLICT",
            "already ACTIVE",
            id="409",
        ),
        pytest.param(
            ["download", "d1", "-o", "x.zip"],
            "GET",
            "/api/v1/deployments/d1/download",
            api_error(409, "CONFLICT", "a platform endpoint has no artifact"),
            "CONFLICT",
            "no artifact",
            id="download-409",
        ),
        pytest.param(
            ["list"],
            "GET",
            "/api/v1/deployments",
            json_reply({"message": "Unauthorized"}, 401),
            "UNAUTHORIZED",
            "Unauthorized",
            id="401",
        ),
        pytest.param(
            ["delete", "d1"],
            "DELETE",
            "/api/v1/deployments/d1",
            api_error(429, "TOO_MANY_REQUESTS", "slow down"),
            "TOO_MANY_REQUESTS",
            "retry later",
            id="429",
        ),
    ],
)
def test_api_errors_are_printed_with_their_code(
    api: FakeServer, args: list[str], method: str, path: str, reply: Reply, code: str, says: str
) -> None:
    api.on(method, path, reply)
    assert_error(run(api, "deploy", *args), code, says)
    assert [(s.method, s.path) for s in api.seen] == [(method, path)]


def test_ids_stay_one_path_segment(api: FakeServer) -> None:
    assert_error(run(api, "deploy", "get", ".."), "NOT_FOUND")
    assert_error(infer_run(api, "deploy", "health", "a/b", "--key", API_KEY), "NOT_FOUND")
    assert [s.path for s in api.seen] == ["/api/v1/deployments/%2E%2E", "/v1/deployments/a%2Fb/health"]


# --- deploy download -------------------------------------------------------------------------------


def test_download_writes_the_artifact_and_checks_its_hash(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    api.on("GET", "/api/v1/deployments/d1/download", json_reply(download_link(storage)))
    result = run(api, "deploy", "download", "d1", "-o", "edge.zip", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary == {
        "deployment_id": "d1",
        "output": "edge.zip",
        "size_bytes": len(ARTIFACT),
        "sha256": ARTIFACT_SHA256,
        "sha256_checked": True,
        "key": "deployments/d1/edge.zip",
    }
    assert (tmp_path / "edge.zip").read_bytes() == ARTIFACT
    assert "authorization" not in storage.seen[0].headers

    api.on("GET", "/api/v1/deployments/d1/download", json_reply(download_link(storage, sha256="0" * 64)))
    assert_error(run(api, "deploy", "download", "d1", "-o", "again.zip"), "CHECKSUM_MISMATCH", "again.zip")
    assert not (tmp_path / "again.zip").exists()
    assert leftovers(tmp_path) == []


# --- heimdall infer, deploy usage|health -----------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "sent"),
    [
        pytest.param({"inputs": {"image": [[0.5, 1]]}}, {"inputs": {"image": [[0.5, 1]]}}, id="named"),
        pytest.param({"input": [[0.5, 1]]}, {"input": [[0.5, 1]]}, id="single"),
        pytest.param([[0.5, 1]], {"input": [[0.5, 1]]}, id="bare-list"),
        pytest.param(
            {"inputs": {"image": {"dtype": "float32", "shape": [1, 1], "data_b64": "AACAPw=="}}},
            {"inputs": {"image": {"dtype": "float32", "shape": [1, 1], "data_b64": "AACAPw=="}}},
            id="binary-tensor",
        ),
    ],
)
def test_infer_sends_the_body_with_the_api_key_not_the_token(
    api: FakeServer, tmp_path: Path, document: Any, sent: Any
) -> None:
    (tmp_path / "in.json").write_text(json.dumps(document))
    api.on("POST", "/v1/infer/d1", json_reply(inference_answer()))
    result = run(api, "infer", "d1", "--key", API_KEY, "--input", "in.json", "--json", token=None)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == inference_answer()
    (seen,) = api.seen
    assert seen.method == "POST" and seen.path == "/v1/infer/d1"
    assert seen.json() == sent
    assert seen.headers["authorization"] == f"Bearer {API_KEY}"


def test_infer_never_sends_the_api_token(api: FakeServer, tmp_path: Path) -> None:
    token_file = tmp_path / ".heimdall-local" / "api-token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    (tmp_path / "in.json").write_text("[1]")
    api.on("POST", "/v1/infer/d1", json_reply(inference_answer()))
    assert infer_run(api, "infer", "d1", "--key", API_KEY, "--input", "in.json").exit_code == 0
    assert api.seen[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_infer_table_shows_outputs_latency_and_rate_limit(
    api: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEIMDALL_API_KEY", API_KEY)
    api.on(
        "POST",
        "/v1/infer/d1",
        json_reply(inference_answer(), 200, **{"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9"}),
    )
    result = CliRunner().invoke(
        app,
        ["infer", "d1", "--input", "-", "--api", api.url],
        input='{"input": [[1, 2]]}',
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.stderr
    for text in (
        "boxes",
        "[1, 7]",
        "0.125, 0.5, 0.75, 1, 2.5, 3, …",
        "label",
        "[1, 1]",
        "m1 version 1.0.0",
        "3.25 ms",
        "9 of 10 left in the sliding minute",
    ):
        assert text in result.stdout, result.stdout
    assert api.seen[0].json() == {"input": [[1, 2]]}
    assert api.seen[0].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("reply", "code", "says"),
    [
        pytest.param(
            json_reply(
                {"error": {"code": "RATE_LIMITED", "message": "10 per minute"}}, 429, **{"Retry-After": "12"}
            ),
            "RATE_LIMITED",
            "10 per minute (retry after 12 s)",
            id="429",
        ),
        pytest.param(api_error(401, "UNAUTHORIZED", "invalid API key"), "UNAUTHORIZED", "--key", id="401"),
        pytest.param(
            api_error(409, "DEPLOYMENT_INACTIVE", "deployment d1 is INACTIVE"),
            "DEPLOYMENT_INACTIVE",
            "INACTIVE",
            id="409",
        ),
        pytest.param(
            api_error(400, "INVALID_INPUT", "input 'image' expects [1, 3, 8, 8], got [1, 2]"),
            "INVALID_INPUT",
            "expects [1, 3, 8, 8]",
            id="400",
        ),
        pytest.param(
            api_error(404, "NOT_FOUND", "deployment d1 not found"), "NOT_FOUND", "not found", id="404"
        ),
    ],
)
def test_infer_errors_are_printed_with_their_code(
    api: FakeServer, tmp_path: Path, reply: Reply, code: str, says: str
) -> None:
    (tmp_path / "in.json").write_text("[1]")
    api.on("POST", "/v1/infer/d1", reply)
    assert_error(infer_run(api, "infer", "d1", "--key", API_KEY, "--input", "in.json"), code, says)


def test_usage_and_health_use_the_key(api: FakeServer) -> None:
    usage = {
        "deployment_id": "d1",
        "request_count": 42,
        "last_request_at": "2025-03-05T01:02:03+00:00",
        "total_inference_ms": 130.5,
    }
    health = {
        "deployment_id": "d1",
        "status": "ACTIVE",
        "model_id": "m1",
        "model_version": "1.0.0",
        "model_loaded": True,
        "tier": "pro",
    }
    api.on("GET", "/v1/deployments/d1/usage", json_reply(usage))
    api.on("GET", "/v1/deployments/d1/health", json_reply(health))
    shown = infer_run(api, "deploy", "usage", "d1", "--key", API_KEY)
    assert shown.exit_code == 0, shown.stderr
    assert "42" in shown.stdout and "130.5 ms" in shown.stdout and "2025-03-05 01:02" in shown.stdout
    as_json = infer_run(api, "deploy", "health", "d1", "--key", API_KEY, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == health
    healthy = infer_run(api, "deploy", "health", "d1", "--key", API_KEY)
    assert "m1 version 1.0.0" in healthy.stdout and "pro" in healthy.stdout
    assert [s.path for s in api.seen] == [
        "/v1/deployments/d1/usage",
        "/v1/deployments/d1/health",
        "/v1/deployments/d1/health",
    ]
    assert {s.headers["authorization"] for s in api.seen} == {f"Bearer {API_KEY}"}


# --- the client on its own -------------------------------------------------------------------------


def test_client_rate_limit_message_reads_retry_after(api: FakeServer) -> None:
    when = "Wed, 05 Mar 2025 01:02:03 GMT"
    error = {"error": {"code": "RATE_LIMITED", "message": "too many"}}
    api.on("GET", "/v1/deployments/d1/usage", json_reply(error, 429, **{"Retry-After": when}))
    with api_client.ApiClient(api.url, TOKEN) as client, pytest.raises(api_errors.ApiError) as caught:
        client.deployment_usage("d1", API_KEY)
    assert caught.value.status == 429 and caught.value.code == "RATE_LIMITED"
    assert caught.value.message == f"too many (retry after {when})"
    assert caught.value.retry_after == when
    assert api.seen[0].headers["authorization"] == f"Bearer {API_KEY}"
