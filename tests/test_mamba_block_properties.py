"""Hypothesis sweep of the Mamba-1 layer's decoding: prefill L tokens, then k decoding
steps (mamba_ssm's Mamba.step), equals one forward over L + k tokens — for random shapes,
W in {2, 3, 4}, dt_rank drawn independently of E / 16, with and without biases and
initial states, L from 1 to long. The strategies are rssm_ref.testing's own."""
import numpy as onp
from hypothesis import given, settings, strategies as st

from rssm_ref.mamba_block import mamba_block, mamba_block_ref, mamba_block_step
from rssm_ref.tolerances import rel_err, TOLERANCES
from rssm_ref.testing import mamba_block_params

TOL = TOLERANCES["prefill_vs_forward"]


@st.composite
def prefill_cases(draw, max_L=64):
    P = draw(mamba_block_params(d=st.integers(1, 5), E=st.integers(1, 6), n=st.integers(1, 4),
                                W=st.integers(2, 4), dt_rank=st.integers(1, 4)))
    E, n = P["A_log"].shape
    W = P["conv1d.weight"].shape[2]
    d = P["in_proj.weight"].shape[1]
    L = draw(st.one_of(st.integers(1, W + 1), st.integers(1, max_L)))
    k = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 3))
    rng = onp.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h = rng.standard_normal((batch, L + k, d))
    states = draw(st.sampled_from([None, "W", "W-1"]))
    cs = None if states is None else rng.standard_normal(
        (batch, E, W if states == "W" else W - 1))
    ss = None if states is None else rng.standard_normal((batch, E, n))
    return P, h, L, k, cs, ss


def _prefill_then_step(P, h, L, k, cs, ss):
    pre = mamba_block(P, h[:, :L], cs, ss)
    c, s, ys = pre["conv_state"], pre["ssm_state"], []
    for j in range(k):
        y, c, s = mamba_block_step(P, h[:, L + j], c, s)
        ys.append(y)
    return onp.concatenate([pre["y"], onp.stack(ys, axis=1)], axis=1), c, s


@settings(max_examples=60, deadline=None, database=None)
@given(prefill_cases())
def test_prefill_then_steps_equals_one_forward(case):
    P, h, L, k, cs, ss = case
    whole = mamba_block(P, h, cs, ss)
    y, c, s = _prefill_then_step(P, h, L, k, cs, ss)
    assert rel_err(y, whole["y"]) <= TOL
    assert rel_err(c, whole["conv_state"]) <= TOL
    assert rel_err(s, whole["ssm_state"]) <= TOL


@settings(max_examples=25, deadline=None, database=None)
@given(prefill_cases(max_L=12))
def test_fast_path_is_the_loop_twin(case):
    """The vectorized layer against its token-by-token _ref twin, from the drawn states."""
    P, h, L, k, cs, ss = case
    ref = mamba_block_ref(P, h, cs, ss)
    fast = mamba_block(P, h, cs, ss)
    for key in ("y", "conv_state", "ssm_state", "delta", "y_ssm"):
        assert rel_err(fast[key], ref[key]) <= TOLERANCES["fast_vs_ref"], key


@settings(max_examples=4, deadline=None, database=None)
@given(prefill_cases(max_L=8), st.integers(4096, 8192))
def test_long_prefill_then_steps(case, L):
    """Long sequences: no drift between the vectorized scan and the token-by-token step."""
    P, h, _, k, cs, ss = case
    h = onp.random.default_rng(L).standard_normal((h.shape[0], L + k, h.shape[2]))
    whole = mamba_block(P, h, cs, ss)
    y, c, s = _prefill_then_step(P, h, L, k, cs, ss)
    assert rel_err(y[:, L:], whole["y"][:, L:]) <= TOL
    assert rel_err(s, whole["ssm_state"]) <= TOL
