"""The Kubeflow side: pipeline parameters mirrored from params.yaml, the steps the
components call, compiling, local runs (``kfp.local``) and submission to an endpoint."""
