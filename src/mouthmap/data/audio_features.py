"""Log-mel features in plain numpy.

There is no CPU torchaudio here and librosa would be a heavy dependency for
fifty lines of maths; owning the filterbank also pins the exact features the
audio teacher was trained on. At a 10 ms hop the audio runs at 100 frames/s,
four audio frames per 25 fps video frame, which the cross-modal KD relies on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hz_to_mel", "log_mel", "mel_centres_hz", "mel_filterbank", "mel_to_hz"]


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular HTK mel filters, shape (n_fft // 2 + 1, n_mels), peak 1 (no area norm).

    Band ``m`` peaks at ``mel_to_hz(linspace(mel(f_min), mel(f_max), n_mels + 2))[m + 1]``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    bin_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]
    rising = (bin_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bin_hz[:, None]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


def mel_centres_hz(
    n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Centre frequency of each mel band (useful to read a spectrogram)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    return mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))[1:-1]


def log_mel(
    audio: np.ndarray,
    sample_rate: int = 16000,
    n_mels: int = 80,
    win_ms: float = 25,
    hop_ms: float = 10,
) -> np.ndarray:
    """Mono waveform -> (frames, n_mels) float32 log mel power.

    Frames are centred (reflect padding of half a window), so frame ``i`` covers
    time ``i * hop`` and a clip of ``n`` samples gives ``1 + n // hop`` frames.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {audio.shape}")
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    n_fft = 1 << (win - 1).bit_length()  # next power of two: faster rfft, finer bins
    pad = n_fft // 2
    mode = "reflect" if audio.size > pad else "constant"
    padded = np.pad(audio, pad, mode=mode)
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop, padded.strides[0]),
        writeable=False,
    )
    # Hann window of win_length, zero-padded and centred in the n_fft frame.
    window = np.zeros(n_fft, np.float32)
    start = (n_fft - win) // 2
    window[start : start + win] = np.hanning(win + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = power.astype(np.float32) @ mel_filterbank(n_mels, n_fft, sample_rate)
    return np.log(mel + 1e-6).astype(np.float32)
