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
* ``best.pt`` (best validation metric) and ``last.pt`` written atomically
  after every epoch; ``last.pt`` also holds the optimiser, scheduler, grad
  scaler, epoch and random-generator states, so ``resume=True`` continues a
  run exactly where it stopped (same samples, same augmentations);
* ``train_log.csv`` and ``curves.png`` rewritten after every epoch.

Everything in a checkpoint is tensors, numbers, strings, lists and dicts:
it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from liverrt.data.preprocess import PreprocessSpec
from liverrt.device import resolve_device
from liverrt.errors import InputError, LiverrtError
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


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group ``torchrun`` describes in the environment (if any); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
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
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), device


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
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


# -- the loop ---------------------------------------------------------------------------------


def fit(task: Task, out_dir: Path, config: TrainConfig, *, resume: bool = False,
        progress: Progress | None = None) -> TrainResult:
    """Train ``task``'s network; writes ``best.pt``, ``last.pt``, ``train_log.csv`` and ``curves.png``.

    With ``resume=True`` the run continues from ``out_dir/last.pt``: weights,
    optimiser, scheduler, grad scaler, epoch, best metric, history and random
    generators come back, so the result equals an uninterrupted run.
    """
    t_start = time.perf_counter()
    info, device = setup_distributed(config.device)
    out_dir = Path(out_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if len(task) == 0:
        raise InputError(f"{task.name}: no training samples; expected at least one annotated slice.")
    torch.manual_seed(config.seed)
    dtype = amp_dtype(config.amp, device, prefer=task.amp_prefer)
    use_cl = (config.channels_last if config.channels_last is not None
              else device.type == "cuda" and task.channels_last_ok)
    memory_format = torch.channels_last if use_cl else torch.contiguous_format

    model = task.build_model(config).to(device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, config)
    per_rank = math.ceil(len(task) / info.world_size)
    micro = config.batch_size * config.grad_accum
    steps = config.steps_per_epoch or max(1, per_rank // micro)
    total_steps = steps * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(config.seed + 1_000_003 * info.rank)

    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    history: list[dict] = []
    best: dict = {task.monitor: -math.inf}
    start_epoch, since_best = 1, 0
    if resume:
        state = _restore(last_path, task, config, model, opt, sched, scaler, gen, info)
        history, best, since_best = state["history"], state["best"], int(state.get("since_best", 0))
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming %s at epoch %d of %d (%s so far %.4f)", task.name, start_epoch, config.epochs,
                 task.monitor, best.get(task.monitor, float("nan")))

    net: nn.Module = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters)
    train_config = {**config.to_dict(), **task.describe(), "task": task.name, "world_size": info.world_size}
    deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
    stopped_early = False
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext

    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        t_epoch = time.perf_counter()
        order = shard_order(len(task), epoch, info, config.seed)
        parts_sum: dict[str, float] = {}
        losses = []
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for k in range(config.grad_accum):
                start = ((step * config.grad_accum + k) * config.batch_size) % len(order)
                idx = order[start:][: config.batch_size]
                if idx.numel() < config.batch_size:  # wrap around for a full batch
                    idx = torch.cat([idx, order[: config.batch_size - idx.numel()]])
                batch = task.batch(idx, gen, device, memory_format)
                sync = k == config.grad_accum - 1 or not info.enabled
                with (nullcontext() if sync else net.no_sync()), autocast():
                    loss, parts = task.loss(net, batch)
                scaler.scale(loss / config.grad_accum).backward()
                step_loss += float(loss.detach()) / config.grad_accum
                for name, v in parts.items():
                    parts_sum[name] = parts_sum.get(name, 0.0) + v / config.grad_accum
            if not _all_finite(step_loss, info, device):  # every rank stops at the same step
                raise TrainingDiverged(
                    f"{task.name}: the loss became non-finite at epoch {epoch} step {step + 1} (here {step_loss}); "
                    "expected a finite loss: lower --lr, or use --amp off. last.pt holds the last good epoch.")
            if config.clip_grad_norm:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(step_loss)
            if progress and info.is_main:
                progress("train", (epoch - 1) * steps + step + 1, total_steps, {"epoch": epoch, "loss": step_loss})

        row = {"epoch": epoch, "loss": _mean_across(sum(losses) / len(losses), info, device),
               **{f"loss_{k}": _mean_across(v / steps, info, device) for k, v in parts_sum.items()},
               "lr": opt.param_groups[0]["lr"]}
        # every rank's augmentation stream and global RNGs (dropout), for --resume
        rng = _gather({"generator": gen.get_state(), "torch": torch.get_rng_state(),
                       "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0,
                                                                                                          dtype=torch.uint8)},
                      info)
        if info.is_main:
            scores = task.validate(model, device)
            row.update(scores)
            row["seconds"] = time.perf_counter() - t_epoch
            history.append(row)
            improved = scores[task.monitor] > best.get(task.monitor, -math.inf) + config.min_delta
            since_best = 0 if improved else since_best + 1
            metrics = {"epoch": epoch, **scores}
            common = {"model_name": task.model_name or config.model, "spec": task.spec, "split": task.split,
                      "train_config": train_config}
            if improved:
                best = dict(metrics)
                from liverrt.artifacts.checkpoint import save_checkpoint

                save_checkpoint(best_path, model, metrics=metrics, **common)
            stop = since_best >= config.patience if config.patience else False
            _save_last(last_path, model, opt, sched, scaler, rng, epoch, history, best, since_best, info,
                       common, metrics)
            _write_log(history, out_dir / "train_log.csv")
            _plot(history, out_dir / "curves.png", task)
            log.info("%s epoch %d/%d loss %.4f %s %.4f (%.1fs)", task.name, epoch, config.epochs, row["loss"],
                     task.monitor, scores[task.monitor], row["seconds"])
            if progress:
                progress("epoch", epoch, config.epochs, row)
        else:
            stop = False
        out_of_time = deadline is not None and time.perf_counter() > deadline and epoch < config.epochs
        stop, out_of_time = _broadcast((stop, out_of_time), info)
        if stop:
            log.info("early stopping: %s did not improve for %d epochs", task.monitor, config.patience)
            stopped_early = True
            break
        if out_of_time:
            log.warning("time budget of %.1f min reached after epoch %d; stopping", config.max_minutes, epoch)
            break

    history, best = _broadcast((history, best), info)
    if info.enabled:
        dist.barrier()
    return TrainResult(best_path, last_path, best, history, task.split, time.perf_counter() - t_start,
                       stopped_early, info.world_size)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _save_last(path, model, opt, sched, scaler, rng, epoch, history, best, since_best, info, common, metrics):
    from liverrt.artifacts.checkpoint import save_checkpoint

    state = {
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "generators": [r["generator"] for r in rng],
        "torch_rng": [r["torch"] for r in rng],
        "cuda_rng": [r["cuda"] for r in rng],
        "history": history,
        "best": best,
        "since_best": since_best,
        "world_size": info.world_size,
    }
    save_checkpoint(path, model, metrics=metrics, extra={"train_state": state}, **common)


