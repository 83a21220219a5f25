"""The one training loop: every model (Simple ViT, ConvMixer, timm ViTs), every init, every attention backend,
one process or many (torchrun).

Read ``train`` top to bottom: settle where the run starts (``_start``: new or resumed, the checkpoint checked for
self-consistency), build data and model (``_build_model``) and the optimization (``_build_optimization``), check
the checkpoint against this run's step plan, open the folder (stale temporary files of a killed write removed),
restore (``_restore``) or record the model at init (``_record_init``), then per epoch train and evaluate
(``_train_epoch``), append a metrics line and write an atomic checkpoint (``_save_epoch``). What the phases share
is one ``_Run``. A resumed run restores model, optimizer, scheduler, grad scaler, model EMA, RNG states (every
process's) and epoch, and the data order of epoch e depends only on (seed, e), so a run killed at any moment and
resumed ends with exactly the numbers of an uninterrupted one (CPU, same seed, same process count).

Under torchrun (``training.distributed``): rank 0 decides where the run starts, builds the model (the impulse
fit runs there only) and writes every file; the other ranks receive its weights (checked bit-identical) and
train their share of each global batch under DistributedDataParallel; evaluation runs on a shard of the
evaluation set per rank and adds the sums. ``--batch-size`` is the global batch.
"""
from __future__ import annotations

import contextlib
import math
import os  # noqa: F401  (the tests reach the file system through loop.os)
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import distributed
from .checkpoint import (REQUIRED, check_state_fits_run, check_train_state, load_checkpoint, remove_stale_temps,
                         rng_state, save_checkpoint, set_rng_state)
from .config import TrainConfig, check_out_path
from .data import build_datasets, init_images
from .distributed import GlobalBatches
from .errors import TrainingDiverged, UserError
from .factory import build_model_synced, check_attention_backend, check_geometry
from .metrics import MetricsWriter, read_metrics, write_json

CHECKPOINT, METRICS, RUN_INFO, SUMMARY = "checkpoint.pt", "metrics.jsonl", "run.json", "summary.json"
RUN_FILES = (CHECKPOINT, METRICS, RUN_INFO, SUMMARY)
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


def evaluate_splits(model: torch.nn.Module, loaders: dict, device: torch.device, amp: bool, amp_dtype,
                    dist=None) -> dict:
    """{"<split>_loss": ..., "<split>_acc": ...} for every evaluation split. Under torchrun each rank evaluates
    its shard and the sums (loss, correct, count) are added over ranks: every image counts once."""
    record = {}
    for split, loader in loaders.items():
        if dist is not None and dist.active:
            loss_sum, correct, count = dist.all_reduce_sum(evaluate_sums(model, loader, device, amp, amp_dtype),
                                                           device)
            record[f"{split}_loss"], record[f"{split}_acc"] = loss_sum / count, correct / count
        else:
            record[f"{split}_loss"], record[f"{split}_acc"] = evaluate(model, loader, device, amp, amp_dtype)
    return record


@torch.no_grad()
def evaluate_sums(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool, amp_dtype) -> list:
    """[summed cross-entropy, correct, count] over ``loader``."""
    model.eval()
    in_dtype = next(model.parameters()).dtype
    # float64 sums: summing 10,000 per-image losses in float32 would cost 4 digits, and the shards of a torchrun
    # evaluation must add up to what one process gets
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct, count = torch.zeros((), device=device), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.is_floating_point() and x.dtype != in_dtype:
            x = x.to(in_dtype)
        with _autocast(device, amp, amp_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(_loss_input(logits), y, reduction="sum")
        correct += (logits.argmax(-1) == y).sum()
        count += y.numel()
    return [loss_sum.item(), correct.item(), count]


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool, amp_dtype) -> tuple:
    """Mean cross-entropy and accuracy over ``loader``."""
    loss_sum, correct, count = evaluate_sums(model, loader, device, amp, amp_dtype)
    return loss_sum / count, correct / count


