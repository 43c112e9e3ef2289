import pytest
import torch

from liverrt.errors import InputError
from liverrt.models import build, from_config, names
from liverrt.models.unet import UNet


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_unet_has_the_studys_parameter_count():
    assert n_params(build("unet_paper")) == 1_940_817


def test_paper_unet_shapes_and_levels():
    model = build("unet_paper").eval()
    assert [m[0].out_channels for m in model.down] == [16, 32, 64, 128, 256]
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 64, 48))
    assert out.shape == (2, 1, 64, 48)


def test_width_scale_changes_capacity_and_config_round_trips():
    small = build("unet_paper", width_scale=0.5)
    assert [m[0].out_channels for m in small.down] == [8, 16, 32, 64, 128]
    rebuilt = from_config("unet", small.config)
    assert n_params(rebuilt) == n_params(small)


def test_input_not_divisible_by_16_suggests_padded_shape():
    model = build("unet_paper")
    with pytest.raises(ValueError, match=r"pad to \(112, 96\)"):
        model(torch.zeros(1, 1, 100, 90))


def test_unknown_model_lists_known_names():
    with pytest.raises(InputError, match="unet_paper"):
        build("resnet9000")
    assert "unet_paper" in names()


def test_dropout_length_is_checked():
    with pytest.raises(ValueError, match="one per level"):
        UNet(widths=(4, 8), dropout=(0.1,))
