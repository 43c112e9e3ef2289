"""One training loop for every liverrt network.

What a network brings is a :class:`Task` (its model, batches, loss and
validation); the loop brings everything else, the same for all three:

* Adam/AdamW/SGD with a linear warm-up and cosine decay (:func:`lr_factor`);
* gradient accumulation (``grad_accum`` micro-batches per optimiser step);
* automatic mixed precision on CUDA (bf16 where the GPU supports it, else
  fp16 with a gradient scaler) and channels_last for convolutional nets;
* multi-GPU and multi-node data parallelism when started by ``torchrun``
  (DistributedDataParallel, a DistributedSampler over the training samples,
  rank 0 alone validates, logs and writes checkpoints);
* early stopping on the task's validation metric (``patience`` epochs
  without an improvement larger than ``min_delta``);
* optionally an exponential moving average of the weights (``ema``, updated
  after every optimiser step): validation scores it, and ``best.pt`` and
  ``last.pt`` hold it, so the epoch picked by validation no longer hangs on
  the last few steps' noise;
* ``best.pt`` (best validation metric) and ``last.pt`` written atomically
  after every epoch; ``last.pt`` also holds the optimiser, scheduler, grad
  scaler, epoch and random-generator states, so ``resume=True`` continues a
  run exactly where it stopped (same samples, same augmentations);
* ``train_log.csv`` and ``curves.png`` rewritten after every epoch.

Everything in a checkpoint is tensors, numbers, strings, lists and dicts:
it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from liverrt.artifacts.checkpoint import read_checkpoint, save_checkpoint
from liverrt.atomic import atomic_path
from liverrt.data.preprocess import PreprocessSpec
from liverrt.device import resolve_device
from liverrt.errors import InputError, LiverrtError
from liverrt.plots import plot_training
from liverrt.training.augment import AugmentConfig

log = logging.getLogger(__name__)

#: progress callback: (stage, done, total, info); stages "train" (per step) and "epoch"
Progress = Callable[[str, int, int, dict], None]

AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd")


class TrainingDiverged(LiverrtError):
    """The loss became NaN or inf (exit code 1)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (stored in every checkpoint).

    ``steps_per_epoch`` counts optimiser steps; by default one pass over this
    process's share of the training samples. ``model_options`` go to the
    model builder (e.g. ``{"depth": 50}`` for Mask R-CNN).
    """

    model: str = "unet_paper"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "cosine"  # "cosine" (linear warm-up, cosine decay to 5% of lr) or "constant"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, off on CPU
    channels_last: bool | None = None  # None: on for CUDA convolutional nets
    patience: int | None = None  # early stopping: epochs without improvement
    min_delta: float = 0.0
    bce_weight: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    threshold: float = 0.5
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    width_scale: float | None = None
    dropout_scale: float | None = None
    model_options: dict = field(default_factory=dict)
    init: str | None = None  # a checkpoint of the same network whose weights start the run (fine-tuning)
    ema: float | None = None  # decay per optimiser step of the weights' moving average (None: no average)

    def __post_init__(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr={self.lr} (expected > 0)")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (expected >= 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (expected >= 1)")
        if self.grad_accum < 1:
            problems.append(f"grad_accum={self.grad_accum} (expected >= 1)")
        if self.amp not in AMP_MODES:
            problems.append(f"amp={self.amp!r} (expected one of {list(AMP_MODES)})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r} (expected one of {list(OPTIMIZERS)})")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience={self.patience} (expected >= 1 or None)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append(f"steps_per_epoch={self.steps_per_epoch} (expected >= 1)")
        if self.ema is not None and not 0 < self.ema < 1:
            problems.append(f"ema={self.ema} (expected a decay between 0 and 1, e.g. 0.99, or None)")
        if problems:
            raise InputError("TrainConfig: got " + "; ".join(problems) + ".")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in data.items() if k in known}
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict
    history: list[dict]
    split: dict
    seconds: float
    stopped_early: bool = False
    world_size: int = 1


class Task(ABC):
    """What one network brings to the loop.

    ``monitor`` names the validation metric (higher is better) that picks
    ``best.pt`` and drives early stopping. ``curve_metrics`` are plotted.
    """

    name: str = ""
    model_name: str = ""
    monitor: str = "val_mask_iou"
    curve_metrics: tuple[str, ...] = ("val_mask_iou",)
    #: DDP must tolerate parameters without gradient in a step (Mask R-CNN on a slice without liver)
    find_unused_parameters: bool = False
    #: channels_last helps convolution-only networks on CUDA
    channels_last_ok: bool = True
    #: what ``--amp auto`` uses on CUDA; fp16 for Mask R-CNN, whose box coding runs in the autocast dtype
    #: (bf16 would round proposal coordinates to whole pixels above 128)
    amp_prefer: torch.dtype = torch.bfloat16

    def __init__(self, spec: PreprocessSpec, split: dict) -> None:
        self.spec = spec
        self.split = split

    @abstractmethod
    def build_model(self, config: TrainConfig) -> nn.Module: ...

    @abstractmethod
    def __len__(self) -> int:
        """Number of training samples."""

    @abstractmethod
    def batch(self, index: torch.Tensor, generator: torch.Generator, device: torch.device,
              memory_format: torch.memory_format) -> Any:
        """Training batch for sample indices ``index`` (augmented with ``generator``), on ``device``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its named parts (floats) for one batch, model in training mode."""

    @abstractmethod
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation metrics, keys starting with ``val_``; the model is put in eval mode."""

    def describe(self) -> dict:
        """Task-specific settings stored in the checkpoint's ``train_config``."""
        return {}