def _restore(path: Path, task: Task, config: TrainConfig, model, opt, sched, scaler, gen, info) -> dict:
    from liverrt.artifacts.checkpoint import read_checkpoint

    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist; expected the last.pt of an earlier run in this folder.")
    ckpt = read_checkpoint(path)
    state = ckpt.get("train_state")
    if not isinstance(state, dict):
        raise InputError(f"--resume: {path} has no training state (it is a best/exported checkpoint); "
                         "expected the last.pt written by `liverrt train`.")
    stored = ckpt.get("train_config", {})
    if stored.get("task") != task.name:
        raise InputError(f"--resume: {path} is a {stored.get('task')!r} run; this is {task.name!r}.")
    if ckpt["model_config"] != dict(model.config):
        raise InputError(f"--resume: the model in {path} ({ckpt['model_config']}) differs from this run's "
                         f"({dict(model.config)}); expected the same model options.")
    if PreprocessSpec.from_dict(ckpt["preprocess"]) != task.spec:
        raise InputError(f"--resume: the PreprocessSpec in {path} differs from this run's; expected the same "
                         "--size, --window and --resize.")
    for key in ("batch_size", "grad_accum", "lr", "optimizer", "seed", "schedule"):
        if key in stored and stored[key] != getattr(config, key):
            raise InputError(f"--resume: {key} was {stored[key]!r} in {path}, now {getattr(config, key)!r}; "
                             "expected the same training settings (only --epochs may grow).")
    if int(state["epoch"]) >= config.epochs:
        raise InputError(f"--resume: {path} already finished epoch {state['epoch']} of {config.epochs}; "
                         "raise --epochs to train longer.")
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    gens = state.get("generators") or []
    if int(state.get("world_size", 1)) == info.world_size and info.rank < len(gens):
        gen.set_state(gens[info.rank])
        torch.set_rng_state(state["torch_rng"][info.rank])
        cuda = state["cuda_rng"][info.rank]
        if cuda.numel() and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda, device=torch.cuda.current_device())
    else:
        log.warning("--resume: run had %s process(es), now %d; random streams restart from the seed",
                    state.get("world_size"), info.world_size)
    return state


def _write_log(history: list[dict], path: Path) -> None:
    from liverrt.atomic import atomic_path

    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    with atomic_path(path, suffix=".csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _plot(history: list[dict], path: Path, task: Task) -> None:
    from liverrt.plots import plot_training

    try:
        plot_training(history, path, metrics=task.curve_metrics)
    except Exception as exc:  # a plot must never cost a training run
        log.warning("could not draw %s: %s", path, exc)
