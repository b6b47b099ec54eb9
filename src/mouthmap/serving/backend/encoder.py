"""``mouthmap_encoder``: the package's ONNX model in ONNX Runtime, behind Triton's dynamic
batcher; how a batch is run (``batch_mode``: exact | padded) is explained in
:mod:`mouthmap.serving.batching`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mouthmap.serving.batching import run_batch
from mouthmap.serving.protocol import LENGTHS, LOG_PROBS, VIDEO


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from mouthmap.runtime.runner import OnnxRunner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("ort_threads", "0")) or None
        here = Path(args["model_repository"]) / args["model_version"]
        self.runner = OnnxRunner(here / "model.onnx", threads=threads)
        self.mode = params.get("batch_mode", "exact")

    def execute(self, requests: list) -> list:
        videos, lengths, bad = [], [], {}
        for i, r in enumerate(requests):
            v = pb_utils.get_input_tensor_by_name(r, VIDEO).as_numpy()
            n = pb_utils.get_input_tensor_by_name(r, LENGTHS).as_numpy().reshape(-1)
            if len(n) != len(v) or (n > v.shape[2]).any() or (n < 1).any():
                bad[i] = f"lengths {n.tolist()} do not fit video of shape {list(v.shape)}"
                continue
            videos.append(v)
            lengths.append(n.astype(np.int64))
        outs = iter(run_batch(self.runner.run, videos, lengths, self.mode)) if videos else iter(())
        responses = []
        for i in range(len(requests)):
            if i in bad:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(bad[i])))
            else:
                out = next(outs)
                tensor = pb_utils.Tensor(LOG_PROBS, np.ascontiguousarray(out))
                responses.append(pb_utils.InferenceResponse([tensor]))
        return responses
