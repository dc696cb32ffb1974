"""init: seeded random params and inputs, valid by construction."""
import numpy as onp
import pytest
from hypothesis import given, settings, strategies as st

from rssm_ref.oracle import formats, sample


@pytest.mark.parametrize("model,form", [("lti", "tf"), ("lti", "ss"), ("residual", "tf"),
                                        ("residual", "ss"), ("selective", None)])
@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 4), order=st.integers(1, 6))
def test_init_params_valid_for_every_seed(model, form, seed, m, order):
    kw = {"n": order} if model == "selective" else {"order": order}
    P = sample.init_params(model, seed=seed, form=form, m=m, **kw)
    checked, sizes = formats.check_params(model, P)     # stability included
    assert sizes["m"] == m
    U = sample.init_inputs(model, P, seed=seed, batch=2, L=5)
    formats.check_inputs(model, U, sizes)


def test_seeded_and_deterministic():
    a = sample.init_params("residual", seed=7)
    b = sample.init_params("residual", seed=7)
    c = sample.init_params("residual", seed=8)
    assert all(onp.array_equal(a[k], b[k]) for k in a)
    assert any(not onp.array_equal(a[k], c[k]) for k in a)


@given(st.lists(st.tuples(st.floats(0.0, 0.999), st.floats(0.0, onp.pi)), min_size=1,
                max_size=4), st.integers(0, 2**31 - 1))
def test_realization_has_the_requested_poles(pairs, seed):
    z = []
    for r, th in pairs:
        z += [r * onp.exp(1j * th), r * onp.exp(-1j * th)] if 0.05 < th < onp.pi - 0.05 else [r]
    A, B, C, D = sample.ss_from_poles(onp.random.default_rng(seed), z, m=1, p=1)
    # eigenvalues of a non-normal matrix: compare characteristic polynomials instead
    assert onp.allclose(onp.poly(A), onp.real(onp.poly(z)), atol=1e-12)


def test_jordan_coupling_makes_a_defective_repeated_pole():
    A = sample.realize_poles([0.99, 0.99, 0.99], jordan=True)
    # rank(A - λI) = n - 1: a single Jordan block of size 3
    assert onp.linalg.matrix_rank(A - 0.99 * onp.eye(3)) == 2
    c = 0.9 * onp.exp(0.7j)
    A = sample.realize_poles([c, onp.conj(c), c, onp.conj(c)], jordan=True)
    assert A[0:2, 2:4].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_init_refuses_bad_sizes():
    with pytest.raises(ValueError, match="order: -1"):
        sample.init_params("lti", seed=0, order=-1)
    with pytest.raises(ValueError, match="form: 'ss' given for --model selective"):
        sample.init_params("selective", seed=0, form="ss")
    with pytest.raises(ValueError, match="--length: 0"):
        sample.init_inputs("lti", sample.init_params("lti", seed=0), seed=0, L=0)
