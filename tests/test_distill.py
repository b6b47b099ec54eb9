"""Knowledge distillation: the losses, the teachers it accepts, and a distilled student end to
end through `mouthmap distill`, plus the ablation runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_SPEC, write_params
from mouthmap import alphabet
from mouthmap.cli import app
from mouthmap.config import load_params
from mouthmap.train import checkpoint
from mouthmap.train.distill import feature_kd, load_teacher, renormalise, response_kd
from mouthmap.train.trainer import load_for_inference, train

TINY_AUDIO = {
    "modality": "audio",
    "encoder": "mstcn",
    "encoder_args": {"width": 40, "blocks": 1},
    "subsampling_args": {"channels": 8, "subsample_dim": 32},
    "specaugment": None,
}
C = alphabet.NUM_CLASSES


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log_probs(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).log_softmax(-1)


# --- the losses ------------------------------------------------------------------------------


def test_response_kd_is_zero_for_the_teachers_own_distribution_and_positive_otherwise():
    teacher, lengths = _log_probs(2, 9, C), torch.tensor([9, 6])
    assert response_kd(teacher.clone(), teacher, lengths, temperature=2.0) == 0
    student = _log_probs(2, 9, C, seed=1)
    soft, sharp = (response_kd(student, teacher, lengths, temperature=t) for t in (4.0, 1.0))
    assert soft > 0 and sharp > 0
    kl = torch.nn.functional.kl_div(student[0], teacher[0], log_target=True, reduction="none")
    per_frame = torch.cat([kl.sum(-1), torch.nn.functional.kl_div(
        student[1, :6], teacher[1, :6], log_target=True, reduction="none").sum(-1)])  # fmt: skip
    torch.testing.assert_close(sharp, per_frame.mean())  # T = 1: plain KL on valid frames


def test_distillation_losses_ignore_padded_frames():
    teacher, student = _log_probs(2, 9, C), _log_probs(2, 9, C, seed=1)
    lengths = torch.tensor([9, 5])
    other_teacher, other_student = teacher.clone(), student.clone()
    other_teacher[1, 5:] = _log_probs(4, C, seed=2)
    other_student[1, 5:] = _log_probs(4, C, seed=3)
    torch.testing.assert_close(
        response_kd(student, teacher, lengths), response_kd(other_student, other_teacher, lengths)
    )
    same = teacher.clone()
    same[1, 5:] = student[1, 5:]
    assert response_kd(same, teacher, lengths) == 0  # differences in padding do not count

    s, a = torch.randn(2, 9, 6), torch.randn(2, 9, 6)
    s2 = s.clone()
    s2[1, 5:] = -a[1, 5:]  # maximally wrong, but on padding only
    torch.testing.assert_close(feature_kd(s, a, lengths), feature_kd(s2, a, lengths))
    assert feature_kd(a * 3.0, a, lengths) < 1e-6 < feature_kd(-a, a, lengths)  # cosine: scale-free


def test_cross_modal_kd_compares_video_frames_with_the_audio_frames_of_the_same_time():
    """A clip whose audio outlasts its video (mel 301 -> 75 audio frames, 74 video frames)
    is compared on the common frames; frame t of each is the same 40 ms."""
    from mouthmap.models import build_model

    audio = build_model(TINY_AUDIO).eval()
    mel = torch.randn(1, 301, 80)
    with torch.no_grad():
        _, feats = audio(mel, torch.tensor([301]), return_features=True)
    a_len = audio.output_lengths(torch.tensor([301]))
    assert feats.shape[1] == int(a_len) == 75  # 4 mel frames per video frame
    student = feats[:, :74].clone()
    loss = feature_kd(student, feats, torch.tensor([74]), a_len)
    assert loss < 1e-6  # frame t matched to frame t; the extra audio frame is left out
    shifted = feature_kd(feats[:, 1:75], feats, torch.tensor([74]), a_len)
    assert shifted > 10 * max(float(loss), 1e-6)


# --- teachers and the distilled student -------------------------------------------------------


@pytest.fixture(scope="module")
def teachers(prepared_sample, tmp_path_factory) -> dict[str, Path]:
    """A tiny visual and a tiny audio teacher, one epoch each on 4 clips."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for kind, spec in (("visual", TINY_SPEC), ("audio", TINY_AUDIO)):
        (root / kind).mkdir()
        params = load_params(
            write_params(
                root / kind,
                data={"prepared_dir": str(prepared_sample / "prepared")},
                model={"name": f"tiny_{kind}", "spec": spec},
                train={"limit_train": 4},
            )
        )
        out[kind] = train(params, progress=False).best_checkpoint
    return out


