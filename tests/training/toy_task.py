"""A deterministic linear-regression Task for testing the training loop (also run under torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from liverrt.data.preprocess import PreprocessSpec
from liverrt.training.loop import Task, TrainConfig, fit


class Linear(nn.Module):
    kind = "toy"

    def __init__(self) -> None:
        super().__init__()
        self.config = {}
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(x)


class ToyTask(Task):
    """y = x·w + b with fixed data; validation score is ``-mse`` (or a constant, for early stopping)."""

    name = "toy"
    model_name = "toy"
    monitor = "val_score"
    curve_metrics = ("val_score",)
    channels_last_ok = False

    def __init__(self, n: int = 16, constant_score: bool = False, blow_up: bool = False) -> None:
        super().__init__(PreprocessSpec(size=16), {"train": ["t"], "val": ["v"]})
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.7
        self.constant_score = constant_score
        self.blow_up = blow_up

    def build_model(self, config: TrainConfig) -> nn.Module:
        torch.manual_seed(0)
        return Linear()

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, index, generator, device, memory_format):
        return self.x[index].to(device), self.y[index].to(device)

    def loss(self, model, batch):
        x, y = batch
        mse = ((model(x).float() - y) ** 2).mean()
        if self.blow_up:
            mse = mse * float("inf")
        return mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def validate(self, model, device):
        mse = float(((model(self.x.to(device)) - self.y.to(device)) ** 2).mean())
        return {"val_score": 0.5 if self.constant_score else -mse}


if __name__ == "__main__":  # torchrun entry: python -m torch.distributed.run ... toy_task.py OUT BATCH
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.1, optimizer="sgd", momentum=0.0, warmup_steps=0,
                      schedule="constant", device="cpu", seed=3)
    result = fit(ToyTask(), out, cfg)
    if os.environ.get("RANK", "0") == "0":  # one line from rank 0: two ranks' prints can interleave
        print(f"WORLD {result.world_size}", flush=True)
