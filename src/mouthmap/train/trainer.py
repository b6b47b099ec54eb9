"""One trainer for every model: AdamW with warm-up + cosine decay, gradient clipping, mixed
precision on CUDA, augmentation, early stopping on the validation WER, resumable checkpoints,
DDP under torchrun, MLflow tracking. The loss comes from an objective (CTC by default,
distillation in :mod:`mouthmap.train.distill`); the model's modality decides its input
(video, or log-mel for the audio teacher).
"""

from __future__ import annotations

import copy
import json
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from mouthmap.config import Params
from mouthmap.data import dataset as ds
from mouthmap.data.prepare import read_manifest
from mouthmap.train import checkpoint, distributed, tracking
from mouthmap.train.ema import WeightEMA
from mouthmap.train.objective import CTCObjective, ctc_loss, modality_of, model_inputs
from mouthmap.train.schedule import warmup_cosine

__all__ = ["TrainResult", "ctc_loss", "load_for_inference", "predict", "train"]


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    best_val_wer: float  # greedy, of the selected epoch
    epochs_run: int
    stopped_early: bool
    seconds: float
    device: str
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_words_wer: float | None = None  # the word head's, where the run trains one
    out_of_time: bool = False  # stopped by train.max_minutes


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    word_head: torch.nn.Module | None = None,
) -> tuple[list, list, list | None]:
    """References, greedy transcripts and, given the run's word head, the head's own
    sentences (:class:`~mouthmap.decode.slots.WordSlots`; ``None`` without a head)."""
    from mouthmap.compress.export import WithWordHead
    from mouthmap.decode.greedy import greedy_decode
    from mouthmap.decode.slots import WordSlots

    model.eval()
    slots = WordSlots() if word_head is not None else None
    both = WithWordHead(model, word_head) if word_head is not None else None
    refs, hyps, words = [], [], []
    for batch in loader:
        x, lengths, out_lengths = model_inputs(model, batch, device)
        if both is not None:
            log_probs, word_lp = both(x, lengths)
            word_lp = word_lp.float().cpu().numpy()
        else:
            log_probs = model(x, lengths)
        log_probs = log_probs.float().cpu()
        for i, n in enumerate(out_lengths.tolist()):
            hyps.append(greedy_decode(log_probs[i], n))
            if slots is not None:
                words.append(slots.decode(word_lp[i, :n]))
        refs.extend(batch.texts)
    return refs, hyps, (words if slots is not None else None)


def selection_key(row: dict[str, float]) -> tuple[float, float]:
    """What the best checkpoint minimises: the word head's validation WER where the run
    trains one (the package's decoder starts from the head's sentence, while greedy CTC
    stays far behind it), ties broken by the greedy WER; else the greedy WER."""
    return (row.get("val_words_wer", row["val_wer"]), row["val_wer"])


def build_model_from(params: Params) -> torch.nn.Module:
    from mouthmap.models import build_model

    return build_model(params.model.spec or params.model.name)


def hardware_description(device: torch.device, world_size: int = 1) -> str:
    """What trained a model, for its model card: CPU model and cores, or the GPU's name."""
    import os
    import platform

    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:  # /proc/cpuinfo names the CPU on Linux; platform.processor() often does not
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        usable, total = len(os.sched_getaffinity(0)), os.cpu_count() or 0
        cores = f"{usable} of {total} cores" if total > usable else f"{usable} cores"
        threads = torch.get_num_threads()
        what = f"{cpu}, {cores}, {threads} thread{'s' if threads > 1 else ''}, no GPU"
    return f"{world_size} x {what}" if world_size > 1 else what


def init_weights(model: torch.nn.Module, path: Path, objective: CTCObjective | None = None) -> None:
    """Start from another run's weights: the same architecture is required, the rest is new.

    With ``objective`` (already set up) its own weights (the word head) come along too, so a
    fine-tune goes on from the head it was trained with instead of a fresh one."""
    state = checkpoint.load(path)
    try:
        model.load_state_dict(state["model"])
        if objective is not None:
            objective.load_state_dict(state.get("objective") or {})
    except RuntimeError as e:
        raise checkpoint.CheckpointError(
            f"{path} holds {state.get('model_name')!r} weights that do not fit this model: "
            f"{str(e).splitlines()[0]}"
        ) from None


