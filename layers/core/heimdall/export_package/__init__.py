"""The export package (``export-package.zip``): its layout and metadata, written by the Batch job and
read, checked and turned into deployment packages (edge, container) by the deployments use case.
"""
