"""The torch dataset: variable-length batches, augmentation hooks, CTC-ready targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mouthmap import alphabet
from mouthmap.data import cache, dataset
from mouthmap.data.prepare import MANIFEST_COLUMNS, write_manifest


def _write_align(root: Path, cid: str, text: str) -> Path:
    """An .align with each word 8 frames long after 10 frames of silence."""
    lines = ["0 10000 sil"]
    for i, w in enumerate(text.split()):
        lines.append(f"{10000 + 8000 * i} {18000 + 8000 * i} {w}")
    path = root / f"{cid}.align"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fake_cache(tmp_path: Path, lengths=(75, 74, 60), statuses=("ok", "ok", "ok")) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    texts = ["bin blue at f two now", "set red by k one soon", "lay green in a zero please"]
    for i, (n, status) in enumerate(zip(lengths, statuses, strict=True)):
        cid = f"s1_clip{i}"
        npz, _ = cache.clip_paths(tmp_path, cid)
        roi = rng.integers(0, 256, (n, 96, 96), dtype=np.uint8)
        cache.write_arrays(npz, roi=roi, mel=rng.normal(size=(n * 4, 80)).astype(np.float16))
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(
            id=cid, split="train" if i < 2 else "test", status=status, transcript=texts[i],
            n_frames=n, roi_mean=float(roi.mean()), roi_std=float(roi.std()),
            roi_path=str(npz.relative_to(tmp_path)),
            align=str(_write_align(tmp_path, cid, texts[i])) if i != 1 else "",
        )  # fmt: skip
        rows.append(row)
    write_manifest(tmp_path, rows)
    return tmp_path


def test_batches_pad_variable_length_clips_and_keep_their_lengths(tmp_path):
    ds = dataset.GridDataset(_fake_cache(tmp_path), ("train", "test"), dataset.eval_transforms())
    batch = dataset.collate([ds[0], ds[1], ds[2]])
    assert batch.video.shape == (3, 1, 75, 88, 88)
    assert batch.video_lengths.tolist() == [75, 74, 60]
    assert torch.all(batch.video[2, :, 60:] == 0)
    assert batch.target_lengths.tolist() == [len(t) for t in batch.texts]
    first = batch.targets[: batch.target_lengths[0]].tolist()
    assert alphabet.decode(first) == "bin blue at f two now"


def test_batches_feed_ctc_loss(tmp_path):
    ds = dataset.GridDataset(_fake_cache(tmp_path), ("train",), dataset.eval_transforms())
    b = dataset.collate([ds[0], ds[1]])
    log_probs = torch.randn(75, 2, alphabet.NUM_CLASSES).log_softmax(-1)
    loss = torch.nn.functional.ctc_loss(log_probs, b.targets, b.video_lengths, b.target_lengths)
    assert torch.isfinite(loss)


def test_splits_and_rejected_clips_are_respected(tmp_path):
    root = _fake_cache(tmp_path, statuses=("ok", "rejected", "ok"))
    assert [s.id for s in dataset.GridDataset(root, ("train",))] == ["s1_clip0"]
    assert len(dataset.GridDataset(root, ("test",))) == 1
    assert len(dataset.GridDataset(root, ("test",), exclude={"s1_clip2"})) == 0  # quarantined


def test_video_is_normalised_with_train_statistics(tmp_path):
    ds = dataset.GridDataset(_fake_cache(tmp_path), ("train",))
    x = ds[0].video
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1


def test_audio_features_come_along_when_asked(tmp_path):
    ds = dataset.GridDataset(_fake_cache(tmp_path), ("train",), with_audio=True)
    b = dataset.collate([ds[0], ds[1]])
    assert b.mel.shape == (2, 300, 80) and b.mel_lengths.tolist() == [300, 296]


def test_augmentations_crop_flip_and_mask_in_time():
    rng = np.random.default_rng(1)
    x = np.arange(10 * 96 * 96, dtype=np.int64).reshape(10, 96, 96).astype(np.uint8)
    assert dataset.RandomCrop(88)(x, rng).shape == (10, 88, 88)
    assert np.array_equal(dataset.CenterCrop(88)(x, rng), x[:, 4:92, 4:92])
    assert np.array_equal(dataset.HorizontalFlip(1.0)(x, rng), x[:, :, ::-1])
    masked = dataset.TimeMask(max_frames=5, n=3)(x, np.random.default_rng(3))
    changed = [t for t in range(10) if not np.array_equal(masked[t], x[t])]
    assert 0 < len(changed) <= 15 and masked.shape == x.shape


def test_affine_jitter_warps_every_frame_alike_and_changes_lighting():
    yy, xx = np.mgrid[0:96, 0:96]
    frame = ((np.hypot(yy - 48, xx - 30) < 12) * 200 + 20).astype(np.uint8)  # an off-centre disc
    x = np.stack([frame] * 6)
    rotated = dataset.RandomAffine(degrees=30)(x, np.random.default_rng(0))
    assert rotated.shape == x.shape and rotated.dtype == np.uint8
    assert all(np.array_equal(rotated[0], f) for f in rotated[1:])  # one warp for the clip
    assert not np.array_equal(rotated[0], frame)
    assert abs(int(rotated[0].sum()) - int(frame.sum())) < 0.05 * frame.sum()  # moved, not lost
    lit = dataset.RandomAffine(brightness=0.2, contrast=0.5)(x, np.random.default_rng(1))
    assert not np.array_equal(lit, x) and lit.min() >= 0 and lit.max() <= 255
    assert np.array_equal(dataset.RandomAffine()(x, np.random.default_rng(2)), x)  # all off


def test_training_augmentations_follow_the_parameters():
    from mouthmap.config import TrainParams

    default = dataset.train_transforms(TrainParams())
    assert [type(t) for t in default] == [
        dataset.RandomCrop, dataset.HorizontalFlip, dataset.TimeMask
    ]  # fmt: skip
    tfs = dataset.train_transforms(TrainParams(rotate_degrees=5.0, time_masks=3))
    assert isinstance(tfs[0], dataset.RandomAffine) and tfs[0].degrees == 5.0
    assert [t.n for t in tfs if isinstance(t, dataset.TimeMask)] == [3]
    assert not any(
        isinstance(t, dataset.TimeMask) for t in dataset.train_transforms(TrainParams(time_masks=0))
    )


def test_collating_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        dataset.collate([])


def test_normalisation_pools_train_clip_statistics():
    df = pd.DataFrame(
        {"status": ["ok", "ok"], "split": ["train", "train"], "roi_mean": [100.0, 120.0],
         "roi_std": [30.0, 30.0]}
    )  # fmt: skip
    norm = dataset.normalisation_from_manifest(df)
    assert norm.mean == pytest.approx(110 / 255)
    assert norm.std == pytest.approx(np.sqrt(900 + 100) / 255)


def test_frame_word_labels_come_along_for_the_alignment_aid(tmp_path):
    from mouthmap.data.corpus import IGNORE_LABEL, WORDS

    root = _fake_cache(tmp_path)
    data = dataset.GridDataset(root, ("train",), with_alignment=True)
    batch = dataset.collate([data[0], data[1]])
    assert batch.frame_labels.shape == (2, 75)
    first = batch.frame_labels[0]
    assert (first[:10] == 0).all() and int(first[10]) == 1 + WORDS.index("bin")
    assert int(first[18]) == 1 + WORDS.index("blue")
    # clip 1 has no alignment file: every frame ignored, padding too
    assert (batch.frame_labels[1] == IGNORE_LABEL).all()
    assert dataset.GridDataset(root, ("train",))[0].frame_labels is None


def _constant_cache(tmp_path: Path, texts: list[str], lengths: list[int]) -> Path:
    """Train clips whose every pixel is the clip's number x 40, each with an .align (words 8
    frames long after 10 of silence), so a spliced sample shows where each frame came from."""
    rows = []
    for i, (text, n) in enumerate(zip(texts, lengths, strict=True)):
        cid = f"s1_c{i}"
        npz, _ = cache.clip_paths(tmp_path, cid)
        roi, mel = np.full((n, 96, 96), 40 * i, dtype=np.uint8), np.zeros((4 * n, 80), np.float16)
        cache.write_arrays(npz, roi=roi, mel=mel)
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(
            id=cid, split="train", status="ok", transcript=text, n_frames=n, roi_mean=100.0,
            roi_std=50.0, roi_path=str(npz.relative_to(tmp_path)),
            align=str(_write_align(tmp_path, cid, text)),
        )  # fmt: skip
        rows.append(row)
    write_manifest(tmp_path, rows)
    return tmp_path


def test_splicing_cuts_at_the_middle_of_the_pause_between_two_words():
    from mouthmap.data.corpus import Word

    words = [Word(10000, 18000, "bin"), Word(22000, 30000, "blue"), Word(30000, 36000, "at")]
    # pause 18000..22000, middle 20000: frame 20's centre (20500) is the first past it
    assert dataset.splice_point(words, 1) == 20
    assert dataset.splice_point(words, 2) == 30  # no pause: cut where "at" starts
    video = np.arange(50)[:, None, None] * np.ones((1, 2, 2), dtype=np.int64)
    frames, spliced, cut_a, cut_b = dataset.splice(video, words, video + 100, words, 2)
    assert (cut_a, cut_b) == (30, 30)
    assert frames[:, 0, 0].tolist() == [*range(30), *range(130, 150)]
    with pytest.raises(ValueError, match="cannot splice"):
        dataset.splice(video, words, video, words[:2], 1)
    with pytest.raises(ValueError, match="cannot splice"):
        dataset.splice(video, words, video, words, 0)


def test_spliced_samples_are_new_sentences_whose_frames_labels_and_text_agree(tmp_path):
    from mouthmap.data.corpus import WORDS, in_grammar

    texts = ["bin blue at f two now", "set red by k one soon", "lay green in a zero please"]
    root = _constant_cache(tmp_path, texts, [70, 66, 74])
    data = dataset.GridDataset(
        root, ("train",), normalisation=dataset.Normalisation(0.0, 1 / 255),
        with_alignment=True, splice_p=1.0, seed=5,
    )  # fmt: skip
    seen = set()
    for _ in range(8):
        for i in range(3):
            s = data[i]
            assert in_grammar(s.text) and s.text not in texts
            assert alphabet.decode(s.target.tolist()) == s.text
            pixels = s.video[0, :, 0, 0].round().long().tolist()  # the source clip of each frame
            assert pixels[0] == 40 * i and pixels[-1] != 40 * i
            k = pixels.index(pixels[-1])  # where the other clip starts
            assert set(pixels[k:]) == {pixels[-1]} and set(pixels[:k]) == {40 * i}
            own, other = texts[i].split(), texts[pixels[-1] // 40].split()
            words = s.text.split()
            slot = next(n for n in range(1, 6) if words[:n] == own[:n] and words[n:] == other[n:])
            # GRID timings in the fake: word n occupies frames 10 + 8n .. 17 + 8n of each clip
            assert k == 10 + 8 * slot
            labels = s.frame_labels.tolist()
            assert labels[k - 1] == 1 + WORDS.index(own[slot - 1])
            assert labels[k] == 1 + WORDS.index(other[slot])
            assert len(labels) == len(pixels)
            seen.add(s.text)
    assert len(seen) > 6  # many different sentences, not one fixed mix


def test_no_splicing_by_default_or_where_the_audio_must_stay_in_step(tmp_path):
    texts = ["bin blue at f two now", "set red by k one soon"]
    root = _constant_cache(tmp_path, texts, [70, 66])
    plain = dataset.GridDataset(root, ("train",), with_alignment=True)
    assert [plain[i].text for i in range(2)] == texts
    # the mel cannot follow a cut in the video
    audio = dataset.GridDataset(root, ("train",), with_alignment=True, with_audio=True, splice_p=1)
    assert [audio[i].text for i in range(2)] == texts
    assert [len(audio[i].frame_labels) for i in range(2)] == [70, 66]
