"""Serving models: the inference engine (ONNX Runtime sessions, inputs, runs) and the ``/v1`` HTTP app."""
