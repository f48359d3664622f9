"""The HTTP API (DESIGN §7): a Powertools resolver over the use cases in :mod:`heimdall.logic`.

:mod:`heimdall.api.app` holds the resolver, :mod:`heimdall.api.routes` the routes,
:mod:`heimdall.api.schemas` the request and response bodies, :mod:`heimdall.api.auth` the caller check
and :mod:`heimdall.api.openapi` the generated OpenAPI document (``python -m heimdall.api --help``).
"""
