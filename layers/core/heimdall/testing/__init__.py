"""In-memory fakes of the domain ports and deterministic sample data, for tests, the demo and benchmarks.

Never part of the Lambda layer (the layer build leaves this package out and a test checks it): no
handler may import it.
"""
