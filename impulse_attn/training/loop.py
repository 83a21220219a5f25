"""The one training loop: every model, every init, every attention backend.

Read top to bottom: settle where the run starts (new or resumed), build data and model, then per epoch train,
evaluate, append a metrics line and write an atomic checkpoint. A resumed run restores model, optimizer,
scheduler, grad scaler, RNG states and epoch, and the data order of epoch e depends only on (seed, e), so a
run killed at any moment and resumed ends with exactly the numbers of an uninterrupted one (CPU, same seed).
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .checkpoint import REQUIRED, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import build_datasets
from .errors import TrainingDiverged, UserError
from .factory import build_model, check_attention_backend, check_geometry
from .metrics import MetricsWriter, read_metrics, write_json

CHECKPOINT, METRICS, RUN_INFO, SUMMARY = "checkpoint.pt", "metrics.jsonl", "run.json", "summary.json"
# With many short epochs (tiny --per-class sets) a checkpoint every epoch would cost more than the epoch: save at
# evaluated epochs, the last one, and whenever this much time has passed since the last save.
CHECKPOINT_SECONDS = 300.0


@dataclass
class TrainResult:
    out: Path
    history: List[dict]          # epoch 0 (the model at init) first, then one record per trained epoch
    init: dict                   # init seconds, parameter counts, fit report (impulse init)
    split: str = "test"          # the split settings are chosen on: "val" when the data has one

    @property
    def metric(self) -> str:
        return f"{self.split}_acc"

    def accuracies(self, split: Optional[str] = None) -> List[tuple]:
        """(epoch, accuracy) of every evaluated epoch on ``split`` (default: the selection split)."""
        key = f"{split or self.split}_acc"
        return [(r["epoch"], r[key]) for r in self.history if key in r]

    @property
    def final_acc(self) -> float:
        return self.accuracies()[-1][1]

    @property
    def best_acc(self) -> float:
        return max(a for _, a in self.accuracies())

    def final(self, split: str) -> Optional[float]:
        acc = self.accuracies(split)
        return acc[-1][1] if acc else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available", "use --device auto or cpu")
    return torch.device(name)


def cosine_schedule(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0, then cosine from 1 down to ``min_ratio`` at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return factor


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 100_003 + epoch) % 2 ** 63


def _autocast(device: torch.device, enabled: bool, dtype):
    return torch.autocast(device.type, dtype=dtype) if enabled else contextlib.nullcontext()


def evaluate_splits(model: torch.nn.Module, loaders: dict, device: torch.device, amp: bool, amp_dtype) -> dict:
    """{"<split>_loss": ..., "<split>_acc": ...} for every evaluation split."""
    record = {}
    for split, loader in loaders.items():
        record[f"{split}_loss"], record[f"{split}_acc"] = evaluate(model, loader, device, amp, amp_dtype)
    return record


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool, amp_dtype) -> tuple:
    """Mean cross-entropy and accuracy over ``loader``."""
    model.eval()
    loss_sum, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp, amp_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
        count += y.numel()
    return loss_sum.item() / count, correct.item() / count


def _write_run_info(out: Path, cfg: TrainConfig, init: dict, data_desc: str, device: torch.device) -> None:
    write_json(out / RUN_INFO, {"config": cfg.as_dict(), "init": init, "data": data_desc, "device": str(device),
                                "torch": torch.__version__, "python": platform.python_version(),
                                "host": platform.node()})


def check_out_dir(out: Path) -> None:
    """Refuse, before any work, an --out that is a file, lies under a file, or cannot be written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder", "pass a folder for the run's files")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out} lies under {parent}, which is a file", "pass a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} cannot be written ({parent} is not writable)", "pass a writable folder")


