"""The audio teacher: one output per video frame, trains with CTC, loads back, and takes a
user's own pretrained encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import write_params
from mouthmap import alphabet
from mouthmap.cli import app
from mouthmap.config import load_params
from mouthmap.data import dataset as ds
from mouthmap.data.prepare import read_manifest
from mouthmap.models import build_model
from mouthmap.models.audio import Conv2dSubsampling, resample_to
from mouthmap.train.trainer import load_for_inference, train

TINY_AUDIO = {
    "modality": "audio",
    "encoder": "mstcn",
    "encoder_args": {"width": 48, "blocks": 1},
    "subsampling_args": {"channels": 8, "subsample_dim": 32},
    "specaugment": {"freq_masks": 1, "freq_width": 8, "time_masks": 1, "time_width": 10},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sample_batch(prepared: Path) -> ds.Batch:
    data = ds.GridDataset(prepared / "prepared", ("train", "val", "test"), with_audio=True)
    return ds.collate([data[i] for i in range(len(data))])


def test_audio_outputs_one_frame_per_video_frame_on_the_sample_clips(prepared_sample):
    manifest = read_manifest(prepared_sample / "prepared")
    assert (manifest["mel_frames"] == 4 * manifest["n_frames"] + 1).all()  # centred STFT frames
    batch = _sample_batch(prepared_sample)
    model = build_model("audio_teacher").eval()
    with torch.no_grad():
        log_probs, feats = model(batch.mel, batch.mel_lengths, return_features=True)
    assert len(batch.ids) == 20
    assert log_probs.shape == (20, int(batch.video_lengths.max()), alphabet.NUM_CLASSES)
    assert feats.shape[:2] == log_probs.shape[:2]
    assert torch.equal(model.output_lengths(batch.mel_lengths), batch.video_lengths)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))


def test_a_clip_reads_the_same_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    model = build_model(TINY_AUDIO).eval()
    mel = torch.randn(2, 301, 80)
    mel[1, 290:] = 7.0  # junk beyond the second clip's end
    lengths = torch.tensor([301, 290])
    with torch.no_grad():
        together = model(mel, lengths)
        alone = model(mel[1:, :290], lengths[1:])
    assert alone.shape[1] == 290 // 4
    torch.testing.assert_close(together[1, : 290 // 4], alone[0], atol=1e-5, rtol=1e-5)


def test_each_output_frame_reads_the_four_mel_frames_of_its_video_frame():
    """Changing the 4 mel frames of video frame k changes output k and its neighbours only."""
    torch.manual_seed(0)
    sub = Conv2dSubsampling(n_mels=80, channels=4, out_dim=8).eval()
    mel, lengths = torch.randn(1, 101, 80), torch.tensor([101])
    with torch.no_grad():
        base, n = sub(mel, lengths)
        assert base.shape[1] == int(n) == 25
        for k in (0, 7, 24):
            moved = mel.clone()
            moved[:, 4 * k : 4 * k + 4] += 3.0
            changed = (sub(moved, lengths)[0] - base).abs().amax(-1)[0] > 1e-6
            assert changed[k]
            assert set(torch.nonzero(changed).flatten().tolist()) <= {k - 1, k, k + 1}


def test_training_the_audio_teacher_reduces_its_loss_and_it_loads_back(prepared_sample, tmp_path):
    params = load_params(
        write_params(
            tmp_path,
            data={"prepared_dir": str(prepared_sample / "prepared")},
            model={"name": "tiny_audio", "spec": TINY_AUDIO},
            train={"epochs": 2, "lr": 3e-3},
        )
    )
    result = train(params, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
    model, state = load_for_inference(result.best_checkpoint)
    assert (state["modality"], state["frame_rate"], model.modality) == ("audio", 25, "audio")
    assert not model.training


def test_the_alignment_aid_also_trains_the_audio_teacher(prepared_sample, tmp_path):
    """Audio outputs run at 25 frames/s like the .align frames, so the per-frame word head
    applies to the audio teacher too (it once was video-only)."""
    params = load_params(
        write_params(
            tmp_path,
            data={"prepared_dir": str(prepared_sample / "prepared")},
            model={"name": "tiny_audio", "spec": TINY_AUDIO},
            train={"epochs": 2, "lr": 3e-3, "align_weight": 1.0},
        )
    )
    result = train(params, progress=False)
    parts = [h["train_align"] for h in result.history]
    assert len(parts) == 2 and parts[-1] < parts[0]
    model, _ = load_for_inference(result.best_checkpoint)
    assert not any("align" in k for k in model.state_dict())

    # the head is a word classifier: a slim copy keeps it and it decodes within the grammar
    from mouthmap.data.corpus import in_grammar
    from mouthmap.evaluation.evaluate import evaluate_checkpoint
    from mouthmap.train import checkpoint

    slim = checkpoint.slim(result.best_checkpoint, tmp_path / "slim.pt")
    assert set(slim["objective"]) == {"align_head"}
    report = evaluate_checkpoint(
        tmp_path / "slim.pt", prepared_sample / "prepared", None, {}, ("test",),
        ("greedy", "words"),
    )  # fmt: skip
    assert report["word_head"] and report["test"]["words"]["clips"] == 3
    assert all(in_grammar(hyp) for _, hyp in report["test"]["words"]["examples"])


def test_mouthmap_train_model_audio_teacher_runs(prepared_sample, tmp_path):
    params = write_params(tmp_path, data={"prepared_dir": str(prepared_sample / "prepared")})
    out = tmp_path / "runs" / "audio_teacher"
    args = ["train", "--model", "audio_teacher", "--out", str(out), "--limit-train", "4"]
    result = CliRunner().invoke(app, [*args, "-p", str(params)])
    assert result.exit_code == 0, result.output
    assert "trained audio_teacher for 1 epochs" in result.output
    _, state = load_for_inference(out / "best.pt")
    assert state["model_name"] == "audio_teacher" and state["modality"] == "audio"

    # scored like any model: greedy and beam+LM WER per split from its log-mels
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "test",
              "-p", str(params)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "reports" / "eval" / "evaluation.json").read_text())
    assert report["modality"] == "audio" and report["test"]["beam"]["clips"] == 3

    # slot decoding by the word head is refused, naming why, for a run that trained none
    assert not load_for_inference(out / "best.pt")[1]["objective"]  # tests train CTC alone
    result = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--decoder", "words",
              "-p", str(params)],
    )  # fmt: skip
    assert result.exit_code != 0 and "word head" in result.output


def test_an_audio_model_is_not_exported_as_a_lip_reading_package():
    from mouthmap.compress.export import export_onnx

    with pytest.raises(ValueError, match="only visual models export"):
        export_onnx(build_model(TINY_AUDIO), "unused.onnx")


# --- a user's own pretrained encoder ----------------------------------------------------------


class TinyEncoder(nn.Module):
    """Stands in for a pretrained encoder: log-mel at 100/s -> features at 50/s."""

    def __init__(self, dim: int = 12):
        super().__init__()
        self.conv = nn.Conv1d(80, dim, kernel_size=2, stride=2)
        self.drop = nn.Dropout(0.5)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(mel.transpose(1, 2)).transpose(1, 2))


def make_tiny_encoder(dim: int = 12) -> TinyEncoder:
    return TinyEncoder(dim)


def _external_spec(checkpoint: Path | None, frame_rate: float = 50) -> dict:
    return {
        "modality": "audio",
        "encoder": "external",
        "encoder_args": {
            "module": f"{__name__}:make_tiny_encoder",
            "factory_args": {"dim": 12},
            "checkpoint": str(checkpoint) if checkpoint else None,
            "feature_dim": 12,
            "frame_rate": frame_rate,
        },  # fmt: skip
        "hidden": 16,
        "head": "bilstm",
        "head_args": {"hidden": 8, "layers": 1},
    }


def test_a_pretrained_external_encoder_plugs_in_frozen_at_25_frames_per_second(tmp_path):
    torch.manual_seed(0)
    pretrained = make_tiny_encoder()
    ckpt = tmp_path / "encoder.pt"
    torch.save({"state_dict": pretrained.state_dict()}, ckpt)
    model = build_model(_external_spec(ckpt)).train()
    torch.testing.assert_close(model.encoder.encoder.conv.weight, pretrained.conv.weight)
    assert not model.encoder.encoder.training  # frozen: dropout stays off

    mel, lengths = torch.randn(2, 301, 80), torch.tensor([301, 250])
    log_probs, feats = model(mel, lengths, return_features=True)
    assert log_probs.shape == (2, 75, alphabet.NUM_CLASSES) and feats.shape == (2, 75, 16)
    assert torch.equal(model.output_lengths(lengths), torch.tensor([75, 62]))
    log_probs.sum().backward()
    assert model.encoder.encoder.conv.weight.grad is None  # frozen
    assert model.encoder.proj.weight.grad is not None  # the head trains

    with pytest.raises(ValueError, match="cannot be imported"):
        build_model({**_external_spec(None), "encoder_args": {
            **_external_spec(None)["encoder_args"], "module": "no_such_pkg.mod:make"}})  # fmt: skip
    with pytest.raises(ValueError, match="needs encoder_args"):
        build_model({"modality": "audio", "encoder": "external", "encoder_args": {}})


def test_external_features_are_resampled_by_area_to_25_per_second():
    x = torch.arange(8.0).reshape(1, 8, 1)  # 50 frames/s: 0, 1, ..., 7
    out = resample_to(x, torch.tensor([8]), 50, torch.tensor([4]))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))  # pair means
    ones = torch.ones(1, 12, 3)  # 40 frames/s: a fractional ratio keeps a constant constant
    out = resample_to(ones, torch.tensor([12]), 40, torch.tensor([7]))
    torch.testing.assert_close(out, torch.ones(1, 7, 3))
    short = resample_to(x[:, :5], torch.tensor([5]), 50, torch.tensor([4]))  # runs out early
    torch.testing.assert_close(short[0, :, 0], torch.tensor([0.5, 2.5, 4.0, 4.0]))


RELEASED_TEACHER = Path(__file__).resolve().parents[1] / "models" / "teachers" / "audio_teacher.pt"


def test_the_committed_audio_teacher_reads_unseen_sample_clips(prepared_sample):
    """The slim checkpoint under models/teachers/ (trained on GRID s1's training split) on the
    sample's val and test clips, which are in the corpus split's val and test: none was
    trained on. Its measured test WER is 3.0% greedy and 0.9% by its word head, so 6 clips
    (36 words) allow a few slips but not a broken file or a changed log-mel pipeline."""
    from mouthmap.evaluation.evaluate import evaluate_checkpoint
    from mouthmap.train import checkpoint

    state = checkpoint.load(RELEASED_TEACHER)
    assert state["modality"] == "audio" and state.get("slim")
    result = evaluate_checkpoint(
        RELEASED_TEACHER, prepared_sample / "prepared", None, {}, ("val", "test"),
        ("greedy", "words"),
    )  # fmt: skip
    wers = [result[s]["greedy"]["wer"] for s in ("val", "test")]
    assert max(wers) <= 2 / 18 + 1e-9, wers  # at most two wrong words in a split's 18
    words = [result[s]["words"]["wer"] for s in ("val", "test")]  # the kept word head
    assert result["word_head"] and max(words) <= 1 / 18 + 1e-9, words
