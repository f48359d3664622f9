"""Command-line options shared by several commands (declared once, so their flags and help agree)."""

from __future__ import annotations

from typing import Annotated

import typer

# Component selection, as `heimdall bundle pack` and `heimdall export` offer it.
NoConfig = Annotated[bool, typer.Option("--no-config", help="Leave out training_config.")]
NoMetrics = Annotated[bool, typer.Option("--no-metrics", help="Leave out performance_metrics.")]
NoNormalization = Annotated[bool, typer.Option("--no-normalization", help="Leave out normalization_stats.")]
NoSamples = Annotated[bool, typer.Option("--no-samples", help="Leave out sample_predictions.")]
NumSamples = Annotated[
    int | None,
    typer.Option("-n", "--num-samples", min=1, max=10, help="Keep at most N sample predictions (1-10)."),
]
Description = Annotated[
    str | None, typer.Option("-d", "--description", help="Set bundle_metadata.description.")
]
