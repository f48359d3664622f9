"""How the ``heimdall deploy`` commands show a deployment, a downloaded artifact and a new API key.

Shared by the management commands (:mod:`heimdall.cli.deploy`) and the ones that use a deployment's
API key (:mod:`heimdall.cli.endpoint`); the generic tables and JSON output are
:mod:`heimdall.cli.render`'s.
"""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table
from rich.text import Text

from heimdall.cli.api_common import Json
from heimdall.cli.api_session import API_KEY_VARIABLE, DownloadedFile
from heimdall.cli.render import details_table, human_size, out_console, when_text
from heimdall.domain.deployments import DeploymentType

_STATE_STYLE = {"ACTIVE": "green", "INACTIVE": "yellow"}


def deployment_table(deployment: Json, base_url: str, *, title: str | None = None) -> Table:
    platform = deployment.get("type") == DeploymentType.PLATFORM_ENDPOINT
    rows: list[tuple[str, str | Text]] = [
        ("deployment id", str(deployment.get("deployment_id"))),
        ("name", str(deployment.get("name"))),
        ("type", str(deployment.get("type"))),
        ("status", state_text(deployment.get("status"))),
        ("model id", str(deployment.get("model_id"))),
        ("export job", str(deployment.get("export_job_id") or "– (an imported model)")),
    ]
    if platform:
        rows.append(("tier", str(deployment.get("tier") or "–")))
        rows.append(("normalization", "applied" if deployment.get("apply_normalization") else "not applied"))
        if deployment.get("onnx_sha256"):
            rows.append(("model sha256", str(deployment["onnx_sha256"])))
    if deployment.get("options"):
        rows.append(("options", compact_json(deployment["options"])))
    if deployment.get("endpoint"):
        rows.append(("endpoint", f"POST {base_url}{deployment['endpoint']}"))
    if deployment.get("key_id"):
        rows.append(("key id", str(deployment["key_id"])))
    artifact = deployment.get("artifact")
    if isinstance(artifact, dict):
        size = artifact.get("size_bytes")
        rows.append(("artifact", str(artifact.get("file_name") or artifact.get("key"))))
        if isinstance(size, int):
            rows.append(("size", human_size(size)))
        if artifact.get("sha256"):
            rows.append(("sha256", str(artifact["sha256"])))
    usage = deployment.get("usage")
    if isinstance(usage, dict):
        rows.append(("requests", str(usage.get("request_count"))))
        rows.append(("last request", when_text(usage.get("last_request_at"))))
    rows.append(("created", when_text(deployment.get("created_at"))))
    rows.append(("updated", when_text(deployment.get("updated_at"))))
    return details_table(title or f"deployment {deployment.get('deployment_id')}", rows)


def show_key(deployment_id: str, key: str, *, rotated: bool) -> None:
    """The API key, once, on a line of its own (never wrapped, so that it copies whole)."""
    out_console.print(Text("API key (shown only now):", style="bold yellow"))
    out_console.print(Text(f"  {key}", style="bold"), soft_wrap=True)
    retired = " The previous key no longer works." if rotated else ""
    out_console.print(
        Text(
            "Store it now: it will not be shown again (the API keeps only its hash)."
            f"{retired} Lost it? `heimdall deploy rotate-key {deployment_id}` issues a new one.",
            style="yellow",
        ),
        soft_wrap=True,
    )
    out_console.print(
        f"Use it: heimdall infer {deployment_id} --key KEY --input inputs.json (or set {API_KEY_VARIABLE})",
        soft_wrap=True,
    )


def downloaded_summary(downloaded: DownloadedFile) -> Json:
    return {
        "output": str(downloaded.path),
        "size_bytes": downloaded.size_bytes,
        "sha256": downloaded.sha256,
        "sha256_checked": downloaded.link.get("sha256") is not None,
        "key": downloaded.link.get("key"),
    }


def downloaded_table(downloaded: DownloadedFile) -> Table:
    checked = " (matches the API's)" if downloaded.link.get("sha256") is not None else ""
    return details_table(
        f"downloaded {downloaded.link.get('key') or 'the artifact'}",
        [
            ("output", str(downloaded.path)),
            ("size", human_size(downloaded.size_bytes)),
            ("sha256", downloaded.sha256 + checked),
        ],
    )


def state_text(value: Any) -> Text:
    return Text(str(value), style=_STATE_STYLE.get(str(value), "cyan"))


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str) if value else ""
