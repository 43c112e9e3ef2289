import numpy as np
import pytest
import torch
from liverrt_test_helpers import make_volume, tiny_unet

from liverrt.artifacts.checkpoint import average_checkpoints, read_checkpoint, save_checkpoint
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError, InputError
from liverrt.models import load_model
from liverrt.training.augment import AugmentConfig, augment_batch
from liverrt.training.losses import dice_bce_loss, soft_dice_loss
from liverrt.training.unet import TrainConfig, train_unet


def test_checkpoint_round_trip_is_weights_only(tmp_path, tiny_spec):
    model = tiny_unet()
    path = save_checkpoint(tmp_path / "m.pt", model, model_name="unet_paper", spec=tiny_spec,
                           metrics={"val_mask_iou": 0.9}, split={"train": ["a"], "val": ["b"]})
    raw = torch.load(path, weights_only=True)  # must not need pickle
    assert raw["kind"] == "unet" and raw["split"] == {"train": ["a"], "val": ["b"]}
    loaded, spec, ckpt = load_model(path)
    assert spec == tiny_spec and ckpt["metrics"]["val_mask_iou"] == 0.9
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_wrong_kind_and_foreign_files_are_refused(tmp_path, tiny_checkpoint):
    with pytest.raises(ArtifactError, match="expected a 'maskrcnn'"):
        read_checkpoint(tiny_checkpoint, expect_kind="maskrcnn")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a liverrt checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="Cannot load"):
        read_checkpoint(tmp_path / "junk.pt")



def test_averaged_checkpoints_hold_the_mean_of_every_weight(tmp_path, tiny_spec):
    paths = []
    for seed in range(3):
        model = tiny_unet(seed)
        model.train()(torch.rand(2, 1, 32, 32) + seed)  # BatchNorm statistics and counters differ
        paths.append(save_checkpoint(tmp_path / f"s{seed}.pt", model, model_name="unet_paper", spec=tiny_spec,
                                     metrics={"epoch": seed + 1}))
    out = average_checkpoints(paths, tmp_path / "soup.pt")
    states = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    soup = read_checkpoint(out)
    for k, v in soup["state_dict"].items():
        if v.is_floating_point():
            expected = (states[0][k] + states[1][k] + states[2][k]) / 3
            assert torch.allclose(v, expected, atol=1e-6), k
        else:
            assert torch.equal(v, states[0][k]), k
    assert [a["metrics"]["epoch"] for a in soup["averaged_from"]] == [1, 2, 3] and soup["metrics"] == {}
    load_model(out)  # a checkpoint like any other


def test_averaging_refuses_other_networks_and_a_single_checkpoint(tmp_path, tiny_spec):
    a = save_checkpoint(tmp_path / "a.pt", tiny_unet(0), model_name="unet_paper", spec=tiny_spec)
    from liverrt.models.unet import UNet

    wide = save_checkpoint(tmp_path / "w.pt", UNet(widths=(4, 8, 32), dropout=(0.0,) * 5), model_name="unet_paper",
                           spec=tiny_spec)
    with pytest.raises(InputError, match="model_config"):
        average_checkpoints([a, wide], tmp_path / "x.pt")
    other_spec = save_checkpoint(tmp_path / "b.pt", tiny_unet(1), model_name="unet_paper",
                                 spec=PreprocessSpec(size=tiny_spec.size * 2))
    with pytest.raises(InputError, match="preprocess"):
        average_checkpoints([a, other_spec], tmp_path / "x.pt")
    with pytest.raises(InputError, match="at least two"):
        average_checkpoints([a], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()

def test_pickled_objects_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"format": "liverrt.checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pt")


def test_losses_behave():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good = (target * 20 - 10)
    bad = -good
    assert soft_dice_loss(good, target) < 0.01 < soft_dice_loss(bad, target)
    assert dice_bce_loss(good, target) < dice_bce_loss(bad, target)


