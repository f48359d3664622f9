"""The OpenAPI document: generated from the routes, committed, in sync, valid, and complete enough
that a schemathesis conformance run against it holds (every status an operation gives is declared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from tests.support.routes import API_ROUTES

from heimdall import __version__
from heimdall.api.__main__ import main
from heimdall.api.app import openapi_text
from heimdall.api.openapi import committed_text
from heimdall.domain.deployments import MAX_IMAGE_REFERENCE, RATE_LIMITS, DeploymentType

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "layers" / "core" / "heimdall" / "api" / "openapi.json"

#: The contract's route table (issue 5; DESIGN §7 without deployments and inference).
#: The contract's route table, the one tests/unit/test_template.py keeps equal to the template's events.
ROUTES = {(method.lower(), path) for method, path in API_ROUTES}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return dict(json.loads(openapi_text()))


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_the_committed_document_is_what_the_routes_generate() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == openapi_text(), (
        "layers/core/heimdall/api/openapi.json is stale: "
        "python -m heimdall.api --write-openapi layers/core/heimdall/api/openapi.json"
    )
    assert committed_text() == openapi_text()  # and it is the file the package ships


def test_check_and_write_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(COMMITTED)]) == 0
    stale = tmp_path / "openapi.json"
    stale.write_text(openapi_text().replace("Heimdall Export API", "Someone Else's API"))
    assert main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "is stale: 2 line(s) differ" in err and "Someone Else's API" in err
    assert main(["--check", str(tmp_path / "missing.json")]) == 1
    assert main(["--write-openapi", str(stale)]) == 0
    assert stale.read_text() == openapi_text()


def test_the_module_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "heimdall.api", "--check", str(COMMITTED)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([sys.executable, "-m", "heimdall.api"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "one of the arguments" in bad.stderr


def test_it_is_a_valid_openapi_31_document(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "Heimdall Export API" and document["info"]["version"] == __version__


def test_every_route_of_the_contract_is_documented(document: dict[str, Any]) -> None:
    assert {(method, path) for method, path, _ in operations(document)} == ROUTES
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def test_everything_but_the_document_needs_a_bearer_token(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert document["security"] == [{"bearerAuth": []}]
    for method, path, op in operations(document):
        public = path == "/api/v1/openapi.json"
        assert ("security" in op and op["security"] == []) is public, (method, path)
        responses = op["responses"]
        assert ({"401", "403", "503"} <= set(responses)) is not public, (method, path)


def test_every_error_is_an_error_body_and_every_503_says_when_to_retry(document: dict[str, Any]) -> None:
    shared = document["components"]["responses"]
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            assert set(response) == {"$ref"}, (method, path, status)
            target = shared[response["$ref"].rsplit("/", 1)[1]]
            assert target["content"] == {"application/json": {"schema": error_body}}
            if status == "503":
                assert target["headers"]["Retry-After"]["required"] is True
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["error"]


def test_operations_declare_the_errors_they_can_give(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method]["responses"])

    assert {"404", "422"} <= statuses("get", "/api/v1/models/{model_id}/export")
    assert {"201", "202", "400", "413", "422"} <= statuses("post", "/api/v1/models/import")
    assert {"202", "400", "404", "409", "413", "422"} <= statuses("post", "/api/v1/export/jobs")
    assert {"409"} <= statuses("post", "/api/v1/export/jobs/{job_id}/set-default")
    assert {"409"} <= statuses("delete", "/api/v1/export/jobs/{job_id}")
    assert {"409"} <= statuses("get", "/api/v1/export/jobs/{job_id}/download")
    assert {"400"} <= statuses("get", "/api/v1/models")
    assert statuses("get", "/api/v1/openapi.json") == {"200", "414"}  # a request line too long to read
    for method, path in [
        ("post", "/api/v1/models/import"),
        ("post", "/api/v1/training/models/import"),
        ("post", "/api/v1/export/jobs"),
        ("post", "/api/v1/deployments"),
    ]:
        assert {"414", "415"} <= statuses(method, path), path
    delete = document["paths"]["/api/v1/models/{model_id}"]["delete"]["responses"]["204"]
    assert "content" not in delete
    # No operation answers 405: the document declares it once, with its Allow header, and says so.
    assert document["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]["required"]
    assert "405" in document["info"]["description"]


def test_the_seed_names_and_the_legacy_import_answer_are_documented(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"export_format", "export_config", "optimization_config"} <= set(
        schemas["CreateExportJobRequest"]["properties"]
    )
    for deployment in deployment_requests(schemas).values():
        assert {"deployment_type", "deployment_config"} <= set(deployment["properties"])
        assert "type" not in deployment["required"]
        assert deployment["anyOf"] == [{"required": ["type"]}, {"required": ["deployment_type"]}]
    legacy = document["paths"]["/api/v1/training/models/import"]["post"]["responses"]["201"]
    answer = legacy["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"model_id", "message", "onnx_path", "import", "model"} <= set(schemas[answer]["properties"])
    current = document["paths"]["/api/v1/models/import"]["post"]["responses"]["201"]
    assert current["content"]["application/json"]["schema"]["$ref"].endswith("/ImportedOut")


def deployment_requests(schemas: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The deployment request of each type, as the document describes it (by its ``type``)."""
    body = schemas["CreateDeploymentRequest"]
    refs = [choice["$ref"] for choice in body["oneOf"]]
    assert sorted(body["discriminator"]["mapping"].values()) == sorted(refs)
    return {kind: schemas[ref.rsplit("/", 1)[1]] for kind, ref in body["discriminator"]["mapping"].items()}


