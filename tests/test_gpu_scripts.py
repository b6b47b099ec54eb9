"""scripts/gpu_train.sh, the one command a lent GPU machine runs, works end to end (on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mouthmap.data.pack import pack
from mouthmap.train.trainer import load_for_inference

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_train_unpacks_probes_trains_within_its_budget_and_leaves_a_slim_checkpoint(
    prepared_sample: Path, tmp_path
):
    # a stand-in for the device's copy of the repository: the script, params.yaml, the bundle
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gpu_train.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "params.yaml", tmp_path)
    pack(prepared_sample / "prepared", tmp_path / ".gpu" / "grid.tar")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "ALLOW_CPU": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # python3: this one
    }
    overrides = ["train.limit_train=4", "train.batch_size=4", "train.num_workers=0"]
    got = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "2", *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    assert "unpacked 20 clips" in got.stdout and "no GPU, training on the CPU" in got.stdout
    assert "s/epoch; training" in got.stdout  # the probe sized the run to the budget
    history = json.loads((out / "history.json").read_text())
    planned = int(got.stdout.split("s/epoch; training ")[1].split()[0])
    assert 1 <= len(history) <= planned
    assert f"trained student for {len(history)} epochs" in got.stdout
    model, _ = load_for_inference(out / "best.pt")
    assert model is not None and (out / "learning_curve.png").is_file()
    used = (out / "params.yaml").read_text()
    assert "mlflow_uri: 'off'" in used and f"epochs: {planned}" in used
    assert not (tmp_path / "mlruns").exists()  # no tracking store where MLflow is absent

    bad = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "2", "epochs=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "is not section.key=value" in bad.stderr
    # a run that fails on the machine shows why in the call's output, not only in $OUT
    failed = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "2", "model.name=no_such_model"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert failed.returncode != 0 and "no_such_model" in failed.stdout
    # without a GPU and without ALLOW_CPU it stops at once instead of spending the lease
    no_gpu = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "2"],
        cwd=tmp_path, env={**env, "ALLOW_CPU": "0"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert no_gpu.returncode != 0 and "PyTorch sees no GPU" in no_gpu.stderr
    # nothing bundled: said at once
    (tmp_path / ".gpu" / "grid.tar").unlink()
    unbundled = subprocess.run(
        ["bash", "scripts/gpu_train.sh", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unbundled.returncode != 0 and "run scripts/gpu_bundle.sh first" in unbundled.stderr
