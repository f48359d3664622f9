"""The AWS Batch GPU conversion job: checkpoint -> ONNX (and TorchScript, FP16, INT8, TensorRT),
parity validation, benchmarks, export package and `.heimdall` bundle (DESIGN section 5).

This is the one package that imports torch. It runs in the image built from ``gpu_batch/Dockerfile``
(``python -m heimdall_batch``, see :mod:`heimdall_batch.job`) and locally through ``heimdall convert``.
One module per stage (``loading``, ``architectures``, ``export_onnx``, ``parity``, ``benchmark``,
``fp16``, ``int8``, ``torchscript``, ``tensorrt``, ``package``, ``bundling``), run in order by
:mod:`heimdall_batch.pipeline`.
"""

__all__: list[str] = []
