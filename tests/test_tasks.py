"""Tasks (Section 2.1): distributions, trigger counts, answer positions, no leakage."""
import numpy as onp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rssm_ref.training.tasks import (DEFAULT_TOKENS, DEFAULT_TRIGGER, count_occurrences, extended_induction_head,
                            induction_head, make_batch)


@given(seed=st.integers(0, 2**32 - 1), L=st.integers(3, 80), n_tokens=st.integers(2, 10))
def test_induction_structure(seed, L, n_tokens):
    tok, tgt, p = induction_head(onp.random.default_rng(seed), 16, L, n_tokens, return_positions=True)
    trig = n_tokens
    assert tok.shape == (16, L) and tok.dtype == onp.int64
    assert (tok[:, -1] == trig).all()
    assert ((tok == trig).sum(axis=1) == 2).all()                     # exactly twice
    assert (onp.argmax(tok == trig, axis=1) == p).all()                # first trigger at p
    assert (p <= L - 3).all()                                          # answer before the end
    assert (tok[onp.arange(16), p + 1] == tgt).all()
    assert ((tgt >= 0) & (tgt < n_tokens)).all()                       # a content token


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), L=st.integers(9, 120))
def test_extended_structure(seed, L):
    tok, tgt, p = extended_induction_head(onp.random.default_rng(seed), 12, L, return_positions=True)
    k = len(DEFAULT_TRIGGER)
    assert (count_occurrences(tok, DEFAULT_TRIGGER) == 2).all()
    assert (tok[:, -k:] == onp.array(DEFAULT_TRIGGER)).all()
    for row in range(12):
        assert tuple(tok[row, p[row]:p[row] + k]) == DEFAULT_TRIGGER
    assert (p + k <= L - k - 1).all()
    assert (tok[onp.arange(12), p + k] == tgt).all()


def test_count_occurrences_counts_overlaps():
    assert count_occurrences(onp.array([[1, 1, 1, 1]]), (1, 1)).tolist() == [3]
    assert count_occurrences(onp.array([[0, 1, 2, 3, 0, 1, 2, 3]]), (0, 1, 2, 3)).tolist() == [2]


@pytest.mark.parametrize("task", ["induction", "extended"])
def test_no_leakage_targets_and_positions_spread(task):
    """The answer is not at a fixed position and targets are close to uniform."""
    tok, tgt = make_batch(task, onp.random.default_rng(0), 8000, 32)
    n = DEFAULT_TOKENS[task]          # 7 answers (induction: 8 tokens with the trigger), 8
    counts = onp.bincount(tgt, minlength=n) / len(tgt)
    assert len(counts) == n and onp.all(onp.abs(counts - 1 / n) < 0.02)
    if task == "induction":
        _, _, p = induction_head(onp.random.default_rng(1), 8000, 32, return_positions=True)
    else:
        _, _, p = extended_induction_head(onp.random.default_rng(1), 8000, 32, return_positions=True)
    assert len(onp.unique(p)) > 10
    # the final token(s) carry no information on the answer
    assert len(onp.unique(tok[:, -1])) == 1


@pytest.mark.parametrize("task", ["induction", "extended"])
def test_seeded_repeatable(task):
    a = make_batch(task, onp.random.default_rng(5), 50, 40)
    b = make_batch(task, onp.random.default_rng(5), 50, 40)
    assert all((x == y).all() for x, y in zip(a, b))


def test_bad_arguments():
    rng = onp.random.default_rng(0)
    with pytest.raises(ValueError, match="L"):
        induction_head(rng, 4, 2)
    with pytest.raises(ValueError, match="L"):
        extended_induction_head(rng, 4, 8)
    with pytest.raises(ValueError, match="batch"):
        induction_head(rng, 0, 16)
    with pytest.raises(ValueError, match="trigger"):
        extended_induction_head(rng, 4, 16, trigger=(0, 9, 1, 2))
    with pytest.raises(ValueError, match="task"):
        make_batch("copying", rng, 4, 16)
