"""The export package (``export-package.zip``): its layout and metadata, written by the Batch job and
read, checked and turned into deployment packages (edge, container) by the deployments use case.

:mod:`~heimdall.export_package.layout` names its files, :mod:`~heimdall.export_package.metadata`
is ``metadata.json`` (one model for writing and reading), :mod:`~heimdall.export_package.archive`
the zip conventions, :mod:`~heimdall.export_package.triton` the Triton configuration (generator and
check), :mod:`~heimdall.export_package.reader` the checked reading of a package, and
:mod:`~heimdall.export_package.edge` and :mod:`~heimdall.export_package.container` the deployment
packages built from it (:mod:`~heimdall.export_package.deployment`: what those two share). Nothing
here imports torch, onnx, onnxruntime or numpy: the API Lambda uses it.
"""
