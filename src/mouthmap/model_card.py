"""The model card: a README.md inside a model package that says what the model is, how well
it reads, what it cost to train and whose data it learned from.

Everything in it comes from the package's ``mouthmap.json`` (written by export, decoder
tuning, evaluation and release), so a card can be rebuilt from the package alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mouthmap.data.corpus import SLOT_NAMES

GRID_ATTRIBUTION = (
    "Trained on speaker s1 of the GRID audio-visual corpus: M. Cooke, J. Barker, "
    'S. Cunningham, X. Shao, "An audio-visual corpus for speech perception and automatic '
    'speech recognition", J. Acoust. Soc. Am. 120(5), 2421-2424, 2006. GRID is distributed '
    "under the Creative Commons Attribution 4.0 licence (CC BY 4.0); this attribution must "
    "stay with the model and anything derived from the data."
)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _results_table(evaluation: dict[str, Any]) -> list[str]:
    lines = [
        "| split | decoder | clips | WER | CER | " + " | ".join(SLOT_NAMES) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(SLOT_NAMES),
    ]
    for split in ("val", "test"):
        for dec, r in evaluation.get(split, {}).items():
            slots = " | ".join(_pct(r.get("slots", {}).get(s)) for s in SLOT_NAMES)
            lines.append(
                f"| {split} | {dec} | {r['clips']} | {_pct(r['wer'])} | {_pct(r['cer'])} | "
                f"{slots} |"
            )
    return lines


def render(meta: dict[str, Any]) -> str:
    """Markdown for a package's ``mouthmap.json``."""
    from mouthmap.evaluation.evaluate import confusion_lines

    name = meta.get("name", "model")
    size = meta.get("size", {})
    training = meta.get("training", {})
    evaluation = meta.get("evaluation", {})
    decoder = meta.get("decoder", {})
    lineage = meta.get("lineage", {})
    test = evaluation.get("test", {})
    out = [
        f"# MouthMap model `{name}`",
        "",
        "Reads lips: silent video of a speaker's mouth in, text out (characters a-z and space, "
        "CTC). Run it with `mouthmap transcribe VIDEO --model <this directory>`.",
        "",
        "## Numbers",
        "",
        f"- Test split (sentences never seen in training), beam search + KenLM: WER "
        f"{_pct(test.get('beam', {}).get('wer'))}, greedy: WER "
        f"{_pct(test.get('greedy', {}).get('wer'))}.",
    ]
    if size:
        out.append(
            f"- {size.get('parameters', 0) / 1e6:.2f} M parameters; `model_fp32.onnx` "
            f"{size.get('fp32_onnx_mb', 0):.2f} MB; {size.get('gmacs_per_second', 0):.3f} "
            "GMACs per second of video."
        )
    if decoder:
        order = meta.get("decoder_tuning", {}).get("lm_order")
        lm = f"{order}-gram word LM, " if order else ""
        out.append(
            f"- Decoder: beam width {decoder.get('beam_width')}, {lm}LM weight alpha "
            f"{decoder.get('alpha')}, word bonus beta {decoder.get('beta')}"
            + (", then rescored within the slot grammar of the training transcripts"
               if decoder.get("grammar") else "")
            + (f", with the word head's path score at weight {decoder['word_weight']}"
               if decoder.get("grammar") and decoder.get("word_weight") else "")
            + " (tuned on val)."
        )  # fmt: skip
    ms = evaluation.get("decode_ms_per_clip", {}).get("beam")
    if ms:
        out.append(
            f"- Beam+LM decoding: {ms['median']:.1f} ms median, {ms['p95']:.1f} ms p95 per "
            "3 s clip (measured during evaluation)."
        )
    if evaluation:
        out += ["", "Word error rate per GRID slot:", "", *_results_table(evaluation)]
        confused = confusion_lines({"test": {d: r for d, r in test.items() if d == "beam"}})
        if confused:
            out += ["", "Most frequent word errors on test (slot: said -> read):", "", *confused]
    out += ["", "## Training", ""]
    for key, label in (
        ("epochs", "epochs"),
        ("objective", "objective"),
        ("hardware", "hardware"),
        ("wall_time", "wall time"),
        ("train_clips", "training clips"),
        ("best_val_words_wer", "validation WER of the word head (picked the epoch)"),
        ("best_val_wer", "validation WER, greedy, of the chosen epoch"),
        ("notes", "notes"),
    ):
        value = training.get(key)
        if value is not None:
            shown = f"{value:.1%}" if key.startswith("best_val") else value  # a WER, 0..1
            out.append(f"- {label}: {shown}")
    for key in ("git_commit", "training_run_id", "data_version"):
        if lineage.get(key):
            out.append(f"- {key.replace('_', ' ')}: `{lineage[key]}`")
    if meta.get("files", {}).get("checkpoint"):
        out.append(
            f"- `{meta['files']['checkpoint']}`: the slim training checkpoint, to fine-tune "
            "(`mouthmap train --init-from`), quantize with QAT or distil from."
        )
    out += [
        "",
        "## Intended use and limits",
        "",
        "A research and demonstration model. It knows one speaker (GRID s1) and GRID's "
        "six-word grammar (command, colour, preposition, letter, digit, adverb); expect far "
        "worse results on other faces, lighting, head poses or free speech. Input is the "
        "mouth region that `mouthmap` itself crops (MediaPipe landmarks), 25 frames per "
        "second, grayscale, 88x88.",
        "",
        "## Data and licence",
        "",
        GRID_ATTRIBUTION,
        "",
    ]
    return "\n".join(out)


def write(package_dir: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(package_dir) / "README.md"
    path.write_text(render(meta))
    return path
