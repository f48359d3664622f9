"""The AWS Batch GPU conversion job: checkpoint -> ONNX (and TorchScript, FP16, INT8, TensorRT),
parity validation, benchmarks, export package and `.heimdall` bundle (DESIGN section 5).

This is the one package that imports torch. It runs in the image built from ``gpu_batch/Dockerfile``
(``python -m heimdall_batch``) and, locally, as a subprocess. Its stages arrive with the
conversion-job issue; for now the package only reserves the name.
"""

__all__: list[str] = []
