"""``heimdall list|export|import``: the models in the API's registry, and bundles in and out of it.

``list`` pages through your models, ``export`` writes one as a ``.heimdall`` bundle (read back and
its ONNX sha256 checked against the API's before it is written), ``import`` uploads a bundle (inline
or through a presigned URL) and waits until it is indexed as a new model. Each takes the API options
of :mod:`heimdall.cli.options`; errors are the client's typed errors, printed by the top-level group
(:mod:`heimdall.cli`) as ``error CODE: message`` with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from heimdall.bundle.models import Component
from heimdall.cli.api_common import Json
from heimdall.cli.api_model_routes import INLINE_MAX_BYTES, ImportMode
from heimdall.cli.api_session import DEFAULT_API_URL
from heimdall.cli.options import (
    AllPages,
    ApiUrl,
    AsJson,
    Cursor,
    Description,
    Limit,
    NoConfig,
    NoMetrics,
    NoNormalization,
    NoSamples,
    NumSamples,
    Output,
    Token,
    check_folder,
    collect_pages,
    connect,
    split_choices,
)
from heimdall.cli.render import (
    details_table,
    err_console,
    human_size,
    out_console,
    print_json,
    show_listing,
    transfer_progress,
    when_text,
)
from heimdall.domain.paging import DEFAULT_PAGE_SIZE
from heimdall.settings import MIB

# --- heimdall list ---------------------------------------------------------------------------------


def models_list(
    *,
    name: Annotated[str | None, typer.Option("--name", help="Only the models of this name.")] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    all_pages: AllPages = False,
    cursor: Cursor = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List your models: ID, name, version, accuracy / val loss, created."""
    with connect(api, token) as client:
        items, next_cursor = collect_pages(
            lambda c: client.list_models(limit=limit, cursor=c, name=name), cursor, all_pages
        )
    show_listing(
        f"models ({len(items)})",
        ("ID", "Model", "Version", "Accuracy / val loss", "Created"),
        [
            (
                str(model.get("model_id")),
                str(model.get("display_name") or model.get("model_name")),
                str(model.get("version")),
                _metrics_text(model.get("metrics") or {}),
                when_text(model.get("created_at")),
            )
            for model in items
        ],
        next_cursor,
        as_json=as_json,
        items=items,
    )


# --- heimdall export -------------------------------------------------------------------------------


def model_export(
    model_id: Annotated[str, typer.Argument(metavar="MODEL_ID", help="The model to export.")],
    *,
    output: Output,
    no_config: NoConfig = False,
    no_metrics: NoMetrics = False,
    no_normalization: NoNormalization = False,
    no_samples: NoSamples = False,
    num_samples: NumSamples = None,
    description: Description = None,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Export a model as a .heimdall bundle, with the optional components you choose.

    The file is read back and its ONNX sha256 checked against the API's before it is written.
    """
    check_folder(output)
    with connect(api, token) as client, transfer_progress(f"exporting {model_id}") as progress:
        exported = client.export_model(
            model_id,
            output,
            include_config=not no_config,
            include_metrics=not no_metrics,
            include_normalization=not no_normalization,
            include_samples=not no_samples,
            num_samples=num_samples,
            description=description,
            progress=progress,
        )
    bundle = exported.read.bundle
    samples = len(bundle.sample_predictions or [])
    summary = {
        "bundle_id": bundle.bundle_metadata.bundle_id,
        "model_id": model_id,
        "model_name": bundle.model.model_name,
        "version": bundle.model.version,
        "output": str(exported.path),
        "size_bytes": exported.size_bytes,
        "compressed": exported.read.compressed,
        "components": bundle.components(),
        "sample_count": samples,
        "onnx_sha256": exported.read.onnx_sha256,
        "onnx_sha256_checked": exported.declared_onnx_sha256 is not None,
        "redirected": exported.redirected,
    }
    if as_json:
        print_json(summary)
        return
    components = [f"{c} ({samples})" if c == Component.SAMPLE_PREDICTIONS else c for c in bundle.components()]
    checked = "matches the API's" if exported.declared_onnx_sha256 else "the API sent none to compare"
    out_console.print(
        details_table(
            f"exported {model_id}",
            [
                ("bundle id", bundle.bundle_metadata.bundle_id),
                ("model", f"{bundle.model.model_name} {bundle.model.version}"),
                ("output", str(exported.path)),
                ("size", human_size(exported.size_bytes) + (" (gzip)" if exported.read.compressed else "")),
                ("components", ", ".join(components) or "none (model only)"),
                ("onnx sha256", f"{exported.read.onnx_sha256} ({checked})"),
            ],
        )
    )


# --- heimdall import -------------------------------------------------------------------------------


def model_import(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, metavar="FILE", help="A .heimdall bundle (gzip too)."
        ),
    ],
    *,
    components: Annotated[
        str | None,
        typer.Option(
            "--components",
            metavar="A,B",
            help="Optional components to keep, comma-separated: "
            + ",".join(c.value for c in Component)
            + " (default: all; empty: the model only).",
        ),
    ] = None,
    presigned: Annotated[
        bool | None,
        typer.Option(
            "--presigned/--inline",
            help=f"Upload through a presigned URL, or in the request body (default: by size, presigned "
            f"above {INLINE_MAX_BYTES // MIB} MiB).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for a presigned import to be indexed.")
    ] = 600.0,
    api: ApiUrl = DEFAULT_API_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Import a bundle into the registry as a new model; prints the new model id."""
    chosen = split_choices(components, [c.value for c in Component], "--components")
    mode: ImportMode = "auto" if presigned is None else "presigned" if presigned else "inline"

    def uploaded(record: Json) -> None:
        err_console.print(f"uploaded; waiting for import {record.get('import_id')} to be indexed…")

    with connect(api, token) as client, transfer_progress(f"uploading {file.name}") as progress:
        outcome = client.import_bundle(
            file, components=chosen, mode=mode, timeout_s=timeout, progress=progress, on_uploaded=uploaded
        )
    if as_json:
        print_json({"mode": outcome.mode, "import": outcome.record, "model": outcome.model})
        return
    model = outcome.model
    out_console.print(
        details_table(
            f"imported as model {model.get('model_id')}",
            [
                ("model id", str(model.get("model_id"))),
                ("model", f"{model.get('display_name') or model.get('model_name')} {model.get('version')}"),
                ("original id", str(model.get("original_model_id") or "–")),
                ("components", ", ".join(model.get("components") or []) or "none (model only)"),
                ("onnx sha256", str(model.get("onnx_sha256") or "–")),
                ("import", f"{outcome.record.get('import_id')} ({outcome.mode})"),
            ],
        )
    )


def _metrics_text(metrics: Json) -> Text:
    accuracy, loss = metrics.get("final_val_accuracy"), metrics.get("final_val_loss")
    if accuracy is None:
        accuracy = metrics.get("final_train_accuracy")
    # Accuracy is a fraction in bundles (0.93); anything above 1 was already a percentage.
    shown = "–" if accuracy is None else f"{accuracy:.1%}" if 0 <= accuracy <= 1 else f"{accuracy:.4g}"
    return Text(f"{shown} / {'–' if loss is None else f'{loss:.4g}'}")
