"""CI sanity training: a tiny model, a few epochs on the committed 20-clip sample; exits 1
unless the training loss went down (a broken data path, loss or optimiser shows here).

    python scripts/sanity_train.py [--epochs 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {  # the same code path as the student, small enough for a CI runner
    "frontend": "shufflenetv2",
    "frontend_args": {"widths": [16, 32, 64], "repeats": [1, 1, 1], "stem": 8, "out_dim": 32},
    "backend": "mstcn",
    "backend_args": {"width": 48, "blocks": 1},
}


def write_params(work: Path, epochs: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(source=str(ROOT / "data" / "sample"), raw_dir=str(work / "grid"),
                       prepared_dir=str(work / "prepared"),
                       splits=str(ROOT / "data" / "splits" / "grid_s1.json"))  # fmt: skip
    raw["validate"].update(data_docs_dir=str(work / "docs"), metrics=str(work / "dq.json"))
    raw["model"] = {"name": "tiny", "spec": TINY}
    raw["train"].update(out_dir=str(work / "train"), epochs=epochs, batch_size=4,
                        warmup_epochs=0, lr=0.005, mlflow_uri=None)  # fmt: skip
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)

    from mouthmap import stages
    from mouthmap.config import load_params
    from mouthmap.train.trainer import train

    with tempfile.TemporaryDirectory(prefix="mouthmap-sanity-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        params = load_params(write_params(work, args.epochs))
        stages.import_corpus(params)
        stages.prepare_corpus(params, progress=False)
        result = train(params, progress=False)
    losses = [h["train_loss"] for h in result.history]
    print("train loss per epoch: " + " ".join(f"{x:.3f}" for x in losses))
    if len(losses) < 2 or not losses[-1] < losses[0]:
        print("FAIL: the training loss did not go down", file=sys.stderr)
        return 1
    print(f"ok: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