def _distill_params(tmp_path: Path, prepared: Path, teachers: dict[str, Path], **distill) -> Path:
    values = {
        "visual_teacher": str(teachers["visual"]), "audio_teacher": str(teachers["audio"]),
        "audio_kl_weight": 0.1, "out_dir": str(tmp_path / "runs" / "distill"), **distill,
    }  # fmt: skip
    return write_params(
        tmp_path,
        data={"prepared_dir": str(prepared / "prepared")},
        train={"limit_train": 4},
        distill=values,
    )


def test_mouthmap_distill_trains_a_student_that_exports_without_the_projection(
    prepared_sample, teachers, tmp_path
):
    import mlflow

    from mouthmap import stages

    params_file = _distill_params(tmp_path, prepared_sample, teachers)
    result = CliRunner().invoke(app, ["distill", "-p", str(params_file)])
    assert result.exit_code == 0, result.output
    assert "distilled into tiny for 1 epochs" in result.output
    out = tmp_path / "runs" / "distill"
    history = json.loads((out / "history.json").read_text())
    assert {"train_ctc", "train_kd", "train_feature", "train_audio_kl"} <= set(history[0])
    assert all(history[0][k] > 0 for k in ("train_kd", "train_feature", "train_audio_kl"))

    state = checkpoint.load(out / "best.pt")
    assert state["objective_name"] == "distill" and state["frame_rate"] == 25
    assert state["objective"]["projection"]["weight"].shape == (40, 48)  # student 48 -> audio 40
    student, _ = load_for_inference(out / "best.pt")
    assert not any("projection" in k for k in student.state_dict())
    params = load_params(params_file)
    pkg = stages.export_model(params, out / "best.pt", tmp_path / "package")
    import onnx

    shapes = {tuple(t.dims) for t in onnx.load(str(pkg.fp32_path)).graph.initializer}
    assert (40, 48) not in shapes and (48, 40) not in shapes
    assert pkg.meta["metrics"]["onnx_max_abs_diff"] < 1e-3

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["mouthmap"], output_format="list")[0]
    assert run.info.run_name == "distill-tiny"
    assert run.data.params["distill.temperature"] == "2.0"
    assert {"train_ctc", "train_kd", "train_feature", "train_audio_kl", "val_wer"} <= set(
        run.data.metrics
    )


def _rewritten(src: Path, dst: Path, **changes) -> Path:
    state = checkpoint.load(src)
    checkpoint.save(dst, {**state, **changes})
    return dst


def test_teachers_for_another_alphabet_frame_rate_or_modality_are_refused_by_name(
    prepared_sample, teachers, tmp_path
):
    other_alphabet = _rewritten(
        teachers["visual"], tmp_path / "apostrophe.pt", alphabet=[*alphabet.SYMBOLS, "'"]
    )
    at_50 = _rewritten(teachers["audio"], tmp_path / "audio50.pt", frame_rate=50)
    with pytest.raises(checkpoint.CheckpointError, match="apostrophe.pt was trained for alphabet"):
        load_teacher(other_alphabet, "video")
    with pytest.raises(checkpoint.CheckpointError, match="audio50.pt outputs 50 frames/s, not 25"):
        load_teacher(at_50, "audio")
    with pytest.raises(checkpoint.CheckpointError, match=r"best.pt: the teacher must read video"):
        load_teacher(teachers["audio"], "video")

    params_file = _distill_params(tmp_path, prepared_sample, teachers, audio_teacher=str(at_50))
    result = CliRunner().invoke(app, ["distill", "-p", str(params_file)])
    assert result.exit_code == 2 and "audio50.pt outputs 50 frames/s" in result.output
    assert not (tmp_path / "runs" / "distill" / "best.pt").exists()  # refused before training


