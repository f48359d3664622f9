"""The HTTP routes Heimdall serves, one table per function.

``tests/unit/test_template.py`` checks the template's HttpApi events and the resolvers' routes against
these tables; ``tests/unit/test_openapi.py`` checks the OpenAPI document against :data:`API_ROUTES`.
"""

#: The contract's route table (DESIGN §7, issue 5): every (method, path) the API serves, in API
#: Gateway's path syntax. The ONE list: the template's events and the resolver's routes must equal it.
API_ROUTES = frozenset(
    {
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/models"),
        ("GET", "/api/v1/models/{model_id}"),
        ("DELETE", "/api/v1/models/{model_id}"),
        ("GET", "/api/v1/models/{model_id}/export"),
        ("GET", "/api/v1/training/models/{model_id}/export"),
        ("POST", "/api/v1/models/import"),
        ("POST", "/api/v1/training/models/import"),
        ("GET", "/api/v1/imports/{import_id}"),
        ("GET", "/api/v1/uploads"),
        ("GET", "/api/v1/uploads/{upload_id}"),
        ("GET", "/api/v1/export/capabilities"),
        ("POST", "/api/v1/export/jobs"),
        ("GET", "/api/v1/export/jobs/{job_id}"),
        ("GET", "/api/v1/models/{model_id}/exports"),
        ("POST", "/api/v1/export/jobs/{job_id}/set-default"),
        ("DELETE", "/api/v1/export/jobs/{job_id}"),
        ("GET", "/api/v1/export/jobs/{job_id}/download"),
        ("POST", "/api/v1/deployments"),
        ("GET", "/api/v1/deployments"),
        ("GET", "/api/v1/deployments/{deployment_id}"),
        ("DELETE", "/api/v1/deployments/{deployment_id}"),
        ("PATCH", "/api/v1/deployments/{deployment_id}/activate"),
        ("PATCH", "/api/v1/deployments/{deployment_id}/deactivate"),
        ("GET", "/api/v1/deployments/{deployment_id}/history"),
        ("POST", "/api/v1/deployments/{deployment_id}/rotate-key"),
        ("GET", "/api/v1/deployments/{deployment_id}/download"),
    }
)
#: The inference function's routes (issue 6): authenticated by a deployment's API key, not a JWT.
INFER_ROUTES = frozenset(
    {
        ("POST", "/v1/infer/{deployment_id}"),
        ("GET", "/v1/deployments/{deployment_id}/health"),
        ("GET", "/v1/deployments/{deployment_id}/usage"),
        ("GET", "/v1/openapi.json"),
    }
)
