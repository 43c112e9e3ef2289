"""The one preprocessing function used by training and inference alike.

A :class:`PreprocessSpec` says how raw intensities become network input and
travels inside every artifact (checkpoint metadata, ONNX ``metadata_props``,
TensorRT sidecar JSON), so inference never hard-codes it.

Pipeline for a ``(D, H, W)`` volume:

1. intensities to [0, 1]: HU volumes are clipped to the window
   ``[center - width/2, center + width/2]`` and scaled; 8-bit volumes (already
   windowed PNG/JPG slices) are divided by 255. With ``quantize_8bit`` HU
   input is rounded to 256 levels first, which reproduces a model trained on
   8-bit PNG exports exactly.
2. geometry to ``size x size``:
   * ``letterbox``: scale the longer side to ``size`` keeping the aspect ratio,
     pad the shorter side symmetrically with 0 (the window's lower end);
   * ``resize``: scale each axis to ``size`` (aspect ratio not kept);
   * ``pad``: no scaling; centre-pad (or centre-crop) to ``size``;
   * ``spacing``: scale each axis to ``pixel_mm`` millimetres per pixel using
     the slice's own pixel spacing, then centre-pad (or centre-crop) to
     ``size``: the anatomy has the same size in pixels on every scanner
     (``size * pixel_mm`` mm of field of view; 256 x 1.5 mm = 384 mm).
   Resampling is bilinear (with antialiasing when shrinking) for images and
   the same for soft masks, thresholded at 0.5.

3. with ``context`` c > 0 (2.5-D), each slice comes with its c neighbours on
   either side as input channels ``(slice - c, ..., slice + c)``, the ends of
   the volume repeated: :func:`volume_input` takes them from the volume,
   :func:`to_input` from the stack of slices it is given.

:func:`restore` inverts step 2 for per-pixel outputs, so masks come back on
the source grid.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from liverrt.data.volume import Volume
from liverrt.errors import ArtifactError, InputError

ResizePolicy = Literal["letterbox", "resize", "pad", "spacing"]
RESIZE_POLICIES = ("letterbox", "resize", "pad", "spacing")
MAX_CONTEXT = 8


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw slices become network input; stored in every artifact.

    Attributes:
        window_center, window_width: HU window for HU inputs (abdomen 50/400).
        size: square network input size in pixels (the study: 512).
        resize: ``letterbox`` | ``resize`` | ``pad`` | ``spacing`` (see module docstring).
        pixel_mm: in-plane millimetres per input pixel; set exactly when
            ``resize == "spacing"``.
        context: adjacent slices on each side given as extra input channels
            (2.5-D); the network sees ``2 * context + 1`` channels.
        input_domain: ``hu`` or ``8bit``: what the model was trained on.
            :meth:`check_input` refuses 8-bit slices for an HU model and
            says how CT in HU is converted for an 8-bit model.
        quantize_8bit: round windowed HU to 256 levels (mimic 8-bit PNGs).
    """

    window_center: float = 50.0
    window_width: float = 400.0
    size: int = 512
    resize: ResizePolicy = "letterbox"
    input_domain: Literal["hu", "8bit"] = "hu"
    quantize_8bit: bool = False
    pixel_mm: float | None = None
    context: int = 0

    def __post_init__(self) -> None:
        # the window is applied in float32: a width that is 0 or infinite there would make NaN of every voxel
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                   for v in (self.window_center, self.window_width)):
            raise InputError(f"PreprocessSpec window: got center {self.window_center!r}, width {self.window_width!r}; "
                             "expected numbers in HU (e.g. 50 and 400).")
        # plain floats: NumPy scalars would not survive to_json
        object.__setattr__(self, "window_center", float(self.window_center))
        object.__setattr__(self, "window_width", float(self.window_width))
        with np.errstate(over="ignore"):
            width, center = np.float32(self.window_width), np.float32(self.window_center)
        if not (np.isfinite(width) and width > 0):
            raise InputError(f"PreprocessSpec.window_width: got {self.window_width}, expected a finite number > 0 "
                             "(in HU, e.g. 400).")
        if not np.isfinite(center):
            raise InputError(f"PreprocessSpec.window_center: got {self.window_center}, expected a finite HU value "
                             "(e.g. 50).")
        if self.size < 16 or self.size % 16:
            raise InputError(
                f"PreprocessSpec.size: got {self.size}, expected a multiple of 16 (the U-Net pools 4 times), "
                f"e.g. {max(16, (self.size + 15) // 16 * 16)}."
            )
        if self.resize not in RESIZE_POLICIES:
            raise InputError(f"PreprocessSpec.resize: got {self.resize!r}, expected one of {RESIZE_POLICIES}.")
        self._check_pixel_mm()
        if not (isinstance(self.context, numbers.Integral) and not isinstance(self.context, bool)
                and 0 <= self.context <= MAX_CONTEXT):
            raise InputError(f"PreprocessSpec.context: got {self.context!r}, expected a whole number of adjacent "
                             f"slices from 0 to {MAX_CONTEXT}.")
        object.__setattr__(self, "context", int(self.context))
        if self.input_domain not in ("hu", "8bit"):
            raise InputError(f"PreprocessSpec.input_domain: got {self.input_domain!r}, expected 'hu' or '8bit'.")

    def _check_pixel_mm(self) -> None:
        if self.resize != "spacing":
            if self.pixel_mm is not None:
                raise InputError(f"PreprocessSpec.pixel_mm: got {self.pixel_mm} with resize {self.resize!r}; "
                                 "a pixel size needs resize 'spacing'.")
            return
        mm = self.pixel_mm
        if not (isinstance(mm, numbers.Real) and not isinstance(mm, bool) and math.isfinite(mm) and mm > 0):
            raise InputError(f"PreprocessSpec.pixel_mm: got {mm!r} with resize 'spacing'; "
                             "expected millimetres per pixel > 0 (e.g. 1.5).")
        object.__setattr__(self, "pixel_mm", float(mm))

    @property
    def channels(self) -> int:
        """Input channels of the network: the slice and its ``context`` neighbours on each side."""
        return 2 * self.context + 1

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.size, self.size)

    def describe(self) -> str:
        """One line for people (model cards, ``liverrt models``)."""
        if self.pixel_mm is not None:
            grid = (f"slices resampled to {self.pixel_mm:g} mm per pixel and centre-padded or cropped "
                    f"({self.size * self.pixel_mm:g} mm field of view)")
        else:
            grid = {"letterbox": "the whole slice scaled to fit, aspect kept", "resize": "the whole slice stretched",
                    "pad": "slice pixels as they are, centre-padded or cropped"}[self.resize]
        window = ("8-bit slices / 255" if self.input_domain == "8bit"
                  else f"HU window {self.window_center:g}/{self.window_width:g}")
        near = f", {self.context} adjacent slice(s) on each side as channels" if self.context else ""
        return f"{self.size}x{self.size}: {grid}; {window}{near}"

    def check_input(self, intensity: str, what: str) -> str | None:
        """Whether a model with this spec can read ``what``'s intensities (``hu`` or ``8bit``).

        8-bit slices (PNG/JPG: 0..255 after an unknown window) given to a model trained on HU
        are refused: there is no way back to HU, and the HU window on 0..255 values would hand
        the network a picture it never saw (it finds ribs and heart). CT in HU given to a model
        trained on 8-bit slices has a documented conversion, the spec's window: the returned
        warning says so. ``None`` when the input is what the model was trained on.
        """
        if intensity == self.input_domain:
            return None
        if intensity == "8bit":
            raise InputError(
                f"{what}: 8-bit slices (0..255, PNG/JPG), and this model was trained on CT in HU; expected the CT "
                "in HU (NIfTI, DICOM, NRRD), or a model trained on 8-bit slices (liverrt train unet --data SLICES).")
        return (f"{what}: CT in HU given to a model trained on 8-bit slices; windowed to 0..255 with the model's "
                f"window {self.window_center:g}/{self.window_width:g} HU. If its training slices were exported "
                "with another window, the masks will be off.")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ArtifactError(f"PreprocessSpec: unknown fields {sorted(unknown)}; expected a subset of {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"PreprocessSpec: cannot parse {text[:80]!r}: {exc}") from exc

    def with_size(self, size: int) -> PreprocessSpec:
        return replace(self, size=size)


@dataclass(frozen=True)
class Placement:
    """Where a source slice of shape ``(h, w)`` sits inside the ``size x size`` input.

    ``scaled`` is the shape after scaling, ``offset`` the (top, left) position
    of its first pixel in the input (negative for a centre-crop).
    """

    source: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]
    size: int


