"""How much a model reads words from their neighbours: its word head's WER on whole clips
against the same clips spliced at a word boundary (``train.splice_p``'s augmentation).

Each spliced clip is a clip up to a random word boundary, finished by another clip of the
same split from that word on: the same words, in a sentence neither clip says, with the
neighbours across the cut from another utterance. A model that had learnt each word on its
own would read both alike; the gap is what it takes from context (coarticulation, and the
training sentences it has memorised). Centre crop, no other augmentation; one CPU thread.
The clips the last data validation quarantined are left out, as in training and evaluation.

    python scripts/splice_gap.py --checkpoint models/mouthmap-student/checkpoint.pt \\
        [-p params.yaml] [--prepared DIR] [--train-clips 150] [--seed 9]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mouthmap.config import DEFAULT_PARAMS, load_params
from mouthmap.data import dataset as ds
from mouthmap.data.prepare import read_manifest
from mouthmap.evaluation.metrics import wer
from mouthmap.stages import quarantined_ids
from mouthmap.train import trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a training checkpoint with a word head")
    ap.add_argument(
        "-p", "--params", default=DEFAULT_PARAMS,
        help="params.yaml: the prepared corpus and the quarantine of its last data validation",
    )  # fmt: skip
    ap.add_argument("--prepared", help="prepared corpus directory (default: data.prepared_dir)")
    ap.add_argument("--train-clips", type=int, default=150, help="training clips to read")
    ap.add_argument("--seed", type=int, default=9, help="seed of the splice points and partners")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, state = trainer.load_for_inference(args.checkpoint)
    head = trainer.word_head(state)
    if head is None:
        raise SystemExit(f"{args.checkpoint}: no word head (trained with train.align_weight 0)")
    params = load_params(args.params)
    prepared = Path(args.prepared) if args.prepared else params.path(params.data.prepared_dir)
    quarantined = quarantined_ids(params)
    manifest = read_manifest(prepared)
    norm = ds.normalisation_from_manifest(manifest)
    print("| split | clips | word head WER, whole | spliced | greedy WER, whole | spliced |")
    print("|---|---:|---:|---:|---:|---:|")
    for split, limit in (("train", args.train_clips), ("val", None)):
        row = []
        for splice_p in (0.0, 1.0):
            data = ds.GridDataset(
                prepared, (split,), ds.eval_transforms(), norm, seed=args.seed, limit=limit,
                manifest=manifest, exclude=quarantined, with_alignment=True, splice_p=splice_p,
            )  # fmt: skip
            loader = DataLoader(data, batch_size=8, collate_fn=ds.collate)
            refs, greedy, words = trainer.predict(model, loader, torch.device("cpu"), head)
            row.append((wer(refs, words), wer(refs, greedy)))
        (hw, gw), (hs, gs) = row
        print(f"| {split} | {len(refs)} | {hw:.1%} | {hs:.1%} | {gw:.1%} | {gs:.1%} |")


if __name__ == "__main__":
    main()