def train(config: TrainConfig, log: Callable[[str], None] = print, *, start_if_missing: bool = False
          ) -> TrainResult:
    """Run (or resume) one training run described by ``config``; returns its history.

    Files in ``config.out``: run.json (config, init, environment), metrics.jsonl (one record per epoch, epoch 0
    is the model at init), checkpoint.pt (at evaluated epochs), summary.json (at the end).
    ``config.resume`` continues the run in ``out`` and refuses an ``out`` with no run in it, unless
    ``start_if_missing`` (what ``compare`` uses to start or continue each of its runs).
    Raises UserError for anything the user can fix; existing files are never replaced by a run that fails.
    """
    cfg = config.resolved()
    cfg.check()
    out = Path(cfg.out)
    check_out_dir(out)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    run_files = [p.name for p in (ckpt_path, metrics_path, out / RUN_INFO, out / SUMMARY) if p.exists()]

    # 1. Where does this run start? Decide before touching any file.
    state = None
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, REQUIRED)
        try:
            saved = TrainConfig.from_dict(state["config"])
        except (UserError, TypeError, KeyError):
            raise UserError(f"checkpoint {ckpt_path} holds no readable run settings",
                            "start a new run with another --out (the file is left as it is)") from None
        diff = cfg.differences(saved)
        if diff:
            listed = "; ".join(f"{k}: checkpoint {b!r}, now {a!r}" for k, (a, b) in sorted(diff.items()))
            raise UserError(f"checkpoint {ckpt_path} was made with other settings ({listed})",
                            f"resume with the flags in {out / RUN_INFO}, or start a new run with another --out")
    elif cfg.resume and not run_files and not start_if_missing:
        raise UserError(f"--resume: {out} holds no run to continue",
                        "drop --resume to start a new run there, or pass the --out of the run to continue")
    elif not cfg.resume and run_files:
        raise UserError(f"{out} already holds a run ({', '.join(run_files)})",
                        "pass --resume to continue it, or choose another --out")

    # 2. Data, device, model: all validated before anything is written.
    data = build_datasets(cfg)
    check_geometry(cfg, data.image_size)
    device = resolve_device(cfg.device)
    check_attention_backend(cfg.attention_backend, device)
    if cfg.amp == "on" and device.type != "cuda":
        raise UserError("--amp on needs a CUDA device", "use --amp auto (mixed precision on CUDA, fp32 on CPU)")
    use_amp = device.type == "cuda" and cfg.amp != "off"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    # A resumed run loads its weights: skip the (possibly long) iterative fit, keep the layers' scale.
    skip_fit = {"steps": 0, "warn": False} if state and cfg.init == "impulse" and cfg.fit_method == "iterative" \
        else None
    model, init = build_model(cfg, data.num_classes, data.image_size, data.channels, fit_kwargs=skip_fit)
    model.to(device)
    if state is not None:
        init = state["init"]
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint {ckpt_path} does not fit this model ({str(e).splitlines()[0][:160]})",
                            "resume with the flags that made it, or start a new run with another --out") from None

    sampler_gen = torch.Generator()
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=sampler_gen,
                              num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                              persistent_workers=cfg.num_workers > 0)
    eval_loaders = {split: DataLoader(ds, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                                      num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
                    for split, ds in data.evals.items()}
    steps_per_epoch = len(train_loader)
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup_steps and warmup_steps >= total_steps:
        raise UserError(f"--warmup-epochs {cfg.warmup_epochs} ({warmup_steps} steps) is not shorter than the run "
                        f"({total_steps} steps)", "lower the warmup")
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(
        total_steps, warmup_steps, cfg.min_lr / cfg.lr))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    step_model = torch.compile(model) if cfg.compile else model

    # 3. Restore the resumed state, or record the model at init as epoch 0.
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(metrics_path)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            history, start_epoch = [dict(r) for r in state["history"]], int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise UserError(f"checkpoint {ckpt_path} is damaged ({type(e).__name__} while restoring the optimizer "
                            f"and random state)", "start a new run with another --out (the file is left as it is)"
                            ) from None
        metrics.replace(history)
        log(f"resuming {out} at epoch {start_epoch}/{epochs}" if start_epoch <= epochs else
            f"{out} finished all {epochs} epochs already: reusing it")
    else:
        if cfg.resume and metrics_path.exists():
            log(f"no checkpoint in {out} yet: starting again from epoch 1")
        _write_run_info(out, cfg, init, data.description, device)
        scores = evaluate_splits(step_model, eval_loaders, device, use_amp, amp_dtype)
        history = [{"epoch": 0, "step": 0, **scores, "lr": scheduler.get_last_lr()[0], "elapsed": 0.0}]
        metrics.replace(history)
        start_epoch = 1
        log(f"{data.description}; {type(model).__name__} {init['parameters']:,} parameters on {device}; "
            f"init {cfg.init if cfg.model == 'vit' else cfg.filters} in {init['init_seconds']:.2f} s; "
            f"{data.primary} acc at init {scores[f'{data.primary}_acc']:.3f}; {total_steps} steps "
            f"({epochs} epochs of {steps_per_epoch})")
        if "fit_summary" in init:
            log(f"impulse fit: {init['fit_summary']}")

    # 4. Train.
    from tqdm.auto import tqdm
    elapsed = history[-1].get("elapsed", 0.0)
    last_save = time.monotonic()
    for epoch in range(start_epoch, epochs + 1):
        sampler_gen.manual_seed(epoch_seed(cfg.seed, epoch))
        step_model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        epoch_steps = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{epochs}", disable=not cfg.progress, leave=False,
                   dynamic_ncols=True, total=epoch_steps)
        for i, (x, y) in enumerate(bar):
            if i == epoch_steps:  # the step budget ends inside this epoch
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, use_amp, amp_dtype):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += y.numel()
            if cfg.progress and (i % 10 == 0 or i == epoch_steps - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"the loss became {train_loss} in epoch {epoch}: lower --lr or set --clip-grad "
                                   f"(the checkpoint of epoch {epoch - 1} in {out} is kept)")
        train_seconds = time.perf_counter() - t0
        evaluated = epoch % cfg.eval_every == 0 or epoch == epochs
        scores = evaluate_splits(step_model, eval_loaders, device, use_amp, amp_dtype) if evaluated else {}
        elapsed += time.perf_counter() - t0
        record = {"epoch": epoch, "step": (epoch - 1) * steps_per_epoch + epoch_steps, "train_loss": train_loss,
                  "train_acc": correct.item() / seen, **scores, "lr": scheduler.get_last_lr()[0],
                  "epoch_seconds": train_seconds, "images_per_s": seen / train_seconds, "elapsed": elapsed}
        history.append(record)
        metrics.append(record)
        if evaluated or time.monotonic() - last_save > CHECKPOINT_SECONDS:
            save_checkpoint(ckpt_path, {"epoch": epoch, "config": cfg.as_dict(), "init": init,
                                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                        "rng": rng_state(), "history": history})
            last_save = time.monotonic()
        if evaluated or cfg.progress:
            shown = " | ".join(f"{s} loss {scores[f'{s}_loss']:.4f} acc {scores[f'{s}_acc']:.3f}"
                               for s in eval_loaders if f"{s}_acc" in scores)
            log(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f} acc {record['train_acc']:.3f}"
                + (f" | {shown}" if shown else "") + f" | {record['images_per_s']:.0f} img/s")

    result = TrainResult(out, history, init, data.primary)
    best_epoch, best_acc = max(result.accuracies(), key=lambda ea: ea[1])
    write_json(out / SUMMARY, {"split": data.primary, "final_acc": result.final_acc, "best_acc": best_acc,
                               "best_epoch": best_epoch, "final": {s: result.final(s) for s in eval_loaders},
                               "epochs": epochs, "steps": total_steps, "init": init,
                               "train_seconds": history[-1].get("elapsed", 0.0)})
    return result


def load_history(out) -> List[dict]:
    """The metrics of a run folder (for reports and plots)."""
    return read_metrics(Path(out) / METRICS)