def _loaders(
    params: Params,
    dinfo: distributed.DistInfo,
    with_audio: bool = False,
    with_alignment: bool = False,
):
    from mouthmap import stages

    tp = params.train
    prepared = params.path(params.data.prepared_dir)
    manifest = read_manifest(prepared)
    exclude = stages.quarantined_ids(params)
    norm = ds.normalisation_from_manifest(manifest)
    train_tf = ds.train_transforms(tp)
    common = dict(normalisation=norm, manifest=manifest, exclude=exclude, with_audio=with_audio)
    train_set = ds.GridDataset(
        prepared, ("train",), train_tf, limit=tp.limit_train, with_alignment=with_alignment,
        splice_p=tp.splice_p, **common,
    )  # fmt: skip
    val_set = ds.GridDataset(prepared, ("val",), ds.eval_transforms(tp.crop), **common)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(
            f"{prepared}: need prepared train and val clips (have {len(train_set)} train, "
            f"{len(val_set)} val): run `mouthmap data prepare`"
        )
    sampler = DistributedSampler(train_set, seed=tp.seed) if dinfo.enabled else None
    loader_args = dict(
        batch_size=tp.batch_size, collate_fn=ds.collate, num_workers=tp.num_workers,
        worker_init_fn=ds.seed_worker, persistent_workers=tp.num_workers > 0,
    )  # fmt: skip
    train_loader = DataLoader(train_set, shuffle=sampler is None, sampler=sampler, **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, **loader_args)
    return train_loader, val_loader, sampler, norm


