import pytest

from liverrt.data.splits import case_split
from liverrt.errors import InputError


def test_case_split_is_disjoint_complete_and_deterministic():
    ids = [f"case{i}" for i in range(11)]
    train, val = case_split(ids, val_fraction=0.2, seed=3)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(ids)
    assert len(val) == 2
    assert case_split(ids, val_fraction=0.2, seed=3) == (train, val)
    assert any(case_split(ids, val_fraction=0.2, seed=s) != (train, val) for s in range(4, 8))


def test_case_split_needs_two_unique_cases():
    with pytest.raises(InputError):
        case_split(["a"])
    with pytest.raises(InputError, match="unique"):
        case_split(["a", "a", "b"])


def test_kfold_every_case_validates_once_and_folds_are_balanced():
    from liverrt.data.splits import kfold_split

    ids = [f"c{i}" for i in range(11)]
    folds = kfold_split(ids, folds=3, seed=1)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(ids)
    assert sorted(len(f["val"]) for f in folds) == [3, 4, 4]
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 11
    assert kfold_split(ids, folds=3, seed=1) == folds
    with pytest.raises(InputError, match="folds"):
        kfold_split(ids[:2], folds=3)


def test_split_cli_writes_json(tmp_path):
    import json

    from click.testing import CliRunner

    from liverrt.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["data", "synth", "--out", str(tmp_path / "ph"), "--cases", "4", "--size", "48",
                               "--slices", "4"]).exit_code == 0
    r = runner.invoke(cli, ["data", "split", str(tmp_path / "ph"), "--folds", "2", "--out", str(tmp_path / "f.json")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "f.json").read_text())
    assert len(data["folds"]) == 2 and sorted(data["folds"][0]["train"] + data["folds"][0]["val"]) == [
        f"phantom_{i:03d}" for i in range(4)]