def test_the_ablation_compares_four_configurations_on_the_same_budget(
    prepared_sample, teachers, tmp_path
):
    import mlflow

    from mouthmap.train.ablation import CONFIGS, run_ablation

    params = load_params(_distill_params(tmp_path, prepared_sample, teachers))
    results = run_ablation(params, limit_train=2, out_dir=tmp_path / "ablation", splits=("val",))
    rows = {r["config"]: r for r in results["rows"]}
    assert list(rows) == list(CONFIGS) and results["limit_train"] == 2
    for r in rows.values():
        assert set(r["wer"]["val"]) == {"greedy", "beam"}
        assert all(0 <= v <= 5 for v in r["wer"]["val"].values())
    assert rows["student"]["distill"]["kd_weight"] == 0
    assert rows["response_kd"]["distill"]["feature_weight"] == 0
    table = (tmp_path / "ablation" / "results.md").read_text()
    assert table.count("\n") == 2 + 4 and "+ cross-modal KD" in table
    saved = json.loads((tmp_path / "ablation" / "results.json").read_text())
    assert saved["rows"][0]["train_run_id"] == rows["student"]["train_run_id"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    parent = mlflow.get_run(results["run_id"])
    assert "both_kd.val_beam_wer" in parent.data.metrics
    for r in rows.values():  # nested under the parent, all on the same seed and data budget
        child = mlflow.get_run(r["train_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == results["run_id"]
        assert (child.data.params["train_clips"], child.data.params["train.seed"]) == ("2", "1234")


def test_loading_teachers_leaves_the_seeded_random_stream_alone(teachers):
    """Every ablation configuration must see the same data order and augmentations."""
    from mouthmap.models import build_model
    from mouthmap.train.distill import DistillationObjective

    objective = DistillationObjective(teachers["visual"], teachers["audio"])
    student = build_model(TINY_SPEC)
    before = torch.get_rng_state()
    objective.setup(student, torch.device("cpu"))
    assert objective.visual is not None and objective.projection is not None
    assert torch.equal(torch.get_rng_state(), before)
    assert all(not p.requires_grad for p in objective.audio.parameters())
    assert not objective.visual.training and not objective.audio.training


# --- a released model package as the visual teacher -------------------------------------------


@pytest.fixture(scope="module")
def teacher_package(prepared_sample, teachers, tmp_path_factory) -> Path:
    """The tiny visual teacher exported as a model package (FP32 ONNX, no checkpoint)."""
    from mouthmap import stages

    root = tmp_path_factory.mktemp("teacher_package")
    params = load_params(
        write_params(
            root,
            data={"prepared_dir": str(prepared_sample / "prepared")},
            model={"name": "tiny_visual", "spec": TINY_SPEC},
        )
    )
    return stages.export_model(params, teachers["visual"], root / "package").root


def test_a_model_package_teaches_what_its_checkpoint_would(teachers, teacher_package):
    from_package = load_teacher(teacher_package, "video", role="visual teacher")
    from_checkpoint = load_teacher(teachers["visual"], "video")
    assert not any(p.requires_grad for p in from_package.parameters())
    x = torch.randn(2, 1, 20, 88, 88, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([20, 13])
    a, b = from_package(x, lengths), from_checkpoint(x, lengths)
    assert a.shape == b.shape == (2, 20, C)
    assert torch.allclose(a[0], b[0], atol=1e-3)
    assert torch.allclose(a[1, :13], b[1, :13], atol=1e-3)
    assert from_package.input_normalisation == from_checkpoint.input_normalisation


def test_mouthmap_distill_learns_from_a_model_package(prepared_sample, teacher_package, tmp_path):
    params_file = _distill_params(
        tmp_path, prepared_sample, {"visual": teacher_package, "audio": teacher_package},
        audio_teacher=None,
    )  # fmt: skip
    result = CliRunner().invoke(app, ["distill", "-p", str(params_file)])
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "runs" / "distill" / "history.json").read_text())
    assert history[0]["train_kd"] > 0 and "train_feature" not in history[0]


def test_a_package_for_another_alphabet_or_frame_rate_is_refused_by_name(teacher_package, tmp_path):
    import shutil

    def rewritten(name: str, change) -> Path:
        pkg = shutil.copytree(teacher_package, tmp_path / name)
        meta = json.loads((pkg / "mouthmap.json").read_text())
        change(meta)
        (pkg / "mouthmap.json").write_text(json.dumps(meta))
        return pkg

    apostrophe = rewritten("apostrophe", lambda m: m["alphabet"]["symbols"].append("'"))
    refused = "apostrophe: the visual teacher is refused"
    with pytest.raises(checkpoint.CheckpointError, match=refused):
        load_teacher(apostrophe, "video", role="visual teacher")
    at_50 = rewritten("at50", lambda m: m["input"].update(fps=50))
    with pytest.raises(checkpoint.CheckpointError, match="at50: the teacher outputs 50 frames/s"):
        load_teacher(at_50, "video")


def test_a_teacher_normalised_otherwise_sees_its_own_normalisation():
    pixels = torch.rand(1, 1, 4, 8, 8)
    data, teacher = (0.5, 0.1), (0.4, 0.2)
    x = (pixels - data[0]) / data[1]
    assert torch.allclose(renormalise(x, data, teacher), (pixels - teacher[0]) / teacher[1])
    assert renormalise(x, data, data) is x and renormalise(x, None, teacher) is x
