"""Plots written next to results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from liverrt.atomic import atomic_path


def plot_training(history: list[dict], path: Path,
                  metrics: tuple[str, ...] | list[str] = ("val_mask_iou", "val_dice")) -> Path:
    """Training loss and validation metrics per epoch (like the study's Figure 4).

    Scores in [0, 1] (IoU, Dice, SSIM) share the right panel's 0..1 axis;
    anything else (PSNR in dB) gets its own scale.
    """
    import matplotlib  # slow to import; loaded only when a plot is drawn, not by every user of this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, label="total")
    parts = [k for k in history[-1] if k.startswith("loss_")]
    for k in parts if len(parts) > 1 else []:
        ax1.plot(epochs, [h.get(k, float("nan")) for h in history], lw=1, alpha=0.7, label=k[5:])
    ax1.set(xlabel="epoch", ylabel="loss", title="training loss")
    if len(parts) > 1:
        ax1.legend(loc="upper right", fontsize=7)
    shown = [m for m in metrics if any(m in h for h in history)]
    unit = all(0.0 <= h.get(m, 0.0) <= 1.0 for h in history for m in shown)
    for m, marker in zip(shown, "osd^v<>", strict=False):
        ax2.plot(epochs, [h.get(m, float("nan")) for h in history], marker=marker, ms=3,
                 label=m.removeprefix("val_").replace("_", " "))
    ax2.set(xlabel="epoch", ylabel="score", title="validation")
    if unit:
        ax2.set_ylim(0, 1)
    if shown:
        ax2.legend(loc="lower right", fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(Path(path), suffix=".png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
