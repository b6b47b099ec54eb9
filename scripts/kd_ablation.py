"""Knowledge-distillation ablation: student alone / + response KD / + cross-modal KD / + both.

Same seed, data, epochs (and optional data budget) for each; each is exported and scored greedy
and beam+LM; results to OUT/results.json, OUT/results.md and MLflow (parent run kd-ablation).

    python scripts/kd_ablation.py --visual-teacher runs/teacher/best.pt \\
        --audio-teacher runs/audio_teacher/best.pt --epochs 30 --limit-train 200
"""

from __future__ import annotations

import argparse

from mouthmap.config import load_params
from mouthmap.train.ablation import CONFIGS, run_ablation


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", "--params", default="params.yaml")
    ap.add_argument("--visual-teacher", help="override distill.visual_teacher")
    ap.add_argument("--audio-teacher", help="override distill.audio_teacher")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--limit-train", type=int, help="data budget: first N training clips")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--splits", nargs="+", default=["val", "test"])
    ap.add_argument("--decoders", nargs="+", default=["greedy", "beam"])
    ap.add_argument("--out", default="runs/kd_ablation")
    args = ap.parse_args(argv)
    overrides = {
        "distill.visual_teacher": args.visual_teacher,
        "distill.audio_teacher": args.audio_teacher,
        "train.epochs": args.epochs,
    }
    params = load_params(args.params, {k: v for k, v in overrides.items() if v is not None})
    results = run_ablation(
        params, args.configs, args.limit_train, args.out, args.splits, args.decoders, progress=True
    )
    from mouthmap.train.ablation import markdown_table

    print(markdown_table(results["rows"], args.splits, args.decoders), end="")
    print(f"results in {params.path(args.out)}/results.{{json,md}}; MLflow run {results['run_id']}")


if __name__ == "__main__":
    main()
