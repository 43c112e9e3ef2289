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
