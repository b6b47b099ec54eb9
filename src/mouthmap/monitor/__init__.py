"""Drift monitoring: per-request features, the training reference, the Evidently check.

The serving path calls :func:`record_request` once per request (see ``sink``); the
``mouthmap drift`` commands build the reference, check a window and measure the monitor.
"""

from mouthmap.monitor.features import ALL_FEATURES, request_features
from mouthmap.monitor.sink import FeatureSink, load_window, record_request

__all__ = ["ALL_FEATURES", "FeatureSink", "load_window", "record_request", "request_features"]
