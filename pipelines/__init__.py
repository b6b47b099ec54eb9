"""Kubeflow pipeline definitions of MouthMap and their compiled IR (``*.yaml``)."""
