"""Serving models: ONNX Runtime sessions and runs (``sessions``), request inputs (``inputs``), the ``/v1``
HTTP app (``app``) and how it gets its collaborators (``deps``)."""
