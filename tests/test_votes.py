"""votes.vote_seed equals `max(set(row), key=row.count)` row for row, by emulating CPython's set table."""

import warnings

import numpy as np
import pytest
import torch

from clipzs import votes
from clipzs.errors import ClipzsWarning


def expression(rows) -> list[int]:
    """The original experiment's rule, literally."""
    return [max(set(row), key=row.count) for row in np.asarray(rows).tolist()]


@pytest.fixture
def fresh_self_check():
    """Run the once-a-process self-check again in this test, and again afterwards for the tests that follow."""
    votes._emulation_verified.cache_clear()
    yield
    votes._emulation_verified.cache_clear()


def test_the_emulation_holds_on_this_interpreter(fresh_self_check):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert votes._emulation_verified()


@pytest.mark.parametrize("k", range(1, 13))
@pytest.mark.parametrize("classes", [2, 3, 8, 9, 33, 100, 1000, 5000, 2**40])
def test_random_rows_match_the_expression(k, classes):
    rows = np.random.default_rng(1000 * k + classes % 997).integers(0, classes, size=(300, k))
    assert votes.vote_seed(rows).tolist() == expression(rows)
    assert votes._emulated(rows.T.copy()).tolist() == expression(rows)  # every row through the set emulation


@pytest.mark.parametrize(
    ("row", "winner"),
    [
        ([1, 9], 1),  # 9 & 7 == 1: 9 collides with 1 and goes on to slot 6
        ([9, 1], 9),
        ([33, 1], 33),
        ([0, 8, 16, 24], 0),  # a chain of collisions in one slot
        ([24, 16, 8, 0], 24),
        ([7, 6, 5, 4, 3], 3),  # the 5th key grows the table to 32; iteration is now by value
        ([36, 24, 5, 4, 12], 4),  # reinsertion in old slot order puts 4 first (insertion order would put 36)
        ([38, 10, 20, 34, 6, 13, 17], 34),
        ([92, 40, 33], 40),  # ids >= 32: perturb moves the probe
        ([3436, 3944, 4768, 4599], 3944),  # ids >= 1000
        ([9, 1, 1, 9, 4], 9),  # a tie of two votes each
        ([5, 5, 7, 7, 7, 1], 7),  # no tie: the most votes, whatever the order
        (list(range(100, 120)), 100),  # 20 distinct: a table of 128 slots, left to Python
    ],
)
def test_hand_cases(row, winner):
    assert expression([row]) == [winner]
    assert votes.vote_seed(np.array([row])).tolist() == [winner]


def test_a_tensor_of_any_integer_dtype_and_strides():
    """A tensor of per-template predictions (any integer dtype and strides) gives what the rule gives."""
    preds = torch.randint(0, 10, (3000, 5), generator=torch.Generator().manual_seed(0))
    assert votes.vote_seed(preds).tolist() == expression(preds.tolist())
    assert votes.vote_seed(preds.T.contiguous().T.int()).tolist() == expression(preds.tolist())  # strided, int32


def test_rows_are_processed_in_blocks(monkeypatch):
    rows = np.random.default_rng(3).integers(0, 40, size=(1000, 7), dtype=np.int32)
    monkeypatch.setattr(votes, "_BLOCK_ELEMENTS", 50)
    assert votes.vote_seed(rows).tolist() == expression(rows)


def test_a_wrong_emulation_is_caught_warned_once_and_replaced_by_the_expression(monkeypatch, fresh_self_check):
    monkeypatch.setattr(votes, "_emulate", lambda preds, *_: preds[-1])  # the last vote: wrong on most ties
    rows = np.random.default_rng(4).integers(0, 6, size=(2000, 6))
    with pytest.warns(ClipzsWarning, match="set order"):
        assert votes.vote_seed(rows).tolist() == expression(rows)
    assert not votes._emulation_verified()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert votes.vote_seed(rows[::-1]).tolist() == expression(rows[::-1])


def test_shapes_and_values():
    assert votes.vote_seed(np.zeros((0, 3), dtype=np.int64)).shape == (0,)
    for bad in (np.array([1, 2]), np.zeros((2, 0), dtype=np.int64), np.array([[1.0, 2.0]]), np.array([[1, -1]])):
        with pytest.raises(ValueError):
            votes.vote_seed(bad)