def _write_run_info(out: Path, cfg: TrainConfig, init: dict, data_desc: str, device: torch.device,
                    processes: int = 1) -> None:
    write_json(out / RUN_INFO, {"config": cfg.as_dict(), "init": init, "data": data_desc, "device": str(device),
                                "processes": processes, "torch": torch.__version__,
                                "python": platform.python_version(), "host": platform.node()})


def _silent(_msg: str) -> None:
    pass


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The random streams (augmentation, dropout, mixup) of rank ``rank`` > 0; rank 0 keeps ``seed``'s, so that a
    one-process run is unchanged."""
    return (seed * 1_000_003 + 7_919 * rank) % 2 ** 63


def _loss_input(logits: torch.Tensor) -> torch.Tensor:
    """Logits the loss is computed on: half precision (autocast) promoted to float32, float64 kept."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _plan_start(cfg: TrainConfig, out: Path, start_if_missing: bool) -> Optional[dict]:
    """The checkpoint a run continues from, or None for a new run; refuses (UserError) anything else. Touches no
    file (the --out check creates and removes one probe file). Under torchrun rank 0 decides this for every rank."""
    check_out_path(cfg.out)
    ckpt_path = out / CHECKPOINT
    run_files = [name for name in RUN_FILES if (out / name).exists()]
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
        if cfg.model_ema and not isinstance(state.get("ema"), dict):
            raise UserError(f"checkpoint {ckpt_path} is damaged (no model EMA state although the run keeps one)",
                            "start a new run with another --out (the file is left as it is)")
        check_train_state(state, ckpt_path)
        return state
    if cfg.resume and not run_files and not start_if_missing:
        raise UserError(f"--resume: {out} holds no run to continue",
                        "drop --resume to start a new run there, or pass the --out of the run to continue")
    if not cfg.resume and run_files:
        raise UserError(f"{out} already holds a run ({', '.join(run_files)})",
                        "pass --resume to continue it, or choose another --out")
    return None


def _criterion(cfg: TrainConfig) -> Callable:
    """The training loss: timm's SoftTargetCrossEntropy with mixup/cutmix, its LabelSmoothingCrossEntropy with
    --smoothing alone, plain cross-entropy otherwise (the loss of every run before those settings existed)."""
    if cfg.mixes:
        from timm.loss import SoftTargetCrossEntropy
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        from timm.loss import LabelSmoothingCrossEntropy
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return F.cross_entropy


def _mixup(cfg: TrainConfig, num_classes: int):
    if not cfg.mixes:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)