# -- schedule and device ----------------------------------------------------------------------


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    if config.schedule not in ("cosine", "constant"):
        raise InputError(f"schedule: got {config.schedule!r}, expected 'cosine' or 'constant'.")
    warmup = min(config.warmup_steps, max(total_steps // 10, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor


def amp_dtype(mode: str, device: torch.device, *, prefer: torch.dtype = torch.bfloat16) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision).

    ``auto`` on CUDA is ``prefer`` (bf16 unless the task asks for fp16) when the
    GPU supports it, else fp16 with a gradient scaler.
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "auto":
            if prefer == torch.float16 or not torch.cuda.is_bf16_supported():
                return torch.float16
            return torch.bfloat16
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "auto":
        return None
    if mode == "bf16":
        return torch.bfloat16
    raise InputError(f"amp={mode!r} needs a CUDA device; on {device.type} use 'bf16' or 'off'.")


# -- distributed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@contextmanager
def distributed(device_name: str) -> Iterator[tuple[DistInfo, torch.device]]:
    """Join the process group ``torchrun`` describes in the environment (if any); pick this rank's device.

    A group this call creates is destroyed on the way out, so no rank exits with
    gloo's connections still open (a peer closing them then aborts the other rank).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistInfo(), resolve_device(device_name)
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    base = resolve_device(device_name)
    if base.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                             "expected --nproc-per-node <= the number of GPUs.")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = base
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield DistInfo(rank, world, local), device
    finally:
        if created:
            dist.destroy_process_group()


def _broadcast(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _mean_across(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def _all_finite(value: float, info: DistInfo, device: torch.device) -> bool:
    ok = math.isfinite(value)
    if not info.enabled:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(t)
    return float(t.item()) == 0.0


def _gather(obj: Any, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_order(n: int, epoch: int, info: DistInfo, seed: int) -> torch.Tensor:
    """This rank's sample order for ``epoch`` (a DistributedSampler: shuffled, padded to equal length)."""
    sampler = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every epoch of one :func:`fit` call works with, set up once before the first."""

    task: Task
    config: TrainConfig
    info: DistInfo
    device: torch.device
    out_dir: Path
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    gen: torch.Generator
    dtype: torch.dtype | None
    memory_format: torch.memory_format
    steps: int  # optimiser steps per epoch
    net: nn.Module  # the model, or its DistributedDataParallel wrapper that the loss runs through
    ema: WeightAverage | None = None

    @property
    def weights(self) -> nn.Module:
        """The network the run produces: validated and saved (the moving average, when there is one)."""
        return self.ema.model if self.ema is not None else self.model

    @property
    def total_steps(self) -> int:
        return self.steps * self.config.epochs

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()


class WeightAverage:
    """An exponential moving average of a model's weights: ``avg = decay * avg + (1 - decay) * w`` after
    each optimiser step, for every floating-point parameter and buffer (BatchNorm's running statistics
    too); integer buffers (batch counters) are copied. It starts from the model's weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        avg, new = self.model.state_dict(), model.state_dict()
        floats = [k for k, v in avg.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([avg[k] for k in floats], [new[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in avg.items():
            if not v.is_floating_point():
                v.copy_(new[k])


@dataclass
class _TrainState:
    """What changes from epoch to epoch and ``last.pt`` carries across a ``--resume``."""

    history: list[dict]
    best: dict
    since_best: int = 0
    start_epoch: int = 1


def fit(task: Task, out_dir: Path, config: TrainConfig, *, resume: bool = False,
        progress: Progress | None = None) -> TrainResult:
    """Train ``task``'s network; writes ``best.pt``, ``last.pt``, ``train_log.csv`` and ``curves.png``.

    With ``resume=True`` the run continues from ``out_dir/last.pt``: weights,
    optimiser, scheduler, grad scaler, epoch, best metric, history and random
    generators come back, so the result equals an uninterrupted run.
    """
    t_start = time.perf_counter()
    with distributed(config.device) as (info, device):
        return _fit(task, Path(out_dir), config, info, device, resume, progress, t_start)


def _fit(task: Task, out_dir: Path, config: TrainConfig, info: DistInfo, device: torch.device, resume: bool,
         progress: Progress | None, t_start: float) -> TrainResult:
    run = _prepare(task, out_dir, config, info, device)
    state = _restore(run) if resume else _TrainState(history=[], best={task.monitor: -math.inf})
    run.net = _parallel(run)
    train_config = {**config.to_dict(), **task.describe(), "task": task.name, "world_size": info.world_size}
    deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
    stopped_early = False

    for epoch in range(state.start_epoch, config.epochs + 1):
        t_epoch = time.perf_counter()
        row = _train_epoch(run, epoch, progress)
        rng = _rng_states(run)
        stop = _close_epoch(run, state, epoch, row, rng, train_config, t_epoch, progress) if info.is_main else False
        out_of_time = deadline is not None and time.perf_counter() > deadline and epoch < config.epochs
        stop, out_of_time = _broadcast((stop, out_of_time), info)
        if stop:
            log.info("early stopping: %s did not improve for %d epochs", task.monitor, config.patience)
            stopped_early = True
            break
        if out_of_time:
            log.warning("time budget of %.1f min reached after epoch %d; stopping", config.max_minutes, epoch)
            break

    history, best = _broadcast((state.history, state.best), info)
    if info.enabled:
        dist.barrier()
    return TrainResult(run.best_path, run.last_path, best, history, task.split, time.perf_counter() - t_start,
                       stopped_early, info.world_size)


def _prepare(task: Task, out_dir: Path, config: TrainConfig, info: DistInfo, device: torch.device) -> _Run:
    """The model (on ``device``, channels_last where it pays), optimiser, schedule, scaler and generator."""
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if len(task) == 0:
        raise InputError(f"{task.name}: no training samples; expected at least one annotated slice.")
    torch.manual_seed(config.seed)
    dtype = amp_dtype(config.amp, device, prefer=task.amp_prefer)
    use_cl = (config.channels_last if config.channels_last is not None
              else device.type == "cuda" and task.channels_last_ok)
    memory_format = torch.channels_last if use_cl else torch.contiguous_format

    model = task.build_model(config)
    if config.init is not None:
        _initialise(model, Path(config.init))
    model = model.to(device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, config)
    per_rank = math.ceil(len(task) / info.world_size)
    micro = config.batch_size * config.grad_accum
    steps = config.steps_per_epoch or max(1, per_rank // micro)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config, steps * config.epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(config.seed + 1_000_003 * info.rank)
    ema = WeightAverage(model, config.ema) if config.ema is not None and info.is_main else None
    return _Run(task, config, info, device, out_dir, model, opt, sched, scaler, gen, dtype, memory_format,
                steps, net=model, ema=ema)


def _initialise(model: nn.Module, path: Path) -> None:
    """Start from the weights of checkpoint ``path`` (loaded safely), which must hold the same network."""
    ckpt = read_checkpoint(path, expect_kind=model.kind)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"--init {path}: its weights do not fit this network ({first[:160]}); expected a "
                         f"checkpoint of the same model and width.") from None
    log.info("initialised from %s (%s)", path, ckpt.get("model_name"))


def _parallel(run: _Run) -> nn.Module:
    """The module the loss runs through: the model itself, or (under torchrun) its DDP wrapper.

    Wrapped after :func:`_restore`, since DDP broadcasts rank 0's weights when it is built.
    """
    if not run.info.enabled:
        return run.model
    return nn.parallel.DistributedDataParallel(
        run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=run.task.find_unused_parameters)


def _train_epoch(run: _Run, epoch: int, progress: Progress | None) -> dict:
    """``run.steps`` optimiser steps; the epoch's log row (losses averaged over steps and ranks, lr)."""
    run.model.train()
    order = shard_order(len(run.task), epoch, run.info, run.config.seed)
    parts_sum: dict[str, float] = {}
    losses = []
    for step in range(run.steps):
        run.opt.zero_grad(set_to_none=True)
        step_loss = _accumulate_gradients(run, order, step, parts_sum)
        if not _all_finite(step_loss, run.info, run.device):  # every rank stops at the same step
            raise TrainingDiverged(
                f"{run.task.name}: the loss became non-finite at epoch {epoch} step {step + 1} (here {step_loss}); "
                "expected a finite loss: lower --lr, or use --amp off. last.pt holds the last good epoch.")
        if run.config.clip_grad_norm:
            run.scaler.unscale_(run.opt)
            nn.utils.clip_grad_norm_(run.model.parameters(), run.config.clip_grad_norm)
        run.scaler.step(run.opt)
        run.scaler.update()
        run.sched.step()
        if run.ema is not None:
            run.ema.update(run.model)
        losses.append(step_loss)
        if progress and run.info.is_main:
            progress("train", (epoch - 1) * run.steps + step + 1, run.total_steps, {"epoch": epoch, "loss": step_loss})
    return {"epoch": epoch, "loss": _mean_across(sum(losses) / len(losses), run.info, run.device),
            **{f"loss_{k}": _mean_across(v / run.steps, run.info, run.device) for k, v in parts_sum.items()},
            "lr": run.opt.param_groups[0]["lr"]}


def _accumulate_gradients(run: _Run, order: torch.Tensor, step: int, parts_sum: dict[str, float]) -> float:
    """Backward passes of the ``grad_accum`` micro-batches of optimiser step ``step``; their mean loss.

    The loss parts are added to ``parts_sum``. Under DDP only the last
    micro-batch synchronises gradients.
    """
    config = run.config
    step_loss = 0.0
    for k in range(config.grad_accum):
        start = ((step * config.grad_accum + k) * config.batch_size) % len(order)
        idx = order[start:][: config.batch_size]
        if idx.numel() < config.batch_size:  # wrap around for a full batch
            idx = torch.cat([idx, order[: config.batch_size - idx.numel()]])
        batch = run.task.batch(idx, run.gen, run.device, run.memory_format)
        sync = k == config.grad_accum - 1 or not run.info.enabled
        with (nullcontext() if sync else run.net.no_sync()), run.autocast():
            loss, parts = run.task.loss(run.net, batch)
        run.scaler.scale(loss / config.grad_accum).backward()
        step_loss += float(loss.detach()) / config.grad_accum
        for name, v in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + v / config.grad_accum
    return step_loss


def _rng_states(run: _Run) -> list[dict]:
    """Every rank's augmentation stream and global RNGs (dropout), gathered for ``last.pt`` (--resume)."""
    cuda = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)
    return _gather({"generator": run.gen.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}, run.info)


def _close_epoch(run: _Run, state: _TrainState, epoch: int, row: dict, rng: list[dict], train_config: dict,
                 t_epoch: float, progress: Progress | None) -> bool:
    """Rank 0 after an epoch: validate, write checkpoints, log and curves; True when early stopping is due."""
    task, config = run.task, run.config
    scores = task.validate(run.weights, run.device)
    row.update(scores)
    row["seconds"] = time.perf_counter() - t_epoch
    state.history.append(row)
    improved = scores[task.monitor] > state.best.get(task.monitor, -math.inf) + config.min_delta
    state.since_best = 0 if improved else state.since_best + 1
    metrics = {"epoch": epoch, **scores}
    common = {"model_name": task.model_name or config.model, "spec": task.spec, "split": task.split,
              "train_config": train_config}
    if improved:
        state.best = dict(metrics)
        save_checkpoint(run.best_path, run.weights, metrics=metrics, **common)
    _save_last(run, state, rng, epoch, common, metrics)
    _write_log(state.history, run.out_dir / "train_log.csv")
    _plot(state.history, run.out_dir / "curves.png", task)
    log.info("%s epoch %d/%d loss %.4f %s %.4f (%.1fs)", task.name, epoch, config.epochs, row["loss"],
             task.monitor, scores[task.monitor], row["seconds"])
    if progress:
        progress("epoch", epoch, config.epochs, row)
    return state.since_best >= config.patience if config.patience else False


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _save_last(run: _Run, state: _TrainState, rng: list[dict], epoch: int, common: dict, metrics: dict) -> None:
    train_state = {
        "epoch": epoch,
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "scaler": run.scaler.state_dict(),
        "generators": [r["generator"] for r in rng],
        "torch_rng": [r["torch"] for r in rng],
        "cuda_rng": [r["cuda"] for r in rng],
        "history": state.history,
        "best": state.best,
        "since_best": state.since_best,
        "world_size": run.info.world_size,
    }
    if run.ema is not None:  # the checkpoint's weights are the average; the trained ones continue a --resume
        train_state["model"] = run.model.state_dict()
    save_checkpoint(run.last_path, run.weights, metrics=metrics, extra={"train_state": train_state}, **common)


def _restore(run: _Run) -> _TrainState:
    """Weights, optimiser, scheduler, scaler and random streams from ``last.pt``; where the run stood."""
    path, task, config, model = run.last_path, run.task, run.config, run.model
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist; expected the last.pt of an earlier run in this folder.")
    ckpt = read_checkpoint(path)
    state = ckpt.get("train_state")
    if not isinstance(state, dict):
        raise InputError(f"--resume: {path} has no training state (it is a best/exported checkpoint); "
                         "expected the last.pt written by `liverrt train`.")
    _check_resumable(path, ckpt, run)
    if int(state["epoch"]) >= config.epochs:
        raise InputError(f"--resume: {path} already finished epoch {state['epoch']} of {config.epochs}; "
                         "raise --epochs to train longer.")
    model.load_state_dict(state["model"] if config.ema is not None else ckpt["state_dict"])
    if run.ema is not None:
        run.ema.model.load_state_dict(ckpt["state_dict"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    _restore_rng(state, run)
    resumed = _TrainState(history=state["history"], best=state["best"], since_best=int(state.get("since_best", 0)),
                        start_epoch=int(state["epoch"]) + 1)
    log.info("resuming %s at epoch %d of %d (%s so far %.4f)", task.name, resumed.start_epoch, config.epochs,
             task.monitor, resumed.best.get(task.monitor, float("nan")))
    return resumed


def _check_resumable(path: Path, ckpt: dict, run: _Run) -> None:
    """Refuse a ``last.pt`` of another task, model, preprocessing or training settings."""
    task, config, model = run.task, run.config, run.model
    stored = ckpt.get("train_config", {})
    if stored.get("task") != task.name:
        raise InputError(f"--resume: {path} is a {stored.get('task')!r} run; this is {task.name!r}.")
    if ckpt["model_config"] != dict(model.config):
        raise InputError(f"--resume: the model in {path} ({ckpt['model_config']}) differs from this run's "
                         f"({dict(model.config)}); expected the same model options.")
    if PreprocessSpec.from_dict(ckpt["preprocess"]) != task.spec:
        raise InputError(f"--resume: the PreprocessSpec in {path} differs from this run's; expected the same "
                         "--size, --window and --resize.")
    for key in ("batch_size", "grad_accum", "lr", "optimizer", "seed", "schedule", "ema"):
        if stored.get(key) != getattr(config, key) and (key in stored or key == "ema"):
            raise InputError(f"--resume: {key} was {stored.get(key)!r} in {path}, now {getattr(config, key)!r}; "
                             "expected the same training settings (only --epochs may grow).")


def _restore_rng(state: dict, run: _Run) -> None:
    """This rank's random streams, when the run had as many processes; else they restart from the seed."""
    info = run.info
    gens = state.get("generators") or []
    if int(state.get("world_size", 1)) == info.world_size and info.rank < len(gens):
        run.gen.set_state(gens[info.rank])
        torch.set_rng_state(state["torch_rng"][info.rank])
        cuda = state["cuda_rng"][info.rank]
        if cuda.numel() and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda, device=torch.cuda.current_device())
    else:
        log.warning("--resume: run had %s process(es), now %d; random streams restart from the seed",
                    state.get("world_size"), info.world_size)


def _write_log(history: list[dict], path: Path) -> None:
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    with atomic_path(path, suffix=".csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _plot(history: list[dict], path: Path, task: Task) -> None:
    try:
        plot_training(history, path, metrics=task.curve_metrics)
    except Exception as exc:  # a plot must never cost a training run
        log.warning("could not draw %s: %s", path, exc)
