"""DnCNN-SR: shapes, the identity start, config round trip, input checks, ONNX parity, quick learning."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from liverrt_test_helpers import make_volume

from liverrt.errors import InputError
from liverrt.metrics.image import psnr
from liverrt.models.dncnn_sr import DnCNNSR, bicubic_upsample, dncnn_sr
from liverrt.training.degrade import DegradeConfig, degrade, hu_to_window
from liverrt.training.losses_image import dncnn_loss


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to the 2-thread pool stalling when
    another process holds a core (seen here: 0.3 s -> 25 s for the training test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(scale: int, seed: int = 0) -> DnCNNSR:
    """A small model with a random (non-zero) tail and BN statistics, so outputs differ from the input."""
    torch.manual_seed(seed)
    model = DnCNNSR(scale=scale, channels=8, dilations=(1, 2, 4, 2, 1))
    with torch.no_grad():
        model.tail.weight.normal_(0, 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_default_parameter_counts():
    # head 640 + 2 strided + 7 dilated + 2 transposed + 2 up convs (64x64, BN instead of bias) + tail
    assert n_params(dncnn_sr()) == 441_153
    assert n_params(dncnn_sr(scale=2)) == 442_884
    assert n_params(dncnn_sr(channels=32)) < 441_153 / 3


@pytest.mark.parametrize("scale", [1, 2])
def test_shapes_and_identity_at_initialisation(scale):
    model = DnCNNSR(scale=scale, channels=8).eval()
    x = torch.rand(3, 1, 16, 24)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 1, 16 * scale, 24 * scale) and out.dtype == torch.float32
    # the zero-initialised tail makes the untrained network its identity path
    torch.testing.assert_close(out, bicubic_upsample(x, scale), rtol=0, atol=0)
    if scale == 1:
        assert torch.equal(out, x)
    pred = model.predict(x)
    assert set(pred) == {"restored"} and pred["restored"].min() >= 0 and pred["restored"].max() <= 1


def test_config_rebuilds_the_same_model():
    model = tiny(2)
    rebuilt = DnCNNSR(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert model.kind == "dncnn_sr" and model.config["dilations"] == [1, 2, 4, 2, 1]
    assert dncnn_sr(scale=2, channels=None, depth=3).config["depth"] == 3  # None keeps a default


@pytest.mark.parametrize("shape, match", [
    ((1, 1, 30, 32), r"divisible by 4.*pad to \(32, 32\)"),
    ((1, 1, 32, 18), r"pad to \(32, 20\)"),
    ((1, 3, 32, 32), r"expected \(N, 1, H, W\)"),
    ((32, 32), r"expected \(N, 1, H, W\)"),
])
def test_invalid_inputs_raise_input_error(shape, match):
    with pytest.raises(InputError, match=match):
        DnCNNSR(channels=4)(torch.zeros(shape))


def test_invalid_config_and_dtype_raise_input_error():
    with pytest.raises(InputError, match="float32"):
        DnCNNSR(channels=4)(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    for bad in ({"scale": 3}, {"channels": 0}, {"dilations": []}, {"depth": -1}):
        with pytest.raises(InputError):
            DnCNNSR(**bad)
    assert DnCNNSR(channels=4, depth=3).input_divisor == 8


def _onnx_parity(model: DnCNNSR, path, *, dynamo: bool) -> None:
    example = torch.rand(2, 1, 32, 48)
    if dynamo:
        dim = torch.export.Dim
        dynamic = {"x": {0: dim("batch", max=256), 2: 4 * dim("h4", max=512), 3: 4 * dim("w4", max=512)}}
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=18, input_names=["image_in"],
                          output_names=["image"], dynamic_shapes=dynamic, verbose=False)
    else:
        axes = {"image_in": {0: "n", 2: "h", 3: "w"}, "image": {0: "n", 2: "oh", 3: "ow"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=18, input_names=["image_in"],
                          output_names=["image"], dynamic_axes=axes)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for shape in [(2, 1, 32, 48), (1, 1, 16, 16), (3, 1, 64, 32)]:  # batch, H and W all change
        x = rng.random(shape, dtype=np.float32)
        (got,) = sess.run(None, {name: x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape == (shape[0], 1, shape[2] * model.scale, shape[3] * model.scale)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("scale", [1, 2])
def test_onnx_torchscript_exporter_matches_torch(scale, tmp_path):
    _onnx_parity(tiny(scale), tmp_path / "m.onnx", dynamo=False)


@pytest.mark.slow  # ~5 s: torch.export tracing
def test_onnx_dynamo_exporter_matches_torch(tmp_path):
    # scale 2 holds every op of scale 1 plus the cubic resize and depth-to-space
    _onnx_parity(tiny(2), tmp_path / "m.onnx", dynamo=True)


@pytest.mark.parametrize("scale", [1, 2])
def test_a_few_steps_beat_the_degraded_input(scale, one_thread):
    torch.manual_seed(0)
    clean = hu_to_window(torch.from_numpy(make_volume((4, 32, 32)).image).float()[:, None])
    noisy = degrade(clean, DegradeConfig(noise="image", image_sigma=40.0, scale=scale),
                    torch.Generator().manual_seed(0))
    model = DnCNNSR(scale=scale, channels=16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = dncnn_loss(model(noisy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    baseline = psnr(bicubic_upsample(noisy, scale).clamp(0, 1), clean).mean().item()
    restored = psnr(model.predict(noisy)["restored"], clean).mean().item()
    assert losses[-1] < 0.5 * losses[0]
    assert restored > baseline + 0.5, (restored, baseline)
