import numpy as np
import pytest

from liverrt.data.preprocess import (
    PreprocessSpec,
    mask_to_input,
    normalize,
    placement,
    restore,
    to_input,
    volume_input,
)
from liverrt.errors import ArtifactError, InputError


@pytest.mark.parametrize("policy", ["letterbox", "resize", "pad"])
@pytest.mark.parametrize("shape", [(48, 40), (64, 64), (30, 70)])
def test_mask_round_trip_keeps_geometry(policy, shape):
    spec = PreprocessSpec(size=64, resize=policy)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (((yy - h * 0.5) / (h * 0.3)) ** 2 + ((xx - w * 0.4) / (w * 0.25)) ** 2 <= 1)[None]
    p = placement(shape, spec)
    x = mask_to_input(mask, p)
    assert x.shape == (1, 1, 64, 64)
    back = restore(x[:, 0], p) >= 0.5
    assert back.shape == mask.shape
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.9


def test_pad_policy_is_exact_when_the_slice_fits():
    spec = PreprocessSpec(size=64, resize="pad")
    rng = np.random.default_rng(0)
    mask = rng.random((2, 50, 33)) > 0.5
    p = placement(mask.shape[1:], spec)
    assert np.array_equal(restore(mask_to_input(mask, p)[:, 0], p) >= 0.5, mask)


def test_pad_policy_crops_larger_slices_and_restores_background():
    spec = PreprocessSpec(size=32, resize="pad")
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:30, 10:30] = True
    p = placement(mask.shape[1:], spec)
    assert p.offset == (-4, -4)
    assert np.array_equal(restore(mask_to_input(mask, p)[:, 0], p) >= 0.5, mask)


def test_hu_window_and_8bit_scaling():
    spec = PreprocessSpec(window_center=50, window_width=400)
    hu = np.array([[[-1000, -150, 50, 250, 3000]]], np.int16)
    assert np.allclose(normalize(hu, "hu", spec), [[[0, 0, 0.5, 1, 1]]])
    px = np.array([[[0, 51, 255]]], np.uint8)
    assert np.allclose(normalize(px, "8bit", spec), [[[0, 0.2, 1]]])


def test_quantize_8bit_matches_png_export():
    spec = PreprocessSpec(quantize_8bit=True)
    hu = np.linspace(-300, 400, 97, dtype=np.float32).reshape(1, 1, -1)
    x = normalize(hu, "hu", spec)
    assert np.allclose(x * 255, np.round(x * 255), atol=1e-4)


def test_to_input_shape_range_and_letterbox_padding():
    spec = PreprocessSpec(size=32)
    img = np.full((3, 40, 20), 250, np.int16)  # all at the top of the window
    x, p = to_input(img, "hu", spec)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert p.scaled == (32, 16) and p.offset == (0, 8)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)
    assert np.all(x[..., :8] == 0) and np.all(x[..., 24:] == 0)


def test_spec_round_trips_through_json_and_rejects_bad_values():
    spec = PreprocessSpec(window_center=60, window_width=350, size=256, resize="pad", input_domain="8bit")
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InputError, match="multiple of 16"):
        PreprocessSpec(size=100)
    with pytest.raises(ArtifactError, match="unknown fields"):
        PreprocessSpec.from_dict({"size": 64, "colour": "red"})


def _normalize_reference(image, intensity, spec):
    """The plain formula, one temporary per step (what normalize computes in place)."""
    if intensity == "8bit":
        return np.clip(np.nan_to_num(image.astype(np.float32) / np.float32(255.0)), 0.0, 1.0)
    lo = spec.window_center - spec.window_width / 2.0
    x = (image.astype(np.float32) - np.float32(lo)) / np.float32(spec.window_width)
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return (np.round(x * np.float32(255.0)) / np.float32(255.0)).astype(np.float32) if spec.quantize_8bit else x


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint16, np.float32, np.float64])
def test_normalize_in_place_equals_the_plain_formula_bit_for_bit(dtype, quantize):
    rng = np.random.default_rng(7)
    spec = PreprocessSpec(window_center=40.5, window_width=350.0, quantize_8bit=quantize)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (max(info.min, -3000), min(info.max, 3000)) if info else (-3000, 3000)
    image = rng.integers(lo, hi, size=(3, 17, 19)).astype(dtype)
    edges = [-134.5, 215.5] if info is None else [-135, 216]  # the window is [-134.5, 215.5] HU
    image[0, 0, :4] = [lo, hi - 1, *edges] if lo < 0 else [lo, hi - 1, 0, edges[1]]  # extremes, window edges
    if info is None:  # float volumes: fractional values, NaN and infinities (the edges kept exact)
        image[1:] = image[1:] + rng.random(image[1:].shape).astype(dtype)
        image[1, 2, :3] = [np.nan, np.inf, -np.inf]
    ref = _normalize_reference(image, "hu", spec)
    got = normalize(image, "hu", spec)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), ref.view(np.uint32))
    px = rng.integers(0, 256, size=(2, 5, 7)).astype(np.uint8)
    assert np.array_equal(normalize(px, "8bit", spec), _normalize_reference(px, "8bit", spec))


def test_to_input_writes_same_size_slices_straight_into_place():
    spec = PreprocessSpec(size=32)
    rng = np.random.default_rng(3)
    image = rng.integers(-1000, 1000, size=(4, 32, 32)).astype(np.int16)
    for policy in ("letterbox", "resize", "pad"):
        x, p = to_input(image, "hu", PreprocessSpec(size=32, resize=policy))
        assert p.scaled == p.source == (32, 32) and x.shape == (4, 1, 32, 32) and x.flags.c_contiguous
        assert np.array_equal(x[:, 0], _normalize_reference(image, "hu", spec))
    out = np.empty((4, 32, 32), np.float64)
    with pytest.raises(InputError, match="expected float32"):
        normalize(image, "hu", spec, out=out)


