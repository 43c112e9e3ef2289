"""The study's U-Net (Sattari et al. 2025, Table 4).

Two 3x3 conv + ReLU per level with dropout between them, 16-32-64-128-256
channels, 2x2 max-pooling, 2x2 stride-2 transposed convolutions, skip
connections by concatenation and a 1x1 convolution. Built with the defaults it
has exactly 1,940,817 parameters. ``forward`` returns logits; the sigmoid is
applied by :meth:`UNet.predict` and by the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from liverrt.models.base import LiverrtModel

#: Dropout after the first conv of each level, encoder levels 1-5 then decoder
#: levels 4-1, as in the Keras U-Net the study's Table 4 describes.
PAPER_DROPOUT = (0.1, 0.1, 0.2, 0.2, 0.3, 0.2, 0.2, 0.1, 0.1)
PAPER_WIDTHS = (16, 32, 64, 128, 256)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class UNet(LiverrtModel):
    """U-Net for ``(N, in_channels, H, W)`` float32 input, ``H`` and ``W`` divisible by 16.

    Returns ``(N, out_channels, H, W)`` logits.
    """

    kind = "unet"
    title = "U-Net"
    task = "segmentation"  # what its artifacts can be used for (see liverrt.models.task_of)
    gate = "masks"
    output_names = graph_output_names = ("prob",)
    output_descriptions = {"prob": "sigmoid liver probability, (N, 1, S, S) float32"}
    qat_supported = True  # quantization-aware INT8 fine-tuning (liverrt.export.qat)

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = PAPER_WIDTHS,
        dropout: Sequence[float] = PAPER_DROPOUT,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        dropout = tuple(float(d) for d in dropout)
        if len(widths) < 2:
            raise ValueError(f"widths: got {widths}, expected at least 2 levels")
        if len(dropout) != 2 * len(widths) - 1:
            raise ValueError(f"dropout: got {len(dropout)} values, expected {2 * len(widths) - 1} (one per level)")
        self.config = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "widths": list(widths),
            "dropout": list(dropout),
        }
        self.input_divisor = 2 ** (len(widths) - 1)
        levels = len(widths)
        self.down = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            self.down.append(DoubleConv(cin, w, dropout[i]))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for j, w in enumerate(reversed(widths[:-1])):
            self.upconv.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.up.append(DoubleConv(2 * w, w, dropout[levels + j]))
            cin = w
        self.head = nn.Conv2d(cin, out_channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal kernels and zero biases, the Keras initialisation of the study's U-Net.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        d = self.input_divisor
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling() and (h % d or w % d):
            raise ValueError(
                f"UNet input {tuple(x.shape)}: H and W must be divisible by {d}; "
                f"pad to ({-(-h // d) * d}, {-(-w // d) * d})"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = block(torch.cat([upconv(x), skip], dim=1))
        return self.head(x)

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """Probabilities ``{"prob": (N, out_channels, H, W)}`` in [0, 1] (:meth:`predict`, the ONNX graph)."""
        return torch.sigmoid(raw)


def unet_paper(
    *, in_channels: int = 1, width_scale: float | None = None, dropout_scale: float | None = None
) -> UNet:
    """The study's U-Net (Table 4). ``width_scale``/``dropout_scale`` scale the defaults for experiments."""
    widths = PAPER_WIDTHS
    if width_scale is not None:
        widths = tuple(max(1, round(w * width_scale)) for w in PAPER_WIDTHS)
    dropout = PAPER_DROPOUT
    if dropout_scale is not None:
        dropout = tuple(min(0.9, d * dropout_scale) for d in PAPER_DROPOUT)
    return UNet(in_channels=in_channels, widths=widths, dropout=dropout)
