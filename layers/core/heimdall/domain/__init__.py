"""The domain: records, the rules that move them, and the ports logic talks to.

Nothing here knows AWS or HTTP. The adapters (``heimdall.adapters``) implement the ports for
DynamoDB, S3, EventBridge and Batch; ``heimdall.testing`` holds in-memory fakes of them for tests.
"""
