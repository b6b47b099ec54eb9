"""Log-mel features: the input of the audio teacher."""

from __future__ import annotations

import numpy as np
import pytest

from mouthmap.data.audio_features import log_mel, mel_centres_hz, mel_filterbank

SR = 16000


def tone(hz: float, seconds: float = 3.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_three_seconds_of_audio_give_about_300_frames_of_80_mels() -> None:
    feats = log_mel(tone(440.0), sample_rate=SR, n_mels=80)
    assert feats.dtype == np.float32
    assert feats.shape[1] == 80
    assert 298 <= feats.shape[0] <= 302  # 100 frames/s: 4 per 25 fps video frame


@pytest.mark.parametrize("hz", [300.0, 1000.0, 3000.0])
def test_a_sine_tone_peaks_in_the_mel_band_of_its_frequency(hz: float) -> None:
    feats = log_mel(tone(hz), sample_rate=SR, n_mels=80)
    centres = mel_centres_hz(80, SR)
    peak = int(np.argmax(feats.mean(axis=0)))
    nearest = int(np.argmin(np.abs(centres - hz)))
    assert abs(peak - nearest) <= 1
    # and it stands well above the bands far away from it
    far = feats.mean(axis=0)[np.abs(np.arange(80) - peak) > 10]
    assert feats.mean(axis=0)[peak] > far.max() + 5


def test_silence_gives_a_finite_floor_not_minus_infinity() -> None:
    feats = log_mel(np.zeros(SR, np.float32))
    assert np.isfinite(feats).all()
    assert feats.max() == pytest.approx(np.log(1e-6), abs=1e-3)


def test_louder_audio_gives_larger_log_mel() -> None:
    quiet = log_mel(tone(1000.0, amplitude=0.05)).mean()
    loud = log_mel(tone(1000.0, amplitude=0.5)).mean()
    assert loud > quiet


def test_filterbank_triangles_cover_the_spectrum_without_gaps() -> None:
    fb = mel_filterbank(80, 512, SR)
    assert fb.shape == (257, 80)
    assert fb.max() <= 1.0 + 1e-6
    # no empty band: even the narrowest low bands (< one 31 Hz bin wide) catch a bin
    assert (fb.max(axis=0) > 0.3).all()
    assert (fb[1:-1].sum(axis=1) > 0).all()  # every inner bin feeds some band


def test_very_short_audio_still_gives_one_frame_and_stereo_is_rejected() -> None:
    assert log_mel(np.zeros(100, np.float32)).shape == (1, 80)
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, SR), np.float32))
