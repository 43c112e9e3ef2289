"""DnCNN-SR: the study's denoising / super-resolution network applied to CT before segmentation.

Sattari et al. (2025) describe it as a strided-conv contracting path, a
dilated-conv bottleneck that maps the noise and a transposed-conv expanding
path with skips, trained with MSE + SSIM and judged by PSNR and SSIM. The
paper gives no layer table, so this is our reading of it:

* ``head``: 3x3 conv (1 -> ``channels``) + ReLU at full resolution;
* contracting path: ``depth`` stages of a stride-2 3x3 conv + BN + ReLU
  (the width stays ``channels``, as in DnCNN, so compute stays bounded);
* bottleneck: one 3x3 conv + BN + ReLU per entry of ``dilations`` (dilation
  1, 2, 4, 8, 4, 2, 1 by default: a 67-pixel receptive field at 1/4 scale);
* expanding path: per stage a 2x2 stride-2 transposed conv + BN + ReLU,
  *added* to the contracting path's features at that scale (RED-CNN style
  skips; cheaper than concatenation at full resolution), then 3x3 conv +
  BN + ReLU;
* tail: 3x3 conv to ``scale**2`` channels and, for ``scale == 2``, a pixel
  shuffle (sub-pixel conv) to the ``2H x 2W`` grid. Its weights start at
  zero, so an untrained model returns its (upsampled) input exactly.

The network predicts the residual: ``output = up(x) + residual`` where
``up`` is the identity for ``scale == 1`` and :func:`bicubic_upsample` for
``scale == 2``. Inputs are ``(N, 1, H, W)`` float32 in [0, 1] (the
:class:`~liverrt.data.preprocess.PreprocessSpec` window), ``H`` and ``W``
divisible by ``2**depth``. Every op (conv, transposed conv, batch norm,
depth-to-space, cubic resize) exports to ONNX opset 18 with dynamic batch,
height and width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liverrt.errors import InputError
from liverrt.models.base import LiverrtModel

DEFAULT_DILATIONS = (1, 2, 4, 8, 4, 2, 1)
SCALES = (1, 2)


def bicubic_upsample(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Bicubic upsampling of ``(N, C, H, W)`` float to ``(N, C, scale*H, scale*W)``.

    PyTorch's bicubic (a = -0.75, half-pixel centres, edge samples repeated),
    which is also ONNX ``Resize(mode="cubic")``. The scale-2 baseline and the
    identity path of :class:`DnCNNSR`. Not clamped: overshoot at edges can
    leave [0, 1].
    """
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1, batch_norm: bool = True) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=not batch_norm),
            nn.BatchNorm2d(cout) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class _UpBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, batch_norm: bool = True) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=not batch_norm),
            nn.BatchNorm2d(cout) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class DnCNNSR(LiverrtModel):
    """Residual denoiser (``scale=1``) or denoiser + 2x super-resolution (``scale=2``).

    Input ``(N, 1, H, W)`` float32 in [0, 1], ``H`` and ``W`` divisible by
    ``2**depth`` (:attr:`input_divisor`). :meth:`forward` returns the restored
    image ``(N, 1, scale*H, scale*W)`` float32 (not clamped, so the loss sees
    overshoot); :meth:`predict` clamps it to [0, 1].
    """

    kind = "dncnn_sr"
    title = "DnCNN-SR"
    task = "denoising"  # what its artifacts can be used for (see liverrt.models.task_of)
    gate = "psnr"  # an image out: compared with PyTorch's by PSNR, not as masks
    output_names = graph_output_names = ("restored",)
    output_descriptions = {"restored": "restored slice in [0, 1], (N, 1, scale*S, scale*S) float32"}
    dynamic_spatial = True  # fully convolutional: the graph takes any H, W divisible by 2**depth

    def __init__(
        self,
        *,
        scale: int = 1,
        channels: int = 64,
        depth: int = 2,
        dilations: Sequence[int] = DEFAULT_DILATIONS,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        scale, channels, depth = int(scale), int(channels), int(depth)
        dilations = tuple(int(d) for d in dilations)
        if scale not in SCALES:
            raise InputError(f"DnCNNSR scale: got {scale}, expected one of {SCALES}.")
        if channels < 1:
            raise InputError(f"DnCNNSR channels: got {channels}, expected >= 1.")
        if depth < 0:
            raise InputError(f"DnCNNSR depth: got {depth}, expected >= 0 strided stages.")
        if not dilations or min(dilations) < 1:
            raise InputError(f"DnCNNSR dilations: got {list(dilations)}, expected a non-empty list of values >= 1.")
        self.config = {
            "scale": scale,
            "channels": channels,
            "depth": depth,
            "dilations": list(dilations),
            "batch_norm": bool(batch_norm),
        }
        self.scale = scale
        self.input_divisor = 2**depth
        c = channels
        self.head = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU(inplace=True))
        self.down = nn.ModuleList(_ConvBNReLU(c, c, stride=2, batch_norm=batch_norm) for _ in range(depth))
        self.bottleneck = nn.Sequential(*(_ConvBNReLU(c, c, dilation=d, batch_norm=batch_norm) for d in dilations))
        self.upconv = nn.ModuleList(_UpBNReLU(c, c, batch_norm=batch_norm) for _ in range(depth))
        self.up = nn.ModuleList(_ConvBNReLU(c, c, batch_norm=batch_norm) for _ in range(depth))
        self.tail = nn.Conv2d(c, scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # zero residual at start: the untrained model is the identity (or bicubic for scale 2)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is ``(N, 1, H, W)`` float with ``H, W`` divisible by 2**depth."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise InputError(f"DnCNNSR input: got shape {tuple(x.shape)}, expected (N, 1, H, W).")
        if not x.is_floating_point():
            raise InputError(f"DnCNNSR input: got {x.dtype}, expected float32 in [0, 1]. "
                             "Note: preprocess first (see PreprocessSpec).")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.input_divisor
        if h % d or w % d:
            raise InputError(
                f"DnCNNSR input {tuple(x.shape)}: H and W must be divisible by {d} (2**depth); "
                f"pad to ({-(-h // d) * d}, {-(-w // d) * d})."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        f = self.head(x)
        skips = []
        for stage in self.down:
            skips.append(f)
            f = stage(f)
        f = self.bottleneck(f)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            f = block(upconv(f) + skip)
        residual = self.shuffle(self.tail(f))
        return bicubic_upsample(x, self.scale) + residual

    def output(self, raw: torch.Tensor) -> torch.Tensor:
        """``{"restored": (N, 1, scale*H, scale*W)}`` clamped to [0, 1] (:meth:`predict`, the ONNX graph; the
        name: an ONNX graph cannot name its input and output alike)."""
        return raw.clamp(0.0, 1.0)


def dncnn_sr(
    *,
    scale: int = 1,
    channels: int | None = None,
    depth: int | None = None,
    dilations: Sequence[int] | None = None,
    batch_norm: bool | None = None,
) -> DnCNNSR:
    """The DnCNN-SR preprocessing network; ``None`` keeps a default (64 channels, depth 2, dilations 1-2-4-8-4-2-1)."""
    kwargs = {"channels": channels, "depth": depth, "dilations": dilations, "batch_norm": batch_norm}
    return DnCNNSR(scale=scale, **{k: v for k, v in kwargs.items() if v is not None})
