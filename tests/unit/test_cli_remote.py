"""The remote commands (``heimdall list|export|import|jobs``) against a canned HTTP API.

Two real HTTP servers run on loopback in threads (:mod:`tests.support.cli_fakes`): one stands in for the
API (answers shaped like the contract's routes), the other for S3 on another port (a presigned GET
target and a presigned POST form target). Both record every request, so the tests assert on what the
commands sent as well as on their output, files and exit codes. The commands run in-process through
typer's CliRunner.
"""

from __future__ import annotations

import email.parser
import email.policy
import gzip
import hashlib
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli_fakes import (  # noqa: F401 - api_fixture, storage_fixture, isolated_fixture are fixtures
    TOKEN,
    FakeServer,
    Reply,
    Seen,
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

from heimdall import __version__
from heimdall.bundle import parse_metadata, write_bundle
from heimdall.cli import api_client, api_errors, api_model_routes, app
from heimdall.testing.sample_bundles import sample_bundle_metadata

ONNX = b"\x08\x07not-really-onnx" * 64
ONNX_SHA256 = hashlib.sha256(ONNX).hexdigest()

# --- canned resources ------------------------------------------------------------------------------


def bundle_bytes(*, compress: bool = False) -> bytes:
    bundle, _ = parse_metadata(sample_bundle_metadata(num_samples=3))
    out = io.BytesIO()
    write_bundle(bundle, ONNX, out, compress=compress)
    return out.getvalue()


def model_out(model_id: str = "m1", **changes: Any) -> dict[str, Any]:
    model = {
        "model_id": model_id,
        "model_name": "localization-net-v1",
        "display_name": "localization-net-v1",
        "version": "1.0.0",
        "architecture": "localization_net",
        "source": "export",
        "original_model_id": None,
        "onnx_sha256": ONNX_SHA256,
        "onnx_size_bytes": len(ONNX),
        "opset": 17,
        "input_shape": [1, 3, 128, 32],
        "output_shape": [[1, 2], [1, 2]],
        "components": ["training_config", "performance_metrics"],
        "metrics": {"final_val_accuracy": 0.93, "final_val_loss": 0.0145},
        "export_job_id": "j0",
        "created_at": "2025-03-04T05:06:07+00:00",
        "updated_at": "2025-03-04T05:06:07+00:00",
    }
    return {**model, **changes}


def job_out(job_id: str = "j1", status: str = "SUBMITTED", **changes: Any) -> dict[str, Any]:
    job = {
        "job_id": job_id,
        "model_name": "localization-net-v1",
        "version": "1.0.0",
        "status": status,
        "formats": ["onnx", "onnx_int8"],
        "checkpoint_uri": "s3://ingest/checkpoints/net/1/model.safetensors",
        "manifest_uri": None,
        "batch_job_id": "b1",
        "output_prefix": f"s3://artifacts/exports/{job_id}/",
        "reason": None,
        "exit_code": None,
        "result": None,
        "model_id": None,
        "is_default": False,
        "created_at": "2025-03-04T05:06:07+00:00",
        "updated_at": "2025-03-04T05:06:07+00:00",
    }
    return {**job, **changes}


def import_out(status: str, **changes: Any) -> dict[str, Any]:
    record = {
        "import_id": "i1",
        "status": status,
        "model_id": None,
        "error_code": None,
        "reason": None,
        "components": None,
        "created_at": "2025-03-04T05:06:07+00:00",
        "updated_at": "2025-03-04T05:06:07+00:00",
    }
    return {**record, **changes}


# --- heimdall list ---------------------------------------------------------------------------------


def test_list_renders_a_table_and_sends_the_token_and_user_agent(api: FakeServer) -> None:
    api.on(
        "GET",
        "/api/v1/models",
        json_reply({"items": [model_out("m1"), model_out("m2", metrics={})], "next_cursor": None}),
    )
    result = run(api, "list")
    assert result.exit_code == 0, result.stderr
    for text in (
        "ID",
        "Model",
        "Accuracy / val loss",
        "m1",
        "m2",
        "localization-net-v1",
        "1.0.0",
        "93.0% / 0.0145",
        "– / –",
        "2025-03-04 05:06",
    ):
        assert text in result.stdout
    (seen,) = api.requests("GET", "/api/v1/models")
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["user-agent"] == f"heimdall/{__version__}"
    assert seen.query == {"limit": ["50"]}


def test_list_all_follows_cursors_and_json_is_the_only_stdout(api: FakeServer) -> None:
    api.on(
        "GET",
        "/api/v1/models",
        json_reply({"items": [model_out("m1")], "next_cursor": "c1"}),
        json_reply({"items": [model_out("m2")], "next_cursor": None}),
    )
    result = run(api, "list", "--all", "--limit", "1", "--name", "localization-net-v1", "--json")
    assert result.exit_code == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [m["model_id"] for m in listing["items"]] == ["m1", "m2"]
    assert listing["next_cursor"] is None
    first, second = api.requests("GET", "/api/v1/models")
    assert first.query == {"limit": ["1"], "name": ["localization-net-v1"]}
    assert second.query == {"limit": ["1"], "name": ["localization-net-v1"], "cursor": ["c1"]}


def test_list_one_page_says_how_to_get_more(api: FakeServer) -> None:
    api.on("GET", "/api/v1/models", json_reply({"items": [model_out("m1")], "next_cursor": "c1"}))
    result = run(api, "list")
    assert result.exit_code == 0
    assert "--cursor c1" in result.stderr
    assert len(api.requests("GET", "/api/v1/models")) == 1


def test_api_url_and_token_defaults(api: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("GET", "/api/v1/models", json_reply({"items": [], "next_cursor": None}))
    monkeypatch.setenv("HEIMDALL_API_URL", api.url)
    token_file = tmp_path / ".heimdall-local" / "api-token"
    token_file.parent.mkdir()
    token_file.write_text("from-the-local-stack\n")

    def sent_token(*args: str, env: dict[str, str] | None = None) -> str | None:
        result = CliRunner().invoke(app, ["list", *args], env=env)
        assert result.exit_code == 0, result.stderr
        return api.seen[-1].headers.get("authorization")

    assert sent_token() == "Bearer from-the-local-stack"
    assert sent_token(env={"HEIMDALL_API_TOKEN": "from-env"}) == "Bearer from-env"
    assert sent_token("--token", "explicit", env={"HEIMDALL_API_TOKEN": "from-env"}) == "Bearer explicit"
    token_file.unlink()
    assert sent_token() is None


# --- errors ----------------------------------------------------------------------------------------


def test_api_error_body_becomes_the_error_line(api: FakeServer) -> None:
    api.on("GET", "/api/v1/models/nope", api_error(404, "NOT_FOUND", "model nope not found"))
    api.on("GET", "/api/v1/models/nope/export", api_error(404, "NOT_FOUND", "model nope not found"))
    assert_error(run(api, "export", "nope", "-o", "x.heimdall"), "NOT_FOUND", "model nope not found")
    assert not Path("x.heimdall").exists()


def test_gateway_and_html_errors_get_a_code_from_the_status(api: FakeServer) -> None:
    api.on("GET", "/api/v1/models", json_reply({"message": "Unauthorized"}, 401))
    assert_error(run(api, "list", token=None), "UNAUTHORIZED", "Unauthorized", "no token was sent")
    api.on("GET", "/api/v1/models", Reply(502, b"<html><body><h1>Bad Gateway</h1> upstream</body></html>"))
    assert_error(run(api, "list"), "BAD_GATEWAY", "HTTP 502", "Bad Gateway upstream")


def test_connection_refused_names_the_local_stack() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(f"http://127.0.0.1:{port}", "jobs", "get", "j1")
    assert_error(result, "API_UNREACHABLE", f"127.0.0.1:{port}", "heimdall local up")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["export", "m1"], id="export-without-output"),
        pytest.param(["export", "m1", "-o", "b.heimdall", "-n", "11"], id="too-many-samples"),
        pytest.param(["export", "m1", "-o", "."], id="output-is-a-folder"),
        pytest.param(["export", "m1", "-o", "missing/b.heimdall"], id="output-folder-missing"),
        pytest.param(["list", "--limit", "0"], id="limit-zero"),
        pytest.param(["import", "missing.heimdall"], id="import-missing-file"),
        pytest.param(["jobs", "create"], id="create-without-source"),
        pytest.param(
            ["jobs", "create", "--model-id", "m1", "--checkpoint", "s3://i/checkpoints/c"], id="both"
        ),
        pytest.param(
            ["jobs", "create", "--model-id", "m1", "--manifest", "s3://i/m.json"], id="manifest-alone"
        ),
        pytest.param(["jobs", "create", "--checkpoint", "/tmp/c.safetensors"], id="checkpoint-not-s3"),
        pytest.param(["jobs", "create", "--model-id", "m1", "--formats", "onnx,gif"], id="unknown-format"),
        pytest.param(["jobs", "download", "j1", "-o", "p.tar.gz", "--file", "zip"], id="unknown-file"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(api: FakeServer, args: list[str]) -> None:
    result = run(api, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert api.seen == []


def test_malformed_api_url_is_a_usage_error() -> None:
    result = run("ftp://example.com", "list")
    assert result.exit_code == 2
    assert "--api" in result.stderr


# --- heimdall export -------------------------------------------------------------------------------


def test_export_writes_the_bundle_and_reports_it(api: FakeServer, tmp_path: Path) -> None:
    body = bundle_bytes()
    api.on(
        "GET",
        "/api/v1/models/m1/export",
        Reply(
            200,
            body,
            {
                "Content-Type": "application/json",
                "Content-Disposition": 'attachment; filename="localization-net-v1-v1.0.0.heimdall"',
                "X-Heimdall-Onnx-Sha256": ONNX_SHA256,
            },
        ),
    )
    result = run(
        api, "export", "m1", "-o", "out.heimdall", "--no-config", "--no-samples", "-n", "3", "-d", "for QA"
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.heimdall").read_bytes() == body
    for text in (
        "out.heimdall",
        "localization-net-v1 1.0.0",
        "training_config",
        "sample_predictions (3)",
        ONNX_SHA256,
        "matches the API's",
        f"{len(body):,} bytes",
    ):
        assert text in result.stdout, result.stdout
    (seen,) = api.seen
    assert seen.query == {
        "include_config": ["false"],
        "include_samples": ["false"],
        "num_samples": ["3"],
        "description": ["for QA"],
    }
    assert leftovers(tmp_path) == []


def test_export_follows_the_redirect_without_the_token(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    body = bundle_bytes(compress=True)
    location = f"{storage.url}/artifacts/downloads/m1/b1/net-v1.0.0.heimdall?X-Amz-Signature=abc"
    api.on(
        "GET",
        "/api/v1/models/m1/export",
        json_reply(
            {"url": location, "size_bytes": len(body)},
            307,
            Location=location,
            **{"X-Heimdall-Onnx-Sha256": ONNX_SHA256},  # on the redirect itself: still checked
        ),
    )
    storage.on("GET", "/artifacts/downloads/m1/b1/net-v1.0.0.heimdall", Reply(200, body))
    result = run(api, "export", "m1", "-o", "out.heimdall", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["redirected"] is True
    assert summary["onnx_sha256_checked"] is True
    assert summary["compressed"] is True
    assert summary["onnx_sha256"] == ONNX_SHA256
    assert summary["components"] == [
        "training_config",
        "performance_metrics",
        "normalization_stats",
        "sample_predictions",
    ]
    assert (tmp_path / "out.heimdall").read_bytes() == body
    assert api.seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    (fetched,) = storage.seen
    assert "authorization" not in fetched.headers
    assert fetched.query == {"X-Amz-Signature": ["abc"]}


def test_export_refuses_a_bundle_whose_onnx_hash_differs_from_the_header(
    api: FakeServer, tmp_path: Path
) -> None:
    (tmp_path / "out.heimdall").write_bytes(b"previous")
    api.on(
        "GET", "/api/v1/models/m1/export", Reply(200, bundle_bytes(), {"X-Heimdall-Onnx-Sha256": "0" * 64})
    )
    assert_error(
        run(api, "export", "m1", "-o", "out.heimdall"), "CHECKSUM_MISMATCH", "X-Heimdall-Onnx-Sha256"
    )
    assert (tmp_path / "out.heimdall").read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_export_refuses_what_is_not_a_bundle(api: FakeServer, storage: FakeServer, tmp_path: Path) -> None:
    location = f"{storage.url}/expired"
    api.on("GET", "/api/v1/models/m1/export", Reply(307, b"", {"Location": location}))
    storage.on("GET", "/expired", Reply(200, b"<html>captive portal</html>"))
    assert_error(run(api, "export", "m1", "-o", "out.heimdall"), "INVALID_JSON")
    assert not (tmp_path / "out.heimdall").exists()
    storage.on(
        "GET",
        "/expired",
        Reply(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"),
    )
    assert_error(
        run(api, "export", "m1", "-o", "out.heimdall"), "DOWNLOAD_FAILED", "AccessDenied: Request has expired"
    )
    assert leftovers(tmp_path) == []


# --- heimdall import -------------------------------------------------------------------------------


def test_import_inline_posts_the_file_and_prints_the_model_id(api: FakeServer, tmp_path: Path) -> None:
    body = bundle_bytes()
    (tmp_path / "b.heimdall").write_bytes(body)
    answer = {"import": import_out("INDEXED", model_id="m9"), "model": model_out("m9", source="import")}
    api.on("POST", "/api/v1/models/import", json_reply(answer, 201))
    result = run(api, "import", "b.heimdall", "--components", "training_config,performance_metrics")
    assert result.exit_code == 0, result.stderr
    assert "imported as model m9" in result.stdout
    (seen,) = api.seen
    assert seen.body == body
    assert seen.headers["content-type"] == "application/json"
    assert seen.query == {"components": ["training_config,performance_metrics"]}


def test_import_inline_gzip_is_sent_as_gzip(api: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "b.heimdall.gz").write_bytes(gzip.compress(bundle_bytes()))
    answer = {"import": import_out("INDEXED", model_id="m9"), "model": model_out("m9")}
    api.on("POST", "/api/v1/models/import", json_reply(answer, 201))
    result = run(api, "import", "b.heimdall.gz", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["model_id"] == "m9"
    assert api.seen[0].headers["content-type"] == "application/gzip"


def test_import_inline_rejection_is_the_bundle_error(api: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "b.heimdall").write_bytes(b"{}")
    api.on("POST", "/api/v1/models/import", api_error(422, "INVALID_BUNDLE", "format_version is missing"))
    assert_error(run(api, "import", "b.heimdall"), "INVALID_BUNDLE", "format_version is missing")


def _presigned_routes(api: FakeServer, storage: FakeServer, *final: Reply) -> None:
    upload = {
        "url": f"{storage.url}/ingest",
        "method": "POST",
        "fields": {
            "key": "bundles/imports/i1/bundle.heimdall",
            "policy": "cG9saWN5",
            "x-amz-signature": "s1",
        },
        "max_bytes": 2**31,
        "expires_at": "2025-03-04T06:06:07+00:00",
    }
    api.on(
        "POST", "/api/v1/models/import", json_reply({"import": import_out("PENDING"), "upload": upload}, 202)
    )
    storage.on("POST", "/ingest", Reply(204))
    api.on("GET", "/api/v1/imports/i1", json_reply(import_out("PENDING")), *final)
    api.on("GET", "/api/v1/models/m9", json_reply(model_out("m9", source="import", original_model_id="m1")))


def _form_parts(seen: Seen) -> list[tuple[str, bytes]]:
    """The (name, value) parts of a multipart/form-data body, in order."""
    head = f"Content-Type: {seen.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + seen.body)
    parts: list[tuple[str, bytes]] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes), "a form field is a leaf part"
        parts.append((str(part.get_param("name", header="content-disposition")), payload))
    return parts


def test_import_presigned_uploads_the_form_and_follows_the_import(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    body = bundle_bytes()
    (tmp_path / "b.heimdall").write_bytes(body)
    _presigned_routes(api, storage, json_reply(import_out("INDEXED", model_id="m9")))
    result = run(api, "import", "b.heimdall", "--presigned", "--components", "normalization_stats", "--json")
    assert result.exit_code == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["mode"] == "presigned"
    assert outcome["import"]["status"] == "INDEXED"
    assert outcome["model"]["model_id"] == "m9"

    start = api.requests("POST", "/api/v1/models/import")[0]
    assert start.query == {"mode": ["presigned"], "components": ["normalization_stats"]}
    assert start.json() == {"size_bytes": len(body), "filename": "b.heimdall"}
    (form,) = storage.seen
    assert "authorization" not in form.headers
    assert int(form.headers["content-length"]) == len(form.body)  # streamed, but with a known length
    assert _form_parts(form) == [
        ("key", b"bundles/imports/i1/bundle.heimdall"),
        ("policy", b"cG9saWN5"),
        ("x-amz-signature", b"s1"),
        ("file", body),  # S3 wants the file last
    ]
    assert len(api.requests("GET", "/api/v1/imports/i1")) == 2  # PENDING, then INDEXED
    assert api.requests("GET", "/api/v1/models/m9")


def test_import_chooses_presigned_above_the_inline_limit(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.heimdall"
    big.write_bytes(b"{" + b" " * api_model_routes.INLINE_MAX_BYTES + b"}")
    _presigned_routes(api, storage, json_reply(import_out("INDEXED", model_id="m9")))
    result = run(api, "import", str(big))
    assert result.exit_code == 0, result.stderr
    assert "imported as model m9" in result.stdout
    assert api.requests("POST", "/api/v1/models/import")[0].query["mode"] == ["presigned"]
    assert _form_parts(storage.seen[0])[-1] == ("file", big.read_bytes())


def test_import_falls_back_to_presigned_when_the_server_says_too_large(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    (tmp_path / "b.heimdall").write_bytes(bundle_bytes())
    _presigned_routes(api, storage, json_reply(import_out("INDEXED", model_id="m9")))
    presigned = api.routes[("POST", "/api/v1/models/import")]
    api.on(
        "POST",
        "/api/v1/models/import",
        api_error(413, "PAYLOAD_TOO_LARGE", "use ?mode=presigned"),
        *presigned,
    )
    result = run(api, "import", "b.heimdall")
    assert result.exit_code == 0, result.stderr
    inline, started = api.requests("POST", "/api/v1/models/import")
    assert "mode" not in inline.query
    assert started.query["mode"] == ["presigned"]
    # Forced inline: the 413 is the answer.
    api.on("POST", "/api/v1/models/import", api_error(413, "PAYLOAD_TOO_LARGE", "use ?mode=presigned"))
    assert_error(run(api, "import", "b.heimdall", "--inline"), "PAYLOAD_TOO_LARGE", "mode=presigned")


def test_import_presigned_rejected_carries_the_bundle_code(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    (tmp_path / "b.heimdall").write_bytes(bundle_bytes())
    rejected = import_out("REJECTED", error_code="CHECKSUM_MISMATCH", reason="integrity.onnx_sha256 differs")
    _presigned_routes(api, storage, json_reply(rejected))
    assert_error(
        run(api, "import", "b.heimdall", "--presigned"), "CHECKSUM_MISMATCH", "i1", "onnx_sha256 differs"
    )


def test_import_presigned_wait_times_out(api: FakeServer, storage: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "b.heimdall").write_bytes(bundle_bytes())
    _presigned_routes(api, storage)  # PENDING for ever
    assert_error(run(api, "import", "b.heimdall", "--presigned", "--timeout", "1"), "WAIT_TIMEOUT", "PENDING")


def test_import_upload_refused_by_storage(api: FakeServer, storage: FakeServer, tmp_path: Path) -> None:
    (tmp_path / "b.heimdall").write_bytes(bundle_bytes())
    _presigned_routes(api, storage)
    storage.on(
        "POST", "/ingest", Reply(400, b"<Error><Code>EntityTooLarge</Code><Message>too big</Message></Error>")
    )
    assert_error(run(api, "import", "b.heimdall", "--presigned"), "UPLOAD_FAILED", "EntityTooLarge: too big")
    assert api.requests("GET", "/api/v1/imports/i1") == []


# --- heimdall jobs ---------------------------------------------------------------------------------


def test_jobs_create_from_a_model(api: FakeServer) -> None:
    api.on("POST", "/api/v1/export/jobs", json_reply(job_out("j1"), 202))
    result = run(
        api, "jobs", "create", "--model-id", "m1", "--formats", "onnx,onnx_int8", "--idempotency-key", "k1"
    )
    assert result.exit_code == 0, result.stderr
    assert "j1" in result.stdout and "SUBMITTED" in result.stdout
    (seen,) = api.seen
    assert seen.json() == {"model_id": "m1", "formats": ["onnx", "onnx_int8"]}
    assert seen.headers["idempotency-key"] == "k1"


def test_jobs_create_from_a_checkpoint_and_wait(api: FakeServer) -> None:
    api.on("POST", "/api/v1/export/jobs", json_reply(job_out("j1"), 202))
    done = job_out(
        "j1",
        "SUCCEEDED",
        model_id="m7",
        result={
            "status": "SUCCEEDED",
            "formats": [{"format": "onnx", "status": "ok", "size_bytes": 2048}],
            "package_file": "package.tar.gz",
            "bundle_file": "model.heimdall",
        },
    )
    api.on("GET", "/api/v1/export/jobs/j1", json_reply(job_out("j1", "RUNNING")), json_reply(done))
    result = run(
        api,
        "jobs",
        "create",
        "--checkpoint",
        "s3://ingest/checkpoints/net/1/model.safetensors",
        "--manifest",
        "s3://ingest/checkpoints/net/1/heimdall.json",
        "--wait",
    )
    assert result.exit_code == 0, result.stderr
    assert api.seen[0].json() == {
        "checkpoint_uri": "s3://ingest/checkpoints/net/1/model.safetensors",
        "manifest_uri": "s3://ingest/checkpoints/net/1/heimdall.json",
    }
    assert "idempotency-key" not in api.seen[0].headers
    assert "RUNNING" in result.stderr and "SUCCEEDED" in result.stderr
    for text in ("SUCCEEDED", "m7", "package.tar.gz", "format onnx"):
        assert text in result.stdout


def test_jobs_create_wait_for_a_failing_job_exits_1(api: FakeServer) -> None:
    api.on("POST", "/api/v1/export/jobs", json_reply(job_out("j1"), 202))
    failed = job_out(
        "j1",
        "FAILED",
        reason="parity",
        exit_code=4,
        result={"status": "FAILED", "error_code": "EXPORT_PARITY_FAILED"},
    )
    api.on("GET", "/api/v1/export/jobs/j1", json_reply(failed))
    result = run(api, "jobs", "create", "--model-id", "m1", "--wait", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "FAILED"
    assert "error JOB_FAILED: job j1 failed: EXPORT_PARITY_FAILED: parity" in result.stderr


def test_jobs_get_list_cancel_set_default(api: FakeServer) -> None:
    api.on("GET", "/api/v1/export/jobs/j1", json_reply(job_out("j1", "RUNNING")))
    api.on(
        "GET",
        "/api/v1/models/m1/exports",
        json_reply(
            {"items": [job_out("j1"), job_out("j2", "SUCCEEDED", is_default=True)], "next_cursor": None}
        ),
    )
    api.on(
        "DELETE",
        "/api/v1/export/jobs/j1",
        json_reply(job_out("j1", "CANCELLED", reason="cancelled by local-user")),
    )
    api.on(
        "POST", "/api/v1/export/jobs/j2/set-default", json_reply(job_out("j2", "SUCCEEDED", is_default=True))
    )

    got = run(api, "jobs", "get", "j1", "--json")
    assert got.exit_code == 0 and json.loads(got.stdout)["status"] == "RUNNING"
    listed = run(api, "jobs", "list", "m1")
    assert listed.exit_code == 0
    assert "j1" in listed.stdout and "j2" in listed.stdout and "✓" in listed.stdout
    cancelled = run(api, "jobs", "cancel", "j1")
    assert (
        cancelled.exit_code == 0
        and "CANCELLED" in cancelled.stdout
        and "cancelled by local-user" in cancelled.stdout
    )
    default = run(api, "jobs", "set-default", "j2", "--json")
    assert default.exit_code == 0 and json.loads(default.stdout)["is_default"] is True
    assert [(s.method, s.path) for s in api.seen] == [
        ("GET", "/api/v1/export/jobs/j1"),
        ("GET", "/api/v1/models/m1/exports"),
        ("DELETE", "/api/v1/export/jobs/j1"),
        ("POST", "/api/v1/export/jobs/j2/set-default"),
    ]


def test_jobs_conflicts_are_errors(api: FakeServer) -> None:
    api.on("DELETE", "/api/v1/export/jobs/j1", api_error(409, "INVALID_TRANSITION", "job j1 is SUCCEEDED"))
    assert_error(run(api, "jobs", "cancel", "j1"), "INVALID_TRANSITION", "job j1 is SUCCEEDED")
    api.on("GET", "/api/v1/export/jobs/j1/download", api_error(409, "NOT_READY", "job j1 has not succeeded"))
    assert_error(run(api, "jobs", "download", "j1", "-o", "p.tar.gz"), "NOT_READY")


def test_ids_stay_one_path_segment(api: FakeServer) -> None:
    assert_error(run(api, "jobs", "get", ".."), "NOT_FOUND")
    assert_error(run(api, "jobs", "get", "a/b"), "NOT_FOUND")
    assert [s.path for s in api.seen] == ["/api/v1/export/jobs/%2E%2E", "/api/v1/export/jobs/a%2Fb"]


def test_jobs_download_streams_from_storage_and_checks_the_hash(
    api: FakeServer, storage: FakeServer, tmp_path: Path
) -> None:
    package = b"\x1f\x8b package bytes" * 1000
    link = {
        "url": f"{storage.url}/artifacts/exports/j1/bundle.heimdall?X-Amz-Signature=xyz",
        "expires_at": "2025-03-04T06:06:07+00:00",
        "file": "bundle",
        "key": "exports/j1/bundle.heimdall",
        "size_bytes": len(package),
        "sha256": hashlib.sha256(package).hexdigest(),
    }
    api.on("GET", "/api/v1/export/jobs/j1/download", json_reply(link))
    storage.on("GET", "/artifacts/exports/j1/bundle.heimdall", Reply(200, package))
    result = run(api, "jobs", "download", "j1", "-o", "out.bin", "--file", "bundle", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sha256"] == link["sha256"] and summary["sha256_checked"] is True
    assert (tmp_path / "out.bin").read_bytes() == package
    assert api.seen[0].query == {"file": ["bundle"]}
    assert "authorization" not in storage.seen[0].headers

    api.on("GET", "/api/v1/export/jobs/j1/download", json_reply({**link, "sha256": "f" * 64}))
    assert_error(run(api, "jobs", "download", "j1", "-o", "again.bin"), "CHECKSUM_MISMATCH")
    assert not (tmp_path / "again.bin").exists()
    assert leftovers(tmp_path) == []


# --- the client on its own -------------------------------------------------------------------------


def test_client_is_reusable_without_the_command_line(api: FakeServer) -> None:
    api.on("GET", "/api/v1/export/capabilities", json_reply({"frameworks": ["pytorch"], "formats": []}))
    api.on("DELETE", "/api/v1/models/m1", Reply(204))
    with api_client.ApiClient(api.url + "/", TOKEN) as client:
        assert client.capabilities("pytorch") == {"frameworks": ["pytorch"], "formats": []}
        client.delete_model("m1")
        with pytest.raises(api_errors.ApiError) as caught:
            client.get_model("m2")
    assert caught.value.code == "NOT_FOUND" and caught.value.status == 404
    assert api.seen[0].query == {"framework": ["pytorch"]}
    assert [s.path for s in api.seen] == [
        "/api/v1/export/capabilities",
        "/api/v1/models/m1",
        "/api/v1/models/m2",
    ]