def step_plan(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, epochs) of a run: ``cfg.steps`` when set, else ``cfg.epochs`` epochs."""
    total_steps = cfg.steps or cfg.epochs * steps_per_epoch
    return total_steps, math.ceil(total_steps / steps_per_epoch)


@dataclass
class _Run:
    """What one training run holds from phase to phase: settings and processes (``_start``), data and model
    (``_build_model``), the optimization (``_build_optimization``), and the history its epochs add to."""
    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: distributed.Dist
    log: Callable[[str], None]
    data: Any = None
    model: Any = None
    init: Optional[dict] = None
    ema: Any = None
    use_amp: bool = False
    amp_dtype: Any = None
    sampler: Optional[GlobalBatches] = None
    loader_gen: Optional[torch.Generator] = None
    train_loader: Optional[DataLoader] = None
    eval_loaders: dict = field(default_factory=dict)
    steps_per_epoch: int = 0
    total_steps: int = 0
    epochs: int = 0
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    step_model: Any = None
    criterion: Any = None
    mixup_fn: Any = None
    in_dtype: Any = None
    metrics: Optional[MetricsWriter] = None
    history: List[dict] = field(default_factory=list)
    start_epoch: int = 1
    elapsed: float = 0.0
    last_save: float = 0.0

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model


def train(config: TrainConfig, log: Callable[[str], None] = print, *, start_if_missing: bool = False
          ) -> TrainResult:
    """Run (or resume) one training run described by ``config``; returns its history.

    Files in ``config.out``: run.json (config, init, environment), metrics.jsonl (one record per epoch, epoch 0
    is the model at init), checkpoint.pt (at evaluated epochs), summary.json (at the end).
    ``config.resume`` continues the run in ``out`` and refuses an ``out`` with no run in it, unless
    ``start_if_missing`` (what ``compare`` uses to start or continue each of its runs).
    Raises UserError for anything the user can fix; existing files are never replaced by a run that fails.

    Under torchrun (``WORLD_SIZE`` > 1, or a process group the caller made) every process runs this: rank 0
    decides, fits and writes; ``--batch-size`` is the global batch (see ``training.distributed``).
    """
    run, state = _start(config, log, start_if_missing)   # 1. where the run starts; rank 0 decides, touching no file
    _build_model(run, state)                             # 2. data, device, model: validated before any write
    _build_optimization(run)
    if state is not None:
        run.dist.agree(lambda: check_state_fits_run(state, run.ckpt_path, run.epochs, run.steps_per_epoch,
                                                    run.total_steps))
    _open_folder(run)                                    # 3. restore, or record the model at init as epoch 0
    if state is not None:
        _restore(run, state)
    else:
        _record_init(run)
    run.elapsed, run.last_save = run.history[-1].get("elapsed", 0.0), time.monotonic()
    for epoch in range(run.start_epoch, run.epochs + 1):  # 4. train
        record, scores, evaluated = _train_epoch(run, epoch)
        _save_epoch(run, epoch, record, evaluated)
        if evaluated or run.cfg.progress:
            _log_epoch(run, epoch, record, scores)
    return _finish(run)


def _start(config: TrainConfig, log: Callable[[str], None], start_if_missing: bool) -> tuple:
    """(the run's settings and processes, the checkpoint state it resumes from or None), before any file is
    touched: rank 0 decides where the run starts; under torchrun the other ranks read the same checkpoint."""
    cfg = config.resolved()
    cfg.check()
    device = resolve_device(cfg.device)
    dist = distributed.setup(device.type)
    if dist.active:
        if device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        if cfg.batch_size % dist.world:
            raise UserError(f"--batch-size {cfg.batch_size} (the global batch) does not split over {dist.world} "
                            f"processes", f"use a multiple of {dist.world}")
        if not dist.is_main:
            log = _silent
    run = _Run(cfg, Path(cfg.out), device, dist, log)
    held: dict = {}
    resuming = dist.decide(lambda: held.setdefault("state", _plan_start(cfg, run.out, start_if_missing))
                           is not None)
    state = held.get("state")
    if dist.active and resuming:  # rank 0 has read and checked it; the others read the same file
        loaded = dist.agree(lambda: None if dist.is_main else load_checkpoint(run.ckpt_path, REQUIRED))
        state = state if dist.is_main else loaded
    return run, state


def _check_data(run: _Run) -> None:
    cfg, dist, data = run.cfg, run.dist, run.data
    check_geometry(cfg, data.image_size)
    check_attention_backend(cfg.attention_backend, run.device)
    if cfg.amp == "on" and run.device.type != "cuda":
        raise UserError("--amp on needs a CUDA device", "use --amp auto (mixed precision on CUDA, fp32 on CPU)")
    local_batch = cfg.batch_size // dist.world
    if cfg.mixes and local_batch % 2:
        raise UserError(f"--mixup/--cutmix need an even batch per process, got {local_batch}"
                        + (f" (--batch-size {cfg.batch_size} over {dist.world} processes)" if dist.active else ""),
                        "use an even --batch-size" + (f" that is a multiple of {2 * dist.world}" if dist.active
                                                      else ""))
    if cfg.mixes and len(data.train) < cfg.batch_size:
        raise UserError(f"with --mixup/--cutmix incomplete batches are dropped, and the {len(data.train)} training "
                        f"images do not fill one batch of {cfg.batch_size}", "lower --batch-size")


def _build_model(run: _Run, state: Optional[dict]) -> None:
    """Data (rank 0 first: it downloads what is missing), the model (its weights from ``state`` on resume), the
    model EMA; every rank's random streams seeded."""
    cfg, dist = run.cfg, run.dist
    run.data = dist.main_first(lambda: build_datasets(cfg))
    _check_data(run)
    run.use_amp = run.device.type == "cuda" and cfg.amp != "off"
    run.amp_dtype = torch.bfloat16 if run.use_amp and torch.cuda.is_bf16_supported() else torch.float16
    _seed_everything(cfg.seed)
    # A resumed run loads its weights: skip the (possibly long) iterative fit, keep the layers' scale.
    skip_fit = {"steps": 0, "warn": False} if state and cfg.init == "impulse" and cfg.fit_method == "iterative" \
        else None
    images = init_images(run.data, cfg.seed) if cfg.family.on_data is not None else None
    run.model, run.init = build_model_synced(cfg, run.data.num_classes, run.data.image_size, run.data.channels,
                                             dist, fit_kwargs=skip_fit, device=run.device, images=images)
    if state is not None:
        run.init = state["init"]
        dist.agree(lambda: _restore_weights(run.model, state, run.ckpt_path))
    if dist.rank > 0:  # its own augmentation / dropout / mixup draws (rank 0 keeps the one-process streams)
        _seed_everything(rank_seed(cfg.seed, dist.rank))
    if cfg.model_ema:
        from timm.utils import ModelEmaV3
        run.ema = ModelEmaV3(run.model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)
        if state is not None:
            dist.agree(lambda: _restore_ema(run.ema, state, run.ckpt_path))


def _build_optimization(run: _Run) -> None:
    """Loaders, the step plan, optimizer, LR schedule, grad scaler, the DDP / compiled model, loss and mixup."""
    cfg, dist, device, data = run.cfg, run.dist, run.device, run.data
    run.sampler = GlobalBatches(len(data.train), cfg.batch_size, dist.rank, dist.world, drop_last=cfg.mixes)
    # Seeded per epoch like the sampler: worker seeds (and so augmentation in workers) are a function of
    # (seed, epoch, rank); workers are started per epoch for that reason.
    run.loader_gen = torch.Generator()
    run.train_loader = DataLoader(data.train, batch_sampler=run.sampler, generator=run.loader_gen,
                                  num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    run.eval_loaders = {split: DataLoader(_shard(ds, dist), batch_size=max(1, -(-eval_batch // dist.world)),
                                          shuffle=False, num_workers=cfg.num_workers,
                                          pin_memory=device.type == "cuda")
                        for split, ds in data.evals.items()}
    run.steps_per_epoch = len(run.sampler)
    run.total_steps, run.epochs = step_plan(cfg, run.steps_per_epoch)
    warmup_steps = round(cfg.warmup_epochs * run.steps_per_epoch)
    if warmup_steps and warmup_steps >= run.total_steps:
        raise UserError(f"--warmup-epochs {cfg.warmup_epochs} ({warmup_steps} steps) is not shorter than the run "
                        f"({run.total_steps} steps)", "lower the warmup")
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    run.optimizer = opt_cls(run.params, **cfg.arguments_for(opt_cls, exclude=("params",)))  # lr, weight_decay, ...
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, cosine_schedule(
        run.total_steps, warmup_steps, cfg.min_lr / cfg.lr))
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp and run.amp_dtype == torch.float16)
    run.step_model = run.model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel
        if device.type == "cuda" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                         for m in run.model.modules()):
            run.step_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.model)  # synced statistics
        run.step_model = DistributedDataParallel(run.step_model,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
    run.step_model = torch.compile(run.step_model) if cfg.compile else run.step_model
    run.criterion = _criterion(cfg)
    run.mixup_fn = _mixup(cfg, data.num_classes)
    run.in_dtype = next(run.model.parameters()).dtype


def _open_folder(run: _Run) -> None:
    """Create the run folder and remove the temporary files a killed write left in it (only rank 0 writes; a
    failure to write is every rank's failure)."""
    run.dist.main_only(lambda: _prepare_folder(run.out, run.log))
    run.metrics = MetricsWriter(run.out / METRICS)


def _prepare_folder(out: Path, log: Callable[[str], None]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temps(out, RUN_FILES)
    if removed:
        log(f"removed {len(removed)} temporary file(s) left in {out} by an interrupted write: {', '.join(removed)}")


def _restore(run: _Run, state: dict) -> None:
    """Optimizer, scheduler, grad scaler, random states and history of a resumed run; the metrics file is
    rewritten to that history (epochs after the checkpoint will run again)."""
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        _restore_rng(state, run.dist, run.cfg.seed, run.log)
        run.history, run.start_epoch = [dict(r) for r in state["history"]], int(state["epoch"]) + 1
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"checkpoint {run.ckpt_path} is damaged ({type(e).__name__} while restoring the optimizer "
                        f"and random state)", "start a new run with another --out (the file is left as it is)"
                        ) from None
    run.dist.main_only(lambda: run.metrics.replace(run.history))
    run.log(f"resuming {run.out} at epoch {run.start_epoch}/{run.epochs}" if run.start_epoch <= run.epochs else
            f"{run.out} finished all {run.epochs} epochs already: reusing it")


def _record_init(run: _Run) -> None:
    """Evaluate the model at init (epoch 0) and write run.json and the first metrics line."""
    cfg, dist, data, init = run.cfg, run.dist, run.data, run.init
    if cfg.resume and (run.out / METRICS).exists():
        run.log(f"no checkpoint in {run.out} yet: starting again from epoch 1")
    scores = evaluate_splits(run.eval_model, run.eval_loaders, run.device, run.use_amp, run.amp_dtype, dist)
    run.history = [{"epoch": 0, "step": 0, **scores, "lr": run.scheduler.get_last_lr()[0], "elapsed": 0.0}]
    dist.main_only(lambda: _write_first_files(run))
    run.start_epoch = 1
    family = cfg.init if cfg.family.kinds else f"{cfg.family.label} {cfg.filters}"
    run.log(f"{data.description}; {type(run.model).__name__} {init['parameters']:,} parameters on {run.device}"
            + (f" x {dist.world} processes ({dist.backend})" if dist.active else "") +
            f"; init {family} in {init['init_seconds']:.2f} s; "
            f"{data.primary} acc at init {scores[f'{data.primary}_acc']:.3f}; {run.total_steps} steps "
            f"({run.epochs} epochs of {run.steps_per_epoch})")
    if "fit_summary" in init:
        run.log(f"impulse fit: {init['fit_summary']}")
    if "on_data" in init:
        from ..families.on_data import describe
        run.log(f"prior on {init['on_data']['images']} training images at init: "
                f"{describe(init['on_data']['layers'])}")


def _write_first_files(run: _Run) -> None:
    _write_run_info(run.out, run.cfg, run.init, run.data.description, run.device, run.dist.world)
    run.metrics.replace(run.history)


def _train_epoch(run: _Run, epoch: int) -> tuple:
    """Train one epoch (then evaluate, at evaluated epochs) and append its record to the history; returns
    (record, evaluation scores, whether it was evaluated)."""
    from tqdm.auto import tqdm
    cfg, dist = run.cfg, run.dist
    run.sampler.set_epoch_seed(epoch_seed(cfg.seed, epoch))
    run.loader_gen.manual_seed((epoch_seed(cfg.seed, epoch) + 1_000_003 * dist.rank) % 2 ** 63)
    run.step_model.train()
    t0 = time.perf_counter()
    sums = [torch.zeros((), device=run.device), torch.zeros((), device=run.device), 0]  # loss, correct, seen
    epoch_steps = min(run.steps_per_epoch, run.total_steps - (epoch - 1) * run.steps_per_epoch)
    bar = tqdm(desc=f"epoch {epoch}/{run.epochs}", disable=not (cfg.progress and dist.is_main), leave=False,
               dynamic_ncols=True, total=epoch_steps)
    for i, (x, y) in enumerate(run.train_loader):
        if i == epoch_steps:  # the step budget ends inside this epoch
            break
        bar.update(1)
        _train_step(run, epoch, i, x, y, sums)
        if cfg.progress and dist.is_main and (i % 10 == 0 or i == epoch_steps - 1):
            bar.set_postfix(loss=f"{sums[0].item() / max(sums[2], 1):.3f}",
                            acc=f"{sums[1].item() / max(sums[2], 1):.3f}",
                            img_s=f"{sums[2] / (time.perf_counter() - t0):.0f}")
    bar.close()
    if dist.active:
        loss_total, correct_total, seen = dist.all_reduce_sum([sums[0].item(), sums[1].item(), sums[2]], run.device)
        train_loss, train_acc = loss_total / seen, correct_total / seen
    else:
        seen = sums[2]
        train_loss, train_acc = sums[0].item() / seen, sums[1].item() / seen
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"the loss became {train_loss} in epoch {epoch}: lower --lr or set --clip-grad "
                               f"(the checkpoint of epoch {epoch - 1} in {run.out} is kept)")
    train_seconds = time.perf_counter() - t0
    evaluated = epoch % cfg.eval_every == 0 or epoch == run.epochs
    if dist.active:  # BatchNorm statistics (ConvMixer on the CPU: per process) are rank 0's from here on
        dist.broadcast_buffers_(run.model)
    scores = evaluate_splits(run.eval_model, run.eval_loaders, run.device, run.use_amp, run.amp_dtype, dist) \
        if evaluated else {}
    run.elapsed += time.perf_counter() - t0
    record = {"epoch": epoch, "step": (epoch - 1) * run.steps_per_epoch + epoch_steps, "train_loss": train_loss,
              "train_acc": train_acc, **scores, "lr": run.scheduler.get_last_lr()[0],
              "epoch_seconds": train_seconds, "images_per_s": seen / train_seconds, "elapsed": run.elapsed}
    run.history.append(record)
    return record, scores, evaluated


