"""Training: the loss goes down, checkpoints resume, MLflow gets everything, DDP runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_params
from mouthmap.cli import app
from mouthmap.config import load_params
from mouthmap.train import checkpoint
from mouthmap.train.trainer import load_for_inference, train


def _params(tmp_path: Path, prepared: Path, **train_args):
    return load_params(
        write_params(
            tmp_path,
            data={"prepared_dir": str(prepared / "prepared")},
            train=train_args,
        )
    )


def test_training_reduces_the_ctc_loss_and_logs_to_mlflow(prepared_sample, tmp_path):
    import mlflow

    params = _params(tmp_path, prepared_sample, epochs=3, lr=3e-3)
    result = train(params, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.best_checkpoint.is_file() and (result.out_dir / "last.pt").is_file()
    assert (result.out_dir / "learning_curve.png").stat().st_size > 1000

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    run = mlflow.get_run(result.run_id)
    assert run.data.params["train.epochs"] == "3"
    assert run.data.params["train_clips"] == "14"
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val_wer")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"history.json", "learning_curve.png", "checkpoint"} <= artifacts


def test_resume_continues_where_the_last_checkpoint_stopped(prepared_sample, tmp_path):
    first = train(_params(tmp_path, prepared_sample, epochs=1), progress=False)
    assert len(first.history) == 1
    resumed = train(_params(tmp_path, prepared_sample, epochs=2), resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 was not redone


def test_a_checkpoint_loads_back_into_the_same_model(prepared_sample, tmp_path):
    result = train(_params(tmp_path, prepared_sample), progress=False)
    model, state = load_for_inference(result.best_checkpoint)
    assert not model.training
    assert state["normalisation"]["std"] > 0 and state["model_spec"]["backend"] == "mstcn"


def test_fine_tuning_starts_from_the_given_checkpoint(prepared_sample, tmp_path):
    import torch

    for sub in "abc":
        (tmp_path / sub).mkdir()
    first = train(_params(tmp_path / "a", prepared_sample, epochs=1, align_weight=1.0),
                  progress=False)  # fmt: skip
    start, _ = load_for_inference(first.best_checkpoint)
    # lr ~0 so the fine-tuned weights can only equal the starting ones if they were loaded
    tuned = train(
        _params(tmp_path / "b", prepared_sample, epochs=1, lr=1e-12, align_weight=1.0,
                init_from=str(first.best_checkpoint)),
        progress=False,
    )  # fmt: skip
    after, _ = load_for_inference(tuned.out_dir / "last.pt")
    w0, w1 = dict(start.named_parameters()), dict(after.named_parameters())
    assert all(torch.allclose(w0[k], w1[k], atol=1e-6) for k in w0)  # (BatchNorm stats move)
    # the word head comes along: a fine-tune goes on from it, not from a fresh one
    h0 = checkpoint.load(first.best_checkpoint)["objective"]["align_head"]
    h1 = checkpoint.load(tuned.out_dir / "last.pt")["objective"]["align_head"]
    assert all(torch.allclose(h0[k], h1[k], atol=1e-6) for k in h0)

    student = checkpoint.load(first.best_checkpoint)
    student["model"] = {"nonsense.weight": torch.zeros(1)}
    checkpoint.save(tmp_path / "other.pt", student)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit this model"):
        train(_params(tmp_path / "c", prepared_sample, init_from=str(tmp_path / "other.pt")),
              progress=False)  # fmt: skip


def test_a_slim_checkpoint_predicts_the_same_but_cannot_resume(prepared_sample, tmp_path):
    import torch

    first = train(_params(tmp_path, prepared_sample, epochs=1), progress=False)
    slim = tmp_path / "slim" / "best.pt"
    result = CliRunner().invoke(app, ["models", "slim", str(first.best_checkpoint), str(slim)])
    assert result.exit_code == 0, result.output
    assert slim.stat().st_size < 0.6 * first.best_checkpoint.stat().st_size
    full, _ = load_for_inference(first.best_checkpoint)
    light, state = load_for_inference(slim)
    video = torch.randn(1, 1, 30, 88, 88)
    with torch.no_grad():
        assert torch.equal(full(video, torch.tensor([30])), light(video, torch.tensor([30])))
    assert state["normalisation"] == checkpoint.load(first.best_checkpoint)["normalisation"]
    # the copy that gets shared does not name this machine's folders
    assert checkpoint.load(first.best_checkpoint)["params"]["data"]["prepared_dir"] == str(
        prepared_sample / "prepared"
    )
    assert state["params"]["data"]["prepared_dir"] == "prepared"
    assert str(tmp_path) not in repr(state["params"])

    slim.replace(first.out_dir / "last.pt")  # as if a run directory held only the slim copy
    with pytest.raises(checkpoint.CheckpointError, match="slim copy .* cannot resume"):
        train(_params(tmp_path, prepared_sample, epochs=2), resume=True, progress=False)
    bad = CliRunner().invoke(app, ["models", "slim", str(tmp_path / "nope.pt"), str(slim)])
    assert bad.exit_code == 2 and "nope.pt not found" in bad.output


def test_only_absolute_paths_are_cut_from_shared_params():
    params = {
        "data": {"source": "/home/alice/grid", "raw_dir": "data/grid", "speakers": ["s1"]},
        "train": {"mlflow_uri": "sqlite:////home/alice/mlruns/mlflow.db", "lr": 0.002},
        "stack": {"s3": "http://localhost:9000", "win": "C:\\Users\\bob\\teacher.pt"},
    }
    assert checkpoint.without_machine_paths(params) == {
        "data": {"source": "grid", "raw_dir": "data/grid", "speakers": ["s1"]},
        "train": {"mlflow_uri": "sqlite://mlflow.db", "lr": 0.002},
        "stack": {"s3": "http://localhost:9000", "win": "teacher.pt"},
    }


def test_a_corrupt_checkpoint_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="best.pt is not a readable checkpoint"):
        load_for_inference(bad)
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(bad)])
    assert result.exit_code == 2 and "not a readable checkpoint" in result.output


def test_an_unknown_model_name_fails_before_training(prepared_sample, tmp_path):
    params = write_params(tmp_path, data={"prepared_dir": str(prepared_sample / "prepared")})
    result = CliRunner().invoke(app, ["train", "--model", "lipformer9000", "-p", str(params)])
    assert result.exit_code == 2
    assert "unknown model 'lipformer9000'" in result.output and "student" in result.output


def test_data_parallel_training_with_two_cpu_processes(prepared_sample, tmp_path):
    """torchrun starts two gloo ranks; each sees half the clips; rank 0 writes the results."""
    params = write_params(
        tmp_path,
        data={"prepared_dir": str(prepared_sample / "prepared")},
        train={"epochs": 2, "batch_size": 2},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "mouthmap", "train", "-p", str(params),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "train"
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    state = checkpoint.load(out / "last.pt")
    assert not any(k.startswith("module.") for k in state["model"])  # loads without DDP
    assert done.stdout.count("trained tiny for 2 epochs") == 1  # only rank 0 reports


def test_the_alignment_aid_trains_a_word_head_that_is_not_exported(prepared_sample, tmp_path):
    """train.align_weight > 0: every frame is also classified as its aligned word; the loss
    part is logged, the head is kept with the training state but the model stays the same."""
    params = _params(tmp_path, prepared_sample, epochs=2, lr=3e-3, align_weight=1.0)
    result = train(params, progress=False)
    parts = [h["train_align"] for h in result.history]
    assert len(parts) == 2 and parts[-1] < parts[0] and parts[0] > 1.0  # ~log(52) at start
    state = checkpoint.load(result.out_dir / "last.pt")
    assert state["objective"]["align_head"]["weight"].shape[0] == 52
    model, _ = load_for_inference(result.best_checkpoint)
    assert not any("align" in k for k in model.state_dict())
    # The head's own sentences are scored every epoch, and they pick the best checkpoint
    # (greedy CTC only breaks ties): the package's decoder starts from them.
    words = [h["val_words_wer"] for h in result.history]
    assert all(0.0 <= w <= 1.0 for w in words)
    chosen = checkpoint.load(result.best_checkpoint)["history"][-1]
    assert chosen["val_words_wer"] == min(words) == result.best_val_words_wer
    ties = [h["val_wer"] for h in result.history if h["val_words_wer"] == min(words)]
    assert chosen["val_wer"] == min(ties)


def test_training_on_spliced_clips_and_the_splice_gap_of_its_checkpoint(prepared_sample, tmp_path):
    """train.splice_p: every training clip spliced with another at a word boundary; then
    scripts/splice_gap.py reads the checkpoint's word head on whole and spliced clips, without
    the clips the data validation quarantined."""
    from mouthmap.data.prepare import read_manifest

    params = _params(tmp_path, prepared_sample, epochs=1, align_weight=1.0, splice_p=1.0)
    result = train(params, progress=False)
    assert result.history[0]["train_align"] > 0
    manifest = read_manifest(prepared_sample / "prepared")
    val = manifest[(manifest["split"] == "val") & (manifest["status"] == "ok")]["id"]
    assert len(val) == 3
    quarantine = params.path(params.validate_.metrics)
    quarantine.parent.mkdir(parents=True, exist_ok=True)
    quarantine.write_text(json.dumps({"quarantined": [val.iloc[0]]}))
    script = Path(__file__).parents[1] / "scripts" / "splice_gap.py"
    run = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(result.best_checkpoint),
         "-p", str(tmp_path / "params.yaml"), "--train-clips", "5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [r.split("|")[1:-1] for r in run.stdout.splitlines() if r.startswith("| ")][1:]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [("train", 5), ("val", 2)]
    assert all(cell.strip().endswith("%") for r in rows for cell in r[2:])
    (tmp_path / "b").mkdir()
    no_head = train(_params(tmp_path / "b", prepared_sample, epochs=1), progress=False)
    refused = subprocess.run(
        [sys.executable, str(script), "--checkpoint", str(no_head.best_checkpoint)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "no word head" in refused.stderr


def test_weight_ema_averages_parameters_and_buffers_and_puts_the_live_ones_back():
    import torch

    from mouthmap.train.ema import WeightEMA

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ema = WeightEMA({"net": net}, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(4, 2))  # moves BatchNorm's running statistics
    live = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update()
    d = 0.5
    with ema.applied():
        for k, v in net.state_dict().items():
            want = d * start[k] + (1 - d) * live[k] if v.is_floating_point() else live[k]
            assert torch.allclose(v, want), k
    assert all(torch.equal(net.state_dict()[k], live[k]) for k in live)
    with pytest.raises(ValueError, match="decay"):
        WeightEMA({"net": net}, decay=1.0)


def test_an_ema_run_saves_averaged_weights_and_resumes_exactly(
    prepared_sample, tmp_path, monkeypatch
):
    """train.ema_decay: the checkpoints hold the averaged model and word head (what is scored,
    selected and exported); the raw weights ride along only to resume, and a run killed after
    its first epoch resumes to the same weights as one never stopped."""
    import torch

    args = dict(epochs=2, lr=3e-3, align_weight=1.0, ema_decay=0.9)
    (tmp_path / "whole").mkdir()
    whole = train(_params(tmp_path / "whole", prepared_sample, **args), progress=False)
    state = checkpoint.load(whole.out_dir / "last.pt")
    model, raw = state["model"], state["raw"]["model"]
    assert any(not torch.equal(model[k], raw[k]) for k in model if model[k].is_floating_point())
    head, raw_head = state["objective"]["align_head"], state["raw"]["objective"]["align_head"]
    assert not torch.equal(head["weight"], raw_head["weight"])
    slim = checkpoint.slim(whole.out_dir / "last.pt", tmp_path / "slim.pt")
    assert "raw" not in slim and torch.equal(slim["model"]["classifier.weight"],
                                             model["classifier.weight"])  # fmt: skip

    save = checkpoint.save

    def killed_after_saving(path, state):
        save(path, state)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", killed_after_saving)
    with pytest.raises(KeyboardInterrupt):
        train(_params(tmp_path, prepared_sample, **args), progress=False)
    monkeypatch.setattr(checkpoint, "save", save)
    resumed = train(_params(tmp_path, prepared_sample, **args), resume=True, progress=False)

    def scores(history):
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]

    assert scores(resumed.history) == scores(whole.history)
    again = checkpoint.load(resumed.out_dir / "last.pt")
    for k in model:
        assert torch.allclose(again["raw"]["model"][k].float(), raw[k].float(), atol=1e-5), k
        assert torch.allclose(again["model"][k].float(), model[k].float(), atol=1e-5), k


def test_a_wall_time_budget_stops_before_an_epoch_that_would_overrun_it(prepared_sample, tmp_path):
    # an epoch takes seconds here: a 0.01-minute budget allows the first and no other
    runner = CliRunner()
    path = write_params(
        tmp_path, data={"prepared_dir": str(prepared_sample / "prepared")},
        train={"epochs": 3, "mlflow_uri": "off"},
    )  # fmt: skip
    got = runner.invoke(app, ["train", "-p", str(path), "--max-minutes", "0.01"])
    assert got.exit_code == 0, got.output
    assert "trained tiny for 1 epochs" in got.output
    assert "stopped at the 0.01-minute limit" in got.output
    assert (tmp_path / "runs" / "train" / "best.pt").is_file()
    # without the budget the same run goes on to its last epoch
    result = train(_params(tmp_path, prepared_sample, epochs=2, max_minutes=60), progress=False)
    assert result.epochs_run == 2 and not result.out_of_time
