"""The domain: records, the rules that move them, and the ports logic talks to.

Nothing here knows AWS or HTTP. The adapters (``heimdall.adapters``) implement the ports for
DynamoDB, S3, EventBridge and Batch; ``heimdall.testing`` holds in-memory fakes of them for tests.

Records and rules: ``records`` (models, export jobs, imports, half pairs), ``job_states`` (the export-job
state machine), ``uploads`` (the half-pair rules), ``paging`` (pages and cursors), ``deployments``
(deployments and their history), ``api_keys``, ``rate_limits``. Ports: ``registry.Registry``,
``claims.IdempotencyClaims``, ``deployments.DeploymentStore``, ``storage.ObjectStore``,
``submitter.JobSubmitter`` (and ``heimdall.events.EventSink``).
"""