def test_each_deployment_type_documents_its_options(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    requests = deployment_requests(schemas)
    assert set(requests) == {kind.value for kind in DeploymentType}
    for kind, request in requests.items():
        properties = request["properties"]
        assert properties["type"]["const"] == kind
        options = schemas[properties["options"]["$ref"].rsplit("/", 1)[1]]
        assert options["additionalProperties"] is False
        assert {"$ref": properties["options"]["$ref"]} in properties["deployment_config"]["anyOf"]
    endpoint = schemas["EndpointOptions"]["properties"]
    assert set(endpoint) == {"tier", "apply_normalization", "precision"}
    assert all(f"{tier} {limit}" in endpoint["tier"]["description"] for tier, limit in RATE_LIMITS.items())
    image = schemas["ContainerOptions"]["properties"]["triton_image"]["anyOf"][0]
    assert image["maxLength"] == MAX_IMAGE_REFERENCE


def test_the_export_documents_both_answers_and_their_headers(document: dict[str, Any]) -> None:
    responses = document["paths"]["/api/v1/models/{model_id}/export"]["get"]["responses"]
    headers = responses["200"]["headers"]
    assert {"Content-Disposition", "X-Heimdall-Onnx-Sha256"} <= set(headers)
    assert all(h["required"] for h in headers.values())
    assert responses["307"]["headers"]["Location"]["required"] is True
    legacy = document["paths"]["/api/v1/training/models/{model_id}/export"]["get"]
    assert legacy["responses"] == responses


def test_the_import_body_is_a_bundle_gzip_or_multipart_file(document: dict[str, Any]) -> None:
    for path in ("/api/v1/models/import", "/api/v1/training/models/import"):
        body = document["paths"][path]["post"]["requestBody"]
        content = body["content"]
        assert body["required"] is True
        assert set(content) == {
            "application/json",
            "application/gzip",
            "application/octet-stream",
            "multipart/form-data",
        }
        form = content["multipart/form-data"]["schema"]
        assert form["required"] == ["file"] and form["properties"]["file"]["format"] == "binary"
        assert {"$ref": "#/components/schemas/PresignedImportRequest"} in content["application/json"][
            "schema"
        ]["anyOf"]
    parameters = {p["name"] for p in document["paths"]["/api/v1/models/import"]["post"]["parameters"]}
    assert parameters == {"components", "mode"}


def test_request_bodies_read_by_the_routes_are_in_the_components(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/v1/export/jobs"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateExportJobRequest"
    }
    schemas = document["components"]["schemas"]
    assert schemas["CreateExportJobRequest"]["additionalProperties"] is False
    assert schemas["PresignedImportRequest"]["required"] == ["size_bytes"]
    # Every reference resolves.
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in schemas, name
