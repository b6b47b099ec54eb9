"""ONNX Runtime sessions with execution-provider selection by name.

The same ``model.onnx`` runs on a laptop (CPU), an Android phone (NNAPI), a Qualcomm NPU (QNN),
an iPhone (CoreML) or a GPU server (CUDA); which of these exist depends on the ONNX Runtime
build, not on MouthMap. A provider this build lacks falls back to the CPU with a warning that
names it and the providers that are available, so a script written for a phone still runs here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}


# optional second output of a model exported with its word head (compress/export.py): the
# per-frame word log-probs that the slot decoder reads (decode/slots.py)
WORDS_OUTPUT = "word_log_probs"

NO_QDQ_PROPAGATION = ["QDQPropagationTransformer"]


class ProviderError(ValueError):
    """An execution provider name MouthMap does not know."""


class ProviderFallbackWarning(RuntimeWarning):
    """The requested execution provider is not in this ONNX Runtime build; the CPU runs it."""


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(name: str) -> list[str]:
    """ORT provider list for a short name: ``[requested, CPU]``, or ``[CPU]`` with a warning
    when this build lacks the requested one (the CPU stays last: it runs what others cannot)."""
    key = name.lower()
    if key not in PROVIDERS:
        raise ProviderError(
            f"unknown execution provider {name!r}; choose one of {', '.join(PROVIDERS)}"
        )
    wanted = PROVIDERS[key]
    have = available_providers()
    if key == "cpu":
        return [wanted]
    if wanted not in have:
        message = (
            f"execution provider {key} ({wanted}) is not in this ONNX Runtime build; running on "
            f"CPUExecutionProvider instead (available: {', '.join(have)})"
        )
        warnings.warn(message, ProviderFallbackWarning, stacklevel=3)
        log.warning(message)
        return [PROVIDERS["cpu"]]
    return [wanted, PROVIDERS["cpu"]]


class OnnxRunner:
    """One ONNX Runtime session over a MouthMap model: ``video, lengths -> log_probs``.

    ``threads`` sets ``intra_op_num_threads`` (None: ORT's default, one per core); inter-op
    parallelism stays at 1 because the graph is a chain. ``spin=False`` lets idle worker threads
    sleep instead of spin-waiting (a server sharing its cores with other processes; the
    results are the same)."""

    def __init__(
        self,
        path: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        spin: bool = True,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model")
        self.requested = provider
        providers = resolve_providers(provider)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # ORT moves a QuantizeLinear backwards over data-movement ops (Transpose, Reshape,
        # MaxPool) by default; in front of a float stem that turns its max-pool into ORT's slow
        # uint8 MaxPool (19 ms of a 64 ms clip here). Without the move: 47 ms. FP32 graphs have
        # nothing to move, so this only ever affects quantized models.
        self.session = ort.InferenceSession(
            str(self.path), opts, providers=providers, disabled_optimizers=NO_QDQ_PROPAGATION
        )
        self.providers = self.session.get_providers()
        names = [o.name for o in self.session.get_outputs()]
        # a model exported with its word head also puts out the head's per-frame log-probs
        self._words_at = names.index(WORDS_OUTPUT) if WORDS_OUTPUT in names else None

    @property
    def has_word_head(self) -> bool:
        return self._words_at is not None

    @property
    def provider(self) -> str:
        """The provider that runs the model (the first the session took)."""
        return self.providers[0]

    def run(self, video: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """(B, 1, T, H, W) float32 normalised clips -> (B, T, C) log-probabilities."""
        return self.run_all(video, lengths)[0]

    def run_all(
        self, video: np.ndarray, lengths: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(log-probs (B, T, C), the word head's log-probs (B, T, K) or None without one)."""
        if lengths is None:
            lengths = np.full(video.shape[0], video.shape[2], dtype=np.int64)
        feeds = {"video": np.ascontiguousarray(video, dtype=np.float32),
                 "lengths": np.asarray(lengths, dtype=np.int64)}  # fmt: skip
        out = self.session.run(None, feeds)
        return out[0], (None if self._words_at is None else out[self._words_at])

    def clip(self, frames: np.ndarray) -> np.ndarray:
        """One normalised clip (T, H, W) -> (T, C) log-probabilities."""
        return self.run(frames[None, None])[0]

    def clip_all(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One normalised clip (T, H, W) -> (its log-probs, its word log-probs or None)."""
        lp, words = self.run_all(frames[None, None])
        return lp[0], (None if words is None else words[0])
