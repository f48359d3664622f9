"""The Powertools singletons every Lambda shares (one place, so no layer imports upward).

The service name comes from ``POWERTOOLS_SERVICE_NAME`` (set per function by the template); tracing is
off unless X-Ray is configured (``POWERTOOLS_TRACE_DISABLED`` is honoured), and metrics go to the
``Heimdall`` namespace.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace="Heimdall")

__all__ = ["logger", "metrics", "tracer"]