def test_augment_keeps_image_and_mask_aligned():
    x = torch.zeros(16, 1, 32, 32)
    x[:, :, 8:20, 6:16] = 1.0
    y = x.clone()
    cfg = AugmentConfig(flip_p=0.5, brightness=0, contrast=0, gamma=0)
    xa, ya = augment_batch(x, y, cfg, torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and set(torch.unique(ya).tolist()) <= {0.0, 1.0}
    agree = ((xa >= 0.5) == (ya >= 0.5)).float().mean()
    assert agree > 0.99
    assert not torch.equal(ya, y)  # something moved
    same = augment_batch(x, y, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(same[0], xa)  # reproducible


def test_disabled_augmentation_is_identity():
    x, y = torch.rand(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    xa, ya = augment_batch(x, y, AugmentConfig(enabled=False), torch.Generator())
    assert xa is x and ya is y


def _small_cfg(**kw):
    return TrainConfig(epochs=2, batch_size=4, steps_per_epoch=3, width_scale=0.25, seed=7, **kw)


def test_training_writes_best_checkpoint_with_everything(tmp_path):
    vols = [make_volume(seed=i, case_id=f"c{i}") for i in range(4)]
    spec = PreprocessSpec(size=32)
    result = train_unet(vols, tmp_path / "run", spec=spec, config=_small_cfg())
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    header = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0]
    assert header.split(",")[:4] == ["epoch", "loss", "lr", "val_mask_iou"]
    assert not set(result.split["train"]) & set(result.split["val"])
    model, spec2, ckpt = load_model(result.best_checkpoint)
    assert spec2 == spec
    assert set(ckpt["metrics"]) >= {"epoch", "val_mask_iou", "val_dice"}
    assert ckpt["split"] == result.split and ckpt["train_config"]["seed"] == 7
    assert len(result.history) == 2


def test_training_is_reproducible_with_a_seed(tmp_path):
    vols = [make_volume(seed=i, case_id=f"c{i}") for i in range(3)]
    spec = PreprocessSpec(size=32)
    a = train_unet(vols, tmp_path / "a", spec=spec, config=_small_cfg())
    b = train_unet(vols, tmp_path / "b", spec=spec, config=_small_cfg())
    sa, sb = (torch.load(r.last_checkpoint, weights_only=True)["state_dict"] for r in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_training_learns_a_simple_liver(tmp_path):
    vols = [make_volume(shape=(8, 48, 48), seed=i, case_id=f"c{i}") for i in range(4)]
    cfg = TrainConfig(epochs=10, batch_size=8, steps_per_epoch=12, width_scale=0.5, seed=0, lr=3e-3)
    result = train_unet(vols, tmp_path / "run", spec=PreprocessSpec(size=48), config=cfg)
    assert result.best_metrics["val_mask_iou"] > 0.7, result.history


def test_unlabelled_volume_cannot_train(tmp_path):
    vols = [make_volume(case_id="a"), make_volume(case_id="b").with_mask(None)]
    with pytest.raises(InputError, match="no liver mask"):
        train_unet(vols, tmp_path, spec=PreprocessSpec(size=32), config=_small_cfg(),
                   val_volumes=[make_volume(case_id="v")])


def test_overlapping_train_and_val_cases_are_refused(tmp_path):
    v = make_volume(case_id="same")
    with pytest.raises(InputError, match="both training and validation"):
        train_unet([v], tmp_path, spec=PreprocessSpec(size=32), config=_small_cfg(), val_volumes=[v])
    assert np.all(v.mask == make_volume(case_id="same").mask)


def test_cosine_schedule_warms_up_then_decays():
    from liverrt.training.unet import lr_factor

    f = lr_factor(TrainConfig(warmup_steps=10, schedule="cosine"), 200)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(105) == pytest.approx(0.525, abs=0.01)
    assert f(199) == pytest.approx(0.05, abs=1e-3)
    assert lr_factor(TrainConfig(schedule="constant", warmup_steps=0), 100)(50) == 1.0
    with pytest.raises(InputError):
        lr_factor(TrainConfig(schedule="step"), 10)


def test_a_dataset_without_any_liver_is_refused(tmp_path):
    vols = [make_volume(case_id=f"c{i}").with_mask(np.zeros((6, 48, 40), bool)) for i in range(2)]
    with pytest.raises(InputError, match="no liver in any slice"):
        train_unet(vols[:1], tmp_path, spec=PreprocessSpec(size=32), config=_small_cfg(), val_volumes=vols[1:])
    assert not (tmp_path / "last.pt").exists()
