"""Plots written next to results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def plot_training(history: list[dict], path: Path) -> Path:
    """Training loss and validation Mask IoU/Dice per epoch (like the study's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="Dice + BCE loss", title="training loss")
    ax2.plot(epochs, [h["val_mask_iou"] for h in history], marker="o", ms=3, label="Mask IoU")
    ax2.plot(epochs, [h["val_dice"] for h in history], marker="s", ms=3, label="Dice")
    ax2.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
