"""The ``heimdall`` commands that drive the HTTP API, run as a user runs them: ``python -m heimdall.cli``
in a subprocess against the local stack, with ``HEIMDALL_API_URL``/``HEIMDALL_API_TOKEN``, ``--api``/
``--token`` or the token file ``heimdall local up`` writes.

Covers ``heimdall import`` (inline, gzip, ``--components``, presigned by choice and by size),
``heimdall list`` (table and ``--json``), ``heimdall export`` with each component flag, ``-n`` and
``-d`` (the written file read back with the bundle reader), the export → import → export round trip,
the redirect of a large export, and ``heimdall jobs`` through one real conversion (started in the
background when the module starts, so that it runs while the other commands are tested): create
``--wait``, get, list, set-default, download (the command, and the API's presigned link it follows,
give the real zip), a job created from a model and cancelled at once, and the refusals on the way
(exit 1, ``error CODE: message`` on stderr). Independent commands run concurrently:
each spends about a second starting up.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support import e2e
from tests.support.e2e import ApiStack, Cli, StagedCheckpoint, api_fixture, concurrently  # noqa: F401

from heimdall.bundle.reader import read_bundle
from heimdall.local.demo import write_checkpoint

JOB_MODEL = "e2e-net"


@pytest.fixture(scope="module")
def cli(api: ApiStack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    # A folder without .heimdall-local: the token comes from HEIMDALL_API_TOKEN unless a test says otherwise.
    return Cli(api=api, cwd=tmp_path_factory.mktemp("cli-cwd"))


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundles")
    (folder / "sample.heimdall").write_bytes(e2e.make_bundle())
    (folder / "sample.heimdall.gz").write_bytes(e2e.make_bundle(seed=2, compress=True))
    return folder


@pytest.fixture(scope="module")
def imported(cli: Cli, files: Path) -> subprocess.CompletedProcess[str]:
    """``heimdall import sample.heimdall`` as a person runs it (a small bundle: inline)."""
    return cli.run("import", str(files / "sample.heimdall"))


@pytest.fixture(scope="module")
def model(imported: subprocess.CompletedProcess[str], http: httpx.Client) -> dict[str, Any]:
    """The ModelOut of the model that import printed."""
    found = re.search(r"imported as model ([0-9a-f-]{36})", imported.stdout)
    assert found, imported.stdout
    response = http.get(f"/api/v1/models/{found.group(1)}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --- import ------------------------------------------------------------------------------------------


def test_import_prints_the_new_model_id(
    api: ApiStack, imported: subprocess.CompletedProcess[str], model: dict[str, Any], files: Path
) -> None:
    original = read_bundle(files / "sample.heimdall").bundle.model.model_id
    assert model["original_model_id"] == original and model["model_id"] != original
    assert model["display_name"] == "localization-net-v1 (Imported)" and model["source"] == "import"
    assert model["components"] == e2e.ALL_COMPONENTS and model["onnx_sha256"] == e2e.sha256(e2e.sample_onnx())
    for shown in (model["display_name"], model["onnx_sha256"], original, "(inline)"):
        assert shown in imported.stdout, (shown, imported.stdout)
    assert api.artifact_keys(f"imported/{model['model_id']}/")


def test_import_of_a_gzip_bundle_keeps_the_chosen_components(cli: Cli, files: Path) -> None:
    chosen = "training_config,normalization_stats"
    outcome = cli.json("import", str(files / "sample.heimdall.gz"), "--components", chosen)
    assert outcome["mode"] == "inline" and outcome["import"]["components"] == chosen.split(",")
    assert outcome["model"]["components"] == chosen.split(",")


def test_import_presigned_uploads_to_storage_and_waits_for_the_index(
    api: ApiStack, cli: Cli, files: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.heimdall"
    junk.write_bytes(b"not a bundle")
    outcome, rejected = concurrently(
        lambda: cli.json("import", str(files / "sample.heimdall"), "--presigned", "--components", ""),
        # Refused after the upload, by the ingest: the command follows the import to its REJECTED end.
        lambda: cli.fails("import", str(junk), "--presigned", "--timeout", "60", code="INVALID_JSON"),
    )
    assert outcome["mode"] == "presigned" and outcome["import"]["status"] == "INDEXED"
    assert outcome["model"]["components"] == []  # the model only
    assert outcome["model"]["model_id"] == outcome["import"]["model_id"]
    assert api.artifact_keys(f"imported/{outcome['model']['model_id']}/")
    assert "was rejected" in rejected


def test_a_large_bundle_goes_presigned_and_comes_back_by_redirect(cli: Cli, tmp_path: Path) -> None:
    big = tmp_path / "padded.heimdall"
    big.write_bytes(e2e.large_bundle())
    outcome = cli.json("import", str(big))  # by size: over the inline limit, so presigned
    assert outcome["mode"] == "presigned" and outcome["import"]["status"] == "INDEXED"
    out = tmp_path / "back.heimdall"
    summary = cli.json("export", outcome["model"]["model_id"], "-o", str(out))
    assert summary["redirected"] is True and summary["size_bytes"] > e2e.MAX_RESPONSE_BYTES
    assert read_bundle(out).onnx_sha256 == outcome["model"]["onnx_sha256"] == summary["onnx_sha256"]


def test_import_of_an_invalid_bundle_fails_with_its_code(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.heimdall"
    bad.write_bytes(e2e.tampered(e2e.make_bundle(), lambda d: d["integrity"].update(onnx_sha256="0" * 64)))
    assert "integrity.onnx_sha256" in cli.fails("import", str(bad), code="CHECKSUM_MISMATCH")


# --- list --------------------------------------------------------------------------------------------


def test_list_shows_the_model_as_a_table_and_as_json(cli: Cli, model: dict[str, Any]) -> None:
    table, first = concurrently(lambda: cli.run("list").stdout, lambda: cli.json("list", "--limit", "1"))
    row = next((line for line in table.splitlines() if model["model_id"] in line), None)
    assert row is not None, table
    for cell in ("localization-net-v1 (Imported)", "1.0.0", "93.0% / 0.0145"):
        assert cell in row, row
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row), row
    for header in ("ID", "Model", "Version", "Accuracy / val loss", "Created"):
        assert header in table
    assert len(first["items"]) == 1 and first["next_cursor"]
    assert set(first["items"][0]) >= {"model_id", "display_name", "onnx_sha256", "metrics", "created_at"}


# --- export ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "component"),
    [
        ("--no-config", "training_config"),
        ("--no-metrics", "performance_metrics"),
        ("--no-normalization", "normalization_stats"),
        ("--no-samples", "sample_predictions"),
    ],
)
def test_each_export_flag_leaves_its_component_out(
    cli: Cli, model: dict[str, Any], tmp_path: Path, flag: str, component: str
) -> None:
    out = tmp_path / "out.heimdall"
    summary = cli.json("export", model["model_id"], "-o", str(out), flag)
    expected = [c for c in e2e.ALL_COMPONENTS if c != component]
    read = read_bundle(out)
    assert read.bundle.components() == expected == summary["components"]
    assert getattr(read.bundle, component) is None
    assert read.onnx_sha256 == model["onnx_sha256"] == summary["onnx_sha256"]
    assert summary["onnx_sha256_checked"] is True and summary["redirected"] is False
    assert summary["output"] == str(out) and summary["size_bytes"] == out.stat().st_size


def test_export_samples_and_description(cli: Cli, model: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "two.heimdall"
    summary = cli.json("export", model["model_id"], "-o", str(out), "-n", "2", "-d", "for the partner lab")
    read = read_bundle(out)
    assert summary["sample_count"] == 2 and len(read.bundle.sample_predictions or []) == 2
    meta = read.bundle.bundle_metadata
    assert meta.description == "for the partner lab" and meta.created_by == e2e.LOCAL_SUB
    assert summary["bundle_id"] == meta.bundle_id


def test_export_prints_what_it_wrote(cli: Cli, model: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "all.heimdall"
    shown = cli.run("export", model["model_id"], "--output", str(out)).stdout
    read = read_bundle(out)
    assert len(read.bundle.sample_predictions or []) == e2e.SAMPLE_COUNT
    for expected in (
        read.bundle.bundle_metadata.bundle_id,
        "localization-net-v1 1.0.0",
        str(out),
        f"{out.stat().st_size:,} bytes",
        f"sample_predictions ({e2e.SAMPLE_COUNT})",
        read.onnx_sha256,
    ):
        assert expected in shown, (expected, shown)


def test_export_import_export_keeps_the_onnx_sha256(cli: Cli, model: dict[str, Any], tmp_path: Path) -> None:
    first = tmp_path / "first.heimdall"
    cli.json("export", model["model_id"], "-o", str(first))
    again = cli.json("import", str(first))["model"]
    assert again["original_model_id"] == model["model_id"] and again["model_id"] != model["model_id"]
    second = tmp_path / "second.heimdall"
    cli.json("export", again["model_id"], "-o", str(second))
    assert read_bundle(first).onnx_sha256 == again["onnx_sha256"] == read_bundle(second).onnx_sha256
    assert again["onnx_sha256"] == model["onnx_sha256"]


# --- auth ----------------------------------------------------------------------------------------------


def test_the_token_comes_from_the_option_the_variable_or_the_local_stack_file(
    api: ApiStack, cli: Cli, model: dict[str, Any]
) -> None:
    listed, explicit, missing, invalid = concurrently(
        # `heimdall local up` wrote .heimdall-local/api-token in api.root: run there, nothing else is needed.
        lambda: cli.json("list", "--all", token=None, cwd=api.root),
        lambda: cli.json("list", "--all", "--api", api.url, "--token", api.token, token=None),
        lambda: cli.fails("list", token=None, code="UNAUTHORIZED"),
        lambda: cli.fails("list", token="not-a-known-token", code="UNAUTHORIZED"),
    )
    assert model["model_id"] in [m["model_id"] for m in listed["items"]]
    assert listed["items"] == explicit["items"]
    assert "missing bearer token" in missing and "invalid bearer token" in invalid


def test_read_only_and_other_owners_are_refused(
    cli: Cli, model: dict[str, Any], files: Path, tmp_path: Path
) -> None:
    out = tmp_path / "theirs.heimdall"
    refused, hidden, theirs = concurrently(
        lambda: cli.fails(
            "import", str(files / "sample.heimdall"), token=e2e.READ_ONLY_TOKEN, code="FORBIDDEN"
        ),
        lambda: cli.fails(
            "export", model["model_id"], "-o", str(out), token=e2e.OTHER_TOKEN, code="NOT_FOUND"
        ),
        lambda: cli.json("list", "--all", token=e2e.OTHER_TOKEN),
    )
    assert "heimdall/write" in refused and "not found" in hidden and not out.exists()
    assert model["model_id"] not in [m["model_id"] for m in theirs["items"]]


# --- export jobs: one real conversion ----------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(api: ApiStack, tmp_path_factory: pytest.TempPathFactory) -> StagedCheckpoint:
    checkpoint, _ = write_checkpoint(tmp_path_factory.mktemp("checkpoint"))
    return e2e.stage_checkpoint(api, JOB_MODEL, checkpoint.read_bytes(), "model.safetensors")


@pytest.fixture(scope="module", autouse=True)
def conversion(cli: Cli, staged: StagedCheckpoint) -> Iterator[subprocess.Popen[str]]:
    """``heimdall jobs create --checkpoint … --manifest … --formats onnx --wait --json``, started when the
    module starts: the one real conversion runs while the other commands are tested."""
    process = cli.start(
        "jobs",
        "create",
        "--checkpoint",
        staged.checkpoint_uri,
        "--manifest",
        staged.manifest_uri,
        "--formats",
        "onnx",
        "--wait",
        "--timeout",
        "240",
        "--json",
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def converted(cli: Cli, conversion: subprocess.Popen[str]) -> dict[str, Any]:
    """The job the conversion command printed when it ended."""
    job: dict[str, Any] = json.loads(cli.finish(conversion).stdout)
    return job


@pytest.fixture(scope="module")
def job_model(http: httpx.Client, converted: dict[str, Any]) -> dict[str, Any]:
    """The model indexed from the converted job's bundle (it follows the job's success)."""

    def indexed() -> dict[str, Any] | None:
        items = http.get("/api/v1/models", params={"name": JOB_MODEL}).json()["items"]
        return items[0] if items else None

    found: dict[str, Any] = e2e.wait_for(f"the model of job {converted['job_id']}", indexed, timeout_s=60)
    return found


def test_jobs_create_without_a_manifest_is_refused(cli: Cli, staged: StagedCheckpoint) -> None:
    # The checkpoint's folder has no heimdall.json, and safetensors metadata names none.
    refused = cli.fails("jobs", "create", "--checkpoint", staged.checkpoint_uri, code="INVALID_MANIFEST")
    assert "manifest" in refused


def test_jobs_create_waits_for_a_real_conversion(
    converted: dict[str, Any], job_model: dict[str, Any], staged: StagedCheckpoint
) -> None:
    assert converted["status"] == "SUCCEEDED" and converted["formats"] == ["onnx"]
    assert (
        converted["checkpoint_uri"] == staged.checkpoint_uri
        and converted["manifest_uri"] == staged.manifest_uri
    )
    result = converted["result"]
    (onnx,) = [f for f in result["formats"] if f["format"] == "onnx"]
    assert onnx["status"] == "built" and result["package_file"] and result["bundle_file"]
    assert job_model["source"] == "export" and job_model["export_job_id"] == converted["job_id"]
    assert job_model["display_name"] == JOB_MODEL and job_model["onnx_sha256"] == onnx["sha256"]


def test_jobs_get_and_list(cli: Cli, converted: dict[str, Any], job_model: dict[str, Any]) -> None:
    job_id = converted["job_id"]
    shown, table = concurrently(
        lambda: cli.run("jobs", "get", job_id).stdout,
        lambda: cli.run("jobs", "list", job_model["model_id"]).stdout,
    )
    for expected in (
        job_id,
        "SUCCEEDED",
        f"{JOB_MODEL} 1.0.0",
        "export-package.zip",
        converted["checkpoint_uri"],
    ):
        assert expected in shown, (expected, shown)
    row = next((line for line in table.splitlines() if job_id in line), None)
    assert row is not None and "SUCCEEDED" in row and "onnx" in row, table


def test_a_converted_job_names_the_model_it_became(
    cli: Cli, converted: dict[str, Any], job_model: dict[str, Any]
) -> None:
    assert cli.json("jobs", "get", converted["job_id"])["model_id"] == job_model["model_id"]


def test_set_default_and_the_download_link_of_a_succeeded_job(
    cli: Cli, http: httpx.Client, converted: dict[str, Any], job_model: dict[str, Any]
) -> None:
    job_id = converted["job_id"]
    assert cli.json("jobs", "set-default", job_id)["is_default"] is True
    listed, _ = concurrently(
        lambda: cli.json("jobs", "list", job_model["model_id"])["items"],
        lambda: cli.fails("jobs", "cancel", job_id, code="INVALID_TRANSITION"),  # it has finished
    )
    assert [j["job_id"] for j in listed if j["is_default"]] == [job_id]
    # The API's presigned link serves the real package, as declared (no token: it is presigned).
    link = http.get(f"/api/v1/export/jobs/{job_id}/download").json()
    assert (
        link["file"] == "package" and link["key"] == f"exports/{job_id}/{converted['result']['package_file']}"
    )
    package = httpx.get(link["url"], timeout=60)
    assert package.status_code == 200, package.text
    assert len(package.content) == link["size_bytes"] and e2e.sha256(package.content) == link["sha256"]
    with zipfile.ZipFile(io.BytesIO(package.content)) as archive:
        assert archive.testzip() is None
        onnx_names = [name for name in archive.namelist() if name.endswith(".onnx")]
        assert job_model["onnx_sha256"] in {e2e.sha256(archive.read(name)) for name in onnx_names}, onnx_names


def test_jobs_download_writes_the_package_and_the_bundle(
    cli: Cli, converted: dict[str, Any], job_model: dict[str, Any], tmp_path: Path
) -> None:
    job_id = converted["job_id"]
    package = tmp_path / "package.zip"
    summary = cli.json("jobs", "download", job_id, "-o", str(package))
    assert summary["sha256_checked"] is True and summary["size_bytes"] == package.stat().st_size
    with zipfile.ZipFile(package) as archive:
        assert archive.testzip() is None
    bundle = tmp_path / "job.heimdall"
    cli.json("jobs", "download", job_id, "-o", str(bundle), "--file", "bundle")
    assert read_bundle(bundle).onnx_sha256 == job_model["onnx_sha256"]


def test_a_job_cancelled_at_once_stays_cancelled(
    api: ApiStack, cli: Cli, converted: dict[str, Any], job_model: dict[str, Any]
) -> None:
    created = cli.json("jobs", "create", "--model-id", job_model["model_id"], "--formats", "onnx")
    job_id = created["job_id"]
    assert created["status"] in ("PENDING", "SUBMITTED")
    # Converted again from the checkpoint and manifest the model was made from.
    assert (created["checkpoint_uri"], created["manifest_uri"]) == (
        converted["checkpoint_uri"],
        converted["manifest_uri"],
    )
    cancelled = cli.json("jobs", "cancel", job_id)
    assert cancelled["status"] == "CANCELLED" and cancelled["reason"] == f"cancelled by {e2e.LOCAL_SUB}"
    # The runner stops the conversion and reports it FAILED; the report must not undo the cancel.
    e2e.wait_for("the runner to report the stopped job", api.job_events_settled, timeout_s=60)
    got, _, listed = concurrently(
        lambda: cli.json("jobs", "get", job_id),
        lambda: cli.fails("jobs", "set-default", job_id, code="NOT_READY"),
        lambda: cli.json("jobs", "list", job_model["model_id"]),
    )
    assert got["status"] == "CANCELLED" and got["reason"] == cancelled["reason"]
    # Both jobs of the model's name and version are listed; the drops themselves started none.
    assert sorted(j["job_id"] for j in listed["items"]) == sorted([converted["job_id"], job_id])


def test_a_job_of_an_imported_model_converts_its_bundle_and_other_owners_are_refused(
    cli: Cli, model: dict[str, Any], converted: dict[str, Any]
) -> None:
    done, _, _ = concurrently(
        lambda: cli.json("jobs", "create", "--model-id", model["model_id"], "--formats", "onnx", "--wait"),
        lambda: cli.fails("jobs", "cancel", converted["job_id"], token=e2e.OTHER_TOKEN, code="NOT_FOUND"),
        lambda: cli.fails("jobs", "get", "..", code="NOT_FOUND"),
    )
    # No checkpoint: the job converted the imported model's stored bundle, and belongs to that model.
    assert done["source"] == "bundle" and done["model_id"] == model["model_id"]
    assert done["status"] == "SUCCEEDED" and done["result"]["package_file"] == "export-package.zip"
    assert done["result"]["bundle_file"] is None