def placement(shape: tuple[int, int], spec: PreprocessSpec,
              spacing: tuple[float, ...] | None = None) -> Placement:
    """Where slices of ``shape`` go in the input; ``spacing``: their ``(dy, dx)`` (or a volume's
    ``(dz, dy, dx)``) in mm, needed by ``resize == "spacing"`` only."""
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise InputError(f"Slice shape {shape}: expected a non-empty 2D slice.")
    s = spec.size
    if spec.resize == "spacing":
        dy, dx = _pixel_size(spacing, spec)
        scaled = (max(1, round(h * dy / spec.pixel_mm)), max(1, round(w * dx / spec.pixel_mm)))
    elif spec.resize == "resize":
        scaled = (s, s)
    elif spec.resize == "letterbox":
        f = s / max(h, w)
        scaled = (max(1, round(h * f)), max(1, round(w * f)))
    else:  # pad
        scaled = (h, w)
    offset = ((s - scaled[0]) // 2, (s - scaled[1]) // 2)
    return Placement(source=(h, w), scaled=scaled, offset=offset, size=s)


def _pixel_size(spacing: tuple[float, ...] | None, spec: PreprocessSpec) -> tuple[float, float]:
    if spacing is None:
        raise InputError(f"This model resamples slices to {spec.pixel_mm} mm per pixel, and the slices came "
                         "without a pixel spacing; give it (e.g. spacing=(dz, dy, dx) in mm).")
    dy, dx = (float(v) for v in spacing[-2:])
    if not (math.isfinite(dy) and math.isfinite(dx) and dy > 0 and dx > 0):
        raise InputError(f"Pixel spacing {spacing}: expected millimetres > 0.")
    return dy, dx


def normalize(image: np.ndarray, intensity: str, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Intensities to float32 in [0, 1] (step 1 of the pipeline), into ``out`` when given.

    In place on one float32 buffer: ``(float32(v) - lo) / width`` for HU (``v / 255``
    for 8-bit), NaN to 0 and +/-inf to 1/0 (float input only: integers have
    neither), clipped to [0, 1], then rounded to 1/255 steps if the spec quantises.
    """
    if intensity not in ("hu", "8bit"):
        raise InputError(f"intensity: got {intensity!r}, expected 'hu' or '8bit'.")
    x = np.empty(image.shape, np.float32) if out is None else out
    if x.shape != image.shape or x.dtype != np.float32:
        raise InputError(f"normalize: out is {x.dtype} {x.shape}; expected float32 {image.shape}.")
    if intensity == "hu":
        lo = spec.window_center - spec.window_width / 2.0
        np.subtract(image, np.float32(lo), out=x, dtype=np.float32, casting="unsafe")
        x /= np.float32(spec.window_width)
    else:
        np.divide(image, np.float32(255.0), out=x, dtype=np.float32, casting="unsafe")
    if image.dtype.kind not in "iub":  # NaN voxels (outside a reconstructed field of view) count as the bottom
        np.nan_to_num(x, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(x, 0.0, 1.0, out=x)
    if intensity == "hu" and spec.quantize_8bit:
        x *= np.float32(255.0)
        np.rint(x, out=x)
        x /= np.float32(255.0)
    return x


def _resample(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of an (N, C, h, w) tensor; antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    shrink = shape[0] < x.shape[-2] or shape[1] < x.shape[-1]
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=shrink)


def _place(x: torch.Tensor, p: Placement) -> torch.Tensor:
    """Put scaled (N, C, sh, sw) data into (N, C, size, size) at p.offset (pad with 0 / crop)."""
    n, c = x.shape[:2]
    out = x.new_zeros((n, c, p.size, p.size))
    top, left = p.offset
    sh, sw = p.scaled
    # intersection of [top, top+sh) x [left, left+sw) with [0, size)^2
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + sh, p.size), min(left + sw, p.size)
    out[:, :, t0:t1, l0:l1] = x[:, :, t0 - top : t1 - top, l0 - left : l1 - left]
    return out


def _unplace(x: torch.Tensor, p: Placement, fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`_place`: cut the (N, C, sh, sw) region out of (N, C, size, size)."""
    n, c = x.shape[:2]
    sh, sw = p.scaled
    out = x.new_full((n, c, sh, sw), fill)
    top, left = p.offset
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + sh, p.size), min(left + sw, p.size)
    out[:, :, t0 - top : t1 - top, l0 - left : l1 - left] = x[:, :, t0:t1, l0:l1]
    return out


def to_input(slices: np.ndarray, intensity: str, spec: PreprocessSpec,
             spacing: tuple[float, ...] | None = None) -> tuple[np.ndarray, Placement]:
    """Raw ``(N, H, W)`` slices -> network input ``(N, channels, size, size)`` float32 in [0, 1].

    ``spacing``: the slices' pixel size in mm, ``(dy, dx)`` or a volume's ``(dz, dy, dx)``; used
    (and required) only by ``resize == "spacing"``. With ``spec.context`` the slices are taken as
    one contiguous stack (a whole volume, in order): their neighbours come from it.
    """
    x, p = _one_channel(slices, intensity, spec, spacing)
    if spec.context:
        n = x.shape[0]
        x = x[_neighbours(np.arange(n), n, spec.context), 0]
    return x, p


def volume_input(volume: Volume, index: slice | np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, Placement]:
    """Network input for the slices ``index`` of ``volume`` (a slice or slice numbers, in any order).

    With ``spec.context`` each slice brings its neighbours from the whole volume, so a batch
    cut out of a volume gets the same input as the volume in one piece.
    """
    if not spec.context:  # a slice of the volume is a view: no copy on the segmenter's path
        return to_input(volume.image[index], volume.intensity, spec, volume.spacing)
    idx = np.arange(volume.shape[0])[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
    near = _neighbours(idx, volume.shape[0], spec.context)
    used, where = np.unique(near, return_inverse=True)  # each slice preprocessed once
    x, p = _one_channel(volume.image[used], volume.intensity, spec, volume.spacing)
    return x[where.reshape(near.shape), 0], p


def _neighbours(idx: np.ndarray, depth: int, context: int) -> np.ndarray:
    """``(n, 2 context + 1)`` slice numbers ``idx - context .. idx + context``, clamped to ``[0, depth)``."""
    return np.clip(idx[:, None] + np.arange(-context, context + 1)[None], 0, depth - 1)


def _one_channel(slices: np.ndarray, intensity: str, spec: PreprocessSpec,
                 spacing: tuple[float, ...] | None) -> tuple[np.ndarray, Placement]:
    """Steps 1 and 2: ``(N, H, W)`` -> ``(N, 1, size, size)``."""
    if slices.ndim != 3:
        raise InputError(f"to_input: got shape {slices.shape}, expected (N, H, W) slices.")
    p = placement(slices.shape[1:], spec, spacing)
    if p.scaled == p.source == (p.size, p.size):  # already on the network's grid: window straight into place
        out = np.empty((slices.shape[0], 1, p.size, p.size), np.float32)
        normalize(slices, intensity, spec, out=out[:, 0])
        return out, p
    x = torch.from_numpy(normalize(slices, intensity, spec))[:, None]
    x = _place(_resample(x, p.scaled), p)
    return x.numpy(), p


def mask_to_input(mask: np.ndarray, p: Placement) -> np.ndarray:
    """A ``(N, H, W)`` bool mask on the source grid -> ``(N, 1, size, size)`` float32 0/1."""
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[:, None]
    x = _place(_resample(x, p.scaled), p)
    return (x >= 0.5).to(torch.float32).numpy()


def restore(prob: np.ndarray, p: Placement) -> np.ndarray:
    """Per-pixel network output ``(N, size, size)`` -> ``(N, H, W)`` on the source grid."""
    if prob.ndim != 3 or prob.shape[1:] != (p.size, p.size):
        raise InputError(f"restore: got shape {prob.shape}, expected (N, {p.size}, {p.size}).")
    x = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[:, None]
    x = _unplace(x, p)
    x = _resample(x, p.source)
    return x[:, 0].numpy()