def train(
    params: Params,
    resume: bool = False,
    progress: bool = True,
    objective: CTCObjective | None = None,
    out_dir: str | Path | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Train ``params.model`` on the prepared corpus; returns where the best checkpoint is.

    ``objective`` computes the loss (default: CTC); ``out_dir`` and ``run_name`` default to
    ``train.out_dir`` and ``train-<model>``."""
    from mouthmap.evaluation.metrics import cer, wer

    t_start = time.perf_counter()
    dinfo = distributed.init_from_env()
    tp = params.train
    seed_everything(tp.seed + dinfo.rank)
    if torch.cuda.is_available():
        device = torch.device("cuda", dinfo.local_rank)
    else:
        device = torch.device("cpu")
    objective = objective or CTCObjective(tp.align_weight)
    out = params.path(out_dir or tp.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"

    model = build_model_from(params).to(device)  # an unknown name fails before data loads
    objective.setup(model, device)  # teachers load (or fail) before data loads, too
    if tp.init_from and not (resume and last_path.exists()):
        init_weights(model, params.path(tp.init_from), objective)
    with_audio = objective.needs_audio or modality_of(model) == "audio"
    train_loader, val_loader, sampler, norm = _loaders(
        params, dinfo, with_audio, objective.needs_alignment
    )
    objective.bind_normalisation(norm)
    trainable = [*model.parameters(), *objective.parameters()]
    opt = torch.optim.AdamW(trainable, lr=tp.lr, weight_decay=tp.weight_decay)
    steps_per_epoch = len(train_loader)
    sched = warmup_cosine(opt, int(tp.warmup_epochs * steps_per_epoch), tp.epochs * steps_per_epoch)
    use_amp = tp.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, bad_epochs, history = 0, 0, []
    best: dict[str, float] = {}  # the history row of the selected epoch
    if resume and last_path.exists():
        state = checkpoint.load(last_path)
        if state.get("slim"):
            raise checkpoint.CheckpointError(
                f"{last_path} is a slim copy without optimiser state: it cannot resume a run "
                "(start a new one from its weights with train.init_from)"
            )
        live = state.get("raw") or state  # an EMA run saves its averaged weights as "model"
        model.load_state_dict(live["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        objective.load_state_dict(live.get("objective", {}))
        start_epoch, bad_epochs, history = state["epoch"] + 1, state["bad_epochs"], state["history"]
        best = min(history, key=selection_key) if history else {}
        torch.set_rng_state(state["rng"])
    ema = _weight_ema(model, objective, tp.ema_decay)
    if ema is not None and resume and last_path.exists() and "raw" in state:
        ema.load({"model": state["model"], **state.get("objective", {})}, state.get("ema", {}))
    net = (
        torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if dinfo.enabled
        else model
    )

    base_state = {
        "model_name": params.model.name,
        "model_spec": params.model.spec,
        "modality": modality_of(model),
        "frame_rate": getattr(model, "frame_rate", checkpoint.FRAME_RATE),
        "objective_name": objective.name,
        "normalisation": asdict(norm),
        "hardware": hardware_description(device, dinfo.world_size),
        "params": json.loads(params.model_dump_json(by_alias=True)),
    }
    stopped_early, out_of_time, run_id, slowest = False, False, None, 0.0
    limit = 60 * tp.max_minutes if tp.max_minutes else float("inf")  # seconds of wall time
    run_name = run_name or f"train-{params.model.name}"
    with tracking.run(tp.mlflow_uri, params.root, tp.experiment, run_name, dinfo.is_main) as mlrun:
        if mlrun is not None:
            import mlflow

            run_id = mlrun.info.run_id
            base_state["run_id"] = run_id
            mlflow.log_params(
                tracking.flatten(
                    {
                        "model": params.model.model_dump(),
                        "train": tp.model_dump(),
                        "prepare": params.prepare.model_dump(),
                    }
                )
            )
            mlflow.log_params(
                {
                    "device": str(device),
                    "world_size": dinfo.world_size,
                    "train_clips": len(train_loader.dataset),
                    "val_clips": len(val_loader.dataset),
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            )
            mlflow.log_params(tracking.flatten(objective.log_params()))
        for epoch in range(start_epoch, tp.epochs):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            # A stream per epoch: a resumed run draws the augmentations an unbroken one would.
            # (DataLoader workers reseed themselves from torch's restored generator.)
            train_loader.dataset.reseed(tp.seed, dinfo.rank, epoch)
            net.train()
            losses, parts_sum = [], {}
            bar = tqdm(
                train_loader,
                desc=f"epoch {epoch + 1}/{tp.epochs}",
                unit="batch",
                disable=not (progress and dinfo.is_main),
                leave=False,
            )
            for batch in bar:
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    loss, parts = objective(net, batch, device)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(objective.parameters(), dinfo)  # DDP: not in net
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(trainable, tp.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None:
                    ema.update()
                losses.append(float(loss.detach()))
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                **{f"train_{k}": v / len(losses) for k, v in parts_sum.items()},
                "lr": opt.param_groups[0]["lr"],
            }
            improved = False
            if dinfo.is_main:
                raw = _raw_weights(model, objective) if ema is not None else None
                averaged = ema.applied() if ema is not None else nullcontext()
                with averaged:  # evaluate, select and save the averaged weights
                    refs, hyps, words = predict(model, val_loader, device, objective.align_head)
                    row.update(val_wer=wer(refs, hyps), val_cer=cer(refs, hyps))
                    if words is not None:
                        row["val_words_wer"] = wer(refs, words)
                    row["epoch_seconds"] = time.perf_counter() - t0
                    history.append(row)
                    improved = not best or selection_key(row) < selection_key(best)
                    if improved:
                        best, bad_epochs = row, 0
                    else:
                        bad_epochs += 1
                    state = {
                        **base_state,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(),
                        "objective": objective.state_dict(),  # e.g. a KD projection: not exported
                        "epoch": epoch,
                        "best_wer": best["val_wer"],
                        "best_words_wer": best.get("val_words_wer"),
                        "bad_epochs": bad_epochs,
                        "history": history,
                        "rng": torch.get_rng_state(),
                    }
                    if ema is not None:
                        state.update(raw=raw, ema=ema.state_dict())
                    if improved:
                        checkpoint.save(best_path, state)
                    checkpoint.save(last_path, state)
                if mlrun is not None:
                    import mlflow

                    mlflow.log_metrics(
                        {k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1
                    )
                if progress:
                    head = row.get("val_words_wer")
                    tqdm.write(
                        f"epoch {epoch + 1}: loss {row['train_loss']:.3f}  "
                        f"val WER {row['val_wer']:.4f}  CER {row['val_cer']:.4f}  "
                        + (f"word head WER {head:.4f}  " if head is not None else "")
                        + f"({row['epoch_seconds']:.0f} s)"
                    )
            slowest = max(slowest, time.perf_counter() - t0)
            late = dinfo.is_main and time.perf_counter() - t_start + slowest > limit
            out_of_time = distributed.broadcast_flag(late and epoch + 1 < tp.epochs, dinfo)
            stop = distributed.broadcast_flag(dinfo.is_main and bad_epochs >= tp.patience, dinfo)
            if stop or out_of_time:
                stopped_early = True
                break
        if dinfo.is_main:
            (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
            plot = plot_learning_curve(history, out / "learning_curve.png")
            if mlrun is not None:
                import mlflow

                mlflow.log_artifact(str(out / "history.json"))
                if plot:
                    mlflow.log_artifact(str(plot))
                if best_path.exists():
                    mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
    distributed.shutdown(dinfo)
    return TrainResult(
        out,
        best_path,
        best.get("val_wer", float("inf")),
        len(history),
        stopped_early,
        time.perf_counter() - t_start,
        str(device),
        run_id,
        history,
        best.get("val_words_wer"),
        out_of_time,
    )


def _weight_ema(model: torch.nn.Module, objective: CTCObjective, decay: float) -> WeightEMA | None:
    """The moving average of the model's and the word head's weights (``train.ema_decay``)."""
    if not decay:
        return None
    head = {"align_head": objective.align_head} if objective.align_head is not None else {}
    return WeightEMA({"model": model, **head}, decay)


def _raw_weights(model: torch.nn.Module, objective: CTCObjective) -> dict[str, Any]:
    """Copies of the live weights: what an EMA run's checkpoint resumes from."""
    return {
        "model": copy.deepcopy(model.state_dict()),
        "objective": copy.deepcopy(objective.state_dict()),
    }


def plot_learning_curve(history: list[dict[str, float]], path: Path) -> Path | None:
    """Loss and validation WER per epoch, for people who would rather look than read."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "C0-", label="train CTC loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("CTC loss", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["val_wer"] for h in history], "C1-o", ms=3, label="val WER (greedy)")
    if all("val_words_wer" in h for h in history):
        words = [h["val_words_wer"] for h in history]
        ax2.plot(epochs, words, "C2-s", ms=3, label="val WER (word head)")
        ax2.legend(loc="upper right", fontsize=8)
    ax2.set_ylabel("validation WER", color="C1")
    ax2.set_ylim(0, max(1.0, max(h["val_wer"] for h in history)))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_for_inference(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A trained model in eval mode plus its checkpoint metadata (normalisation, spec); the
    model only: an objective's own state (a distillation projection) is left behind."""
    from mouthmap.models import build_model

    state = checkpoint.load(path)
    try:
        model = build_model(state["model_spec"] or state["model_name"])
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path}: cannot rebuild its model: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit model {state['model_name']!r}: {e}"
        ) from None
    return model.eval(), state


def word_head(state: dict[str, Any]) -> torch.nn.Linear | None:
    """The run's per-frame word classifier (the alignment aid's head, ``train.align_weight``)
    from a loaded checkpoint, in eval mode; ``None`` when the run trained none."""
    weights = (state.get("objective") or {}).get("align_head")
    if not weights:
        return None
    out_features, in_features = weights["weight"].shape
    head = torch.nn.Linear(in_features, out_features)
    head.load_state_dict(weights)
    return head.eval()