def _train_step(run: _Run, epoch: int, i: int, x: torch.Tensor, y: torch.Tensor, sums: list) -> None:
    """One optimizer step on batch ``i``; adds its summed loss, correct count and size to ``sums``."""
    cfg, dist, device = run.cfg, run.dist, run.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if x.is_floating_point() and x.dtype != run.in_dtype:
        x = x.to(run.in_dtype)
    target = y
    if run.mixup_fn is not None:
        x, target = run.mixup_fn(x, y)
    with _autocast(device, run.use_amp, run.amp_dtype):
        logits = run.step_model(x)
    loss = run.criterion(_loss_input(logits), target)
    mine, batch = run.sampler.steps[i]
    # DDP averages the ranks' gradients: weighting each rank's mean loss by its share of the global batch
    # makes that average the gradient of the global batch's mean loss (a stand-in sample weighs 0).
    step_loss = loss * (mine * dist.world / batch) if dist.active else loss
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(step_loss).backward()
    if cfg.clip_grad > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model, step=(epoch - 1) * run.steps_per_epoch + i + 1)
    counted = mine if dist.active else y.numel()
    sums[0] += loss.detach() * counted
    sums[1] += (logits.detach()[:counted].argmax(-1) == y[:counted]).sum()
    sums[2] += counted


