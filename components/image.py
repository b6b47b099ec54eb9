"""The image every MouthMap component runs in: the ``pipeline`` target of the Dockerfile.

Set ``MOUTHMAP_PIPELINE_IMAGE`` when compiling to use your registry's copy (for example
``registry.example.com/mouthmap/pipeline:0.1.0-cuda``); the committed IR uses the default.
"""

from __future__ import annotations

import os

DEFAULT_IMAGE = "mouthmap/pipeline:0.1.0"
PIPELINE_IMAGE = os.environ.get("MOUTHMAP_PIPELINE_IMAGE", DEFAULT_IMAGE)
# the image already holds kfp (a project dependency): no pip install at step start
COMPONENT = {"base_image": PIPELINE_IMAGE, "install_kfp_package": False}