@pytest.mark.parametrize("field,value", [("window_width", 0.0), ("window_width", 1e-50), ("window_width", 1e39),
                                         ("window_width", float("nan")), ("window_center", float("inf")),
                                         ("window_width", "wide"), ("window_width", "400"), ("window_width", [400]),
                                         ("window_center", True)])
def test_a_window_that_float32_cannot_apply_is_refused(field, value):
    with pytest.raises(InputError, match=field if isinstance(value, float) else "expected numbers"):
        PreprocessSpec(**{field: value})


def test_numpy_and_integer_windows_are_numbers():
    spec = PreprocessSpec(window_center=np.int64(40), window_width=np.float32(350.0))
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_spacing_policy_gives_anatomy_the_same_size_on_every_scanner():
    """A 200 mm disc drawn at 0.5 mm and at 0.8 mm per pixel fills the same pixels at pixel_mm 2."""
    spec = PreprocessSpec(size=128, resize="spacing", pixel_mm=2.0)
    areas = []
    for mm, n in ((0.5, 512), (0.8, 320)):
        yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * mm - n * mm / 2
        disc = (yy**2 + xx**2 <= 100.0**2)[None]
        p = placement(disc.shape[1:], spec, (mm, mm))
        assert p.scaled == (round(n * mm / 2.0),) * 2
        areas.append(int(mask_to_input(disc, p).sum()))
        back = restore(mask_to_input(disc, p)[:, 0], p) >= 0.5  # and back on the source grid
        assert (back & disc).sum() / (back | disc).sum() > 0.97
    assert abs(areas[0] - areas[1]) <= 0.02 * areas[0]
    assert abs(areas[0] - np.pi * 50**2) <= 0.02 * areas[0]  # a 100 mm radius is 50 pixels


def test_spacing_policy_uses_each_axis_and_centre_crops_a_wide_field_of_view():
    spec = PreprocessSpec(size=64, resize="spacing", pixel_mm=1.0)
    p = placement((40, 100), spec, (3.0, 1.0, 2.0))  # a volume's (dz, dy, dx): dy 1 mm, dx 2 mm
    assert p.scaled == (40, 200)
    assert p.offset == (12, -68)
    x, q = to_input(np.zeros((2, 40, 100), np.float32), "hu", spec, (1.0, 2.0))
    assert x.shape == (2, 1, 64, 64) and q == p


def test_spacing_policy_needs_a_pixel_size_and_a_spacing():
    with pytest.raises(InputError, match="pixel_mm"):
        PreprocessSpec(resize="spacing")
    with pytest.raises(InputError, match="pixel_mm"):
        PreprocessSpec(resize="spacing", pixel_mm=0.0)
    with pytest.raises(InputError, match="needs resize 'spacing'"):
        PreprocessSpec(resize="letterbox", pixel_mm=1.5)
    spec = PreprocessSpec(size=64, resize="spacing", pixel_mm=1.5)
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InputError, match="without a pixel spacing"):
        to_input(np.zeros((1, 32, 32), np.float32), "hu", spec)
    with pytest.raises(InputError, match="expected millimetres > 0"):
        to_input(np.zeros((1, 32, 32), np.float32), "hu", spec, (1.0, float("nan")))


def _stack(depth: int, h: int = 20, w: int = 24) -> np.ndarray:
    """Slices whose value says which slice they are (HU 10 * k), so channels can be read back."""
    return np.repeat((10.0 * np.arange(depth, dtype=np.float32))[:, None, None], h * w, axis=1).reshape(depth, h, w)


def test_context_gives_each_slice_its_neighbours_as_channels_repeating_the_ends():
    from liverrt_test_helpers import make_volume

    spec = PreprocessSpec(size=32, window_center=100.0, window_width=400.0, context=2)
    assert spec.channels == 5 and spec.input_shape(3) == (3, 5, 32, 32)
    vol = make_volume(shape=(6, 20, 24))
    vol = type(vol)(image=_stack(6), spacing=vol.spacing, affine=vol.affine, intensity="hu")
    x, _ = to_input(vol.image, "hu", spec)
    assert x.shape == (6, 5, 32, 32)
    slice_of = np.rint((x[:, :, 16, 16] * 400.0 - 100.0) / 10.0).astype(int)  # the centre pixel back to k
    want = np.clip(np.arange(6)[:, None] + np.arange(-2, 3)[None], 0, 5)
    assert np.array_equal(slice_of, want)
    # any batch cut out of the volume, in any order, gets what the whole volume gets
    for index in (slice(0, 2), slice(2, 5), slice(5, 6), np.array([4, 0, 5])):
        part, _ = volume_input(vol, index, spec)
        assert np.array_equal(part, x[index])
    one, _ = volume_input(vol, slice(1, 3), PreprocessSpec(size=32, window_center=100.0, window_width=400.0))
    assert one.shape == (2, 1, 32, 32) and np.array_equal(one[:, 0], x[1:3, 2])


def test_context_must_be_a_small_whole_number():
    for bad in (-1, 1.5, True, 9):
        with pytest.raises(InputError, match="context"):
            PreprocessSpec(context=bad)
    spec = PreprocessSpec(context=1)
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_a_spec_describes_itself_for_people():
    assert PreprocessSpec(size=256).describe() == "256x256: the whole slice scaled to fit, aspect kept; HU window 50/400"
    text = PreprocessSpec(size=256, resize="spacing", pixel_mm=1.5, context=1).describe()
    assert "1.5 mm per pixel" in text and "384 mm field of view" in text and "1 adjacent slice(s)" in text