def _save_epoch(run: _Run, epoch: int, record: dict, evaluated: bool) -> None:
    """Append the epoch's metrics line and, at evaluated epochs (or after CHECKPOINT_SECONDS), write the
    checkpoint. Every rank takes part in a save (it sends its random state), so rank 0's clock decides for all."""
    dist = run.dist
    save = dist.broadcast_object(evaluated or time.monotonic() - run.last_save > CHECKPOINT_SECONDS)
    rngs = dist.gather_objects(rng_state()) if save else None
    dist.main_only(lambda: _write_epoch(run, epoch, record, rngs))
    if save:
        run.last_save = time.monotonic()


def _write_epoch(run: _Run, epoch: int, record: dict, rngs: Optional[list]) -> None:
    run.metrics.append(record)
    if rngs is None:
        return
    ckpt = {"epoch": epoch, "config": run.cfg.as_dict(), "init": run.init, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": rngs[0], "history": run.history}
    if run.dist.active:
        ckpt.update(world_size=run.dist.world, rng_ranks=rngs)
    if run.ema is not None:
        ckpt["ema"] = run.ema.module.state_dict()
    save_checkpoint(run.ckpt_path, ckpt)


def _log_epoch(run: _Run, epoch: int, record: dict, scores: dict) -> None:
    shown = " | ".join(f"{s} loss {scores[f'{s}_loss']:.4f} acc {scores[f'{s}_acc']:.3f}"
                       for s in run.eval_loaders if f"{s}_acc" in scores)
    run.log(f"epoch {epoch}/{run.epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.3f}"
            + (f" | {shown}" if shown else "") + f" | {record['images_per_s']:.0f} img/s")


def _finish(run: _Run) -> TrainResult:
    """Write summary.json (rank 0; every rank returns once the run's files are complete)."""
    result = TrainResult(run.out, run.history, run.init, run.data.primary)
    best_epoch, best_acc = max(result.accuracies(), key=lambda ea: ea[1])
    run.dist.main_only(lambda: write_json(run.out / SUMMARY, {
        "split": run.data.primary, "final_acc": result.final_acc, "best_acc": best_acc, "best_epoch": best_epoch,
        "final": {s: result.final(s) for s in run.eval_loaders}, "epochs": run.epochs, "steps": run.total_steps,
        "init": run.init, "train_seconds": run.history[-1].get("elapsed", 0.0)}))
    return result


def _restore_weights(model: torch.nn.Module, state: dict, ckpt_path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {ckpt_path} does not fit this model ({str(e).splitlines()[0][:160]})",
                        "resume with the flags that made it, or start a new run with another --out") from None


def _shard(ds, dist):
    """This rank's part of an evaluation set: items rank, rank + W, ... (every item once over all ranks)."""
    if not dist.active:
        return ds
    from torch.utils.data import Subset
    return Subset(ds, range(dist.rank, len(ds), dist.world))


def _restore_ema(ema, state: dict, ckpt_path: Path) -> None:
    try:
        ema.module.load_state_dict(state["ema"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {ckpt_path} is damaged ({type(e).__name__} while restoring the model EMA)",
                        "start a new run with another --out (the file is left as it is)") from None


def _restore_rng(state: dict, dist, seed: int, log: Callable[[str], None]) -> None:
    """Each rank's random state as saved. A checkpoint of another process count restores rank 0's state and
    reseeds the others: the data order is still exact, augmentation and mixup draws are not."""
    ranks = state.get("rng_ranks")
    saved_world = int(state.get("world_size", 1))
    if saved_world == dist.world and (dist.world == 1 or isinstance(ranks, list) and len(ranks) == dist.world):
        set_rng_state(state["rng"] if dist.world == 1 else ranks[dist.rank])
        return
    if dist.rank == 0:
        set_rng_state(state["rng"])
    else:
        _seed_everything(rank_seed(seed + int(state["epoch"]), dist.rank))
    log(f"the checkpoint was written by {saved_world} process(es), this run has {dist.world}: the data order "
        f"continues exactly, random augmentation and mixup draws do not")


def load_history(out) -> List[dict]:
    """The metrics of a run folder (for reports and plots)."""
    return read_metrics(Path(out) / METRICS)
