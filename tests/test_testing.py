"""rssm_ref.testing: strategies valid by construction that reach the hard cases, and
assert_matches_reference as another project's pytest suite would use it."""
import numpy as onp
import pytest
import scipy.signal as ss
from hypothesis import find, given, settings, strategies as st

from rssm_ref import testing as rt
from rssm_ref.oracle import formats


@given(rt.poles(st.integers(1, 8)))
def test_poles_are_stable_and_conjugate_closed(z):
    assert onp.all(onp.abs(z) < 1)
    assert onp.allclose(onp.sort_complex(z), onp.sort_complex(onp.conj(z)))


@given(rt.stable_denominators(st.integers(1, 6)))
def test_denominators_are_monic_and_stable(den):
    assert den[0] == 1.0 and onp.all(onp.isfinite(den))
    # a stable polynomial passes the format's own check (roots strictly inside)
    formats.check_params("lti", {"num": onp.ones((1, 1, den.size)), "den": den[None]})


@given(rt.stable_denominators(st.integers(1, 6), method="reflection"))
def test_reflection_denominators_are_stable(den):
    assert onp.max(onp.abs(onp.roots(den))) < 1 if den.size > 1 else True


def test_hard_cases_are_reachable():
    # slow poles r >= 0.99, repeated roots, and Jordan (defective) state matrices
    find(rt.poles(3), lambda z: onp.max(onp.abs(z)) >= 0.99)
    find(rt.poles(4), lambda z: len(onp.unique(onp.round(z, 12))) < len(z))
    find(rt.ss_arrays(3), lambda s: onp.linalg.matrix_rank(
        s[0] - onp.linalg.eigvals(s[0])[0].real * onp.eye(3), tol=1e-8) == 2
        and onp.allclose(onp.linalg.eigvals(s[0]), onp.linalg.eigvals(s[0])[0], atol=1e-4))


@settings(max_examples=30)
@given(rt.residual_params(), st.data())
def test_residual_params_are_valid_in_the_format(P, data):
    checked, sizes = formats.check_params("residual", P)
    u = data.draw(rt.input_sequences(m=sizes["m"]))
    formats.check_inputs("residual", {"u": u}, sizes)


@settings(max_examples=30)
@given(rt.selective_params())
def test_selective_params_are_valid_in_the_format(P):
    formats.check_params("selective", P)


@settings(max_examples=20)
@given(rt.tf_arrays(p=2, m=3), rt.ss_arrays(m=2, p=2))
def test_lti_arrays_are_valid_in_the_format(tf, sys_):
    formats.check_params("lti", {"num": tf[0], "den": tf[1]})
    formats.check_params("lti", dict(zip("ABCD", sys_)))


@settings(max_examples=10)
@given(rt.transfer_functions(p=2, m=1), rt.state_spaces(m=1, p=2))
def test_lti_objects(tf, sys_):
    assert tf.is_stable() and sys_.is_stable()


# ---------------------------------------------- the test another project writes
def my_fast_lti(num, den, u):
    """Stand-in for a user's float32 kernel."""
    return ss.lfilter(num[0, 0].astype(onp.float32), den[0].astype(onp.float32),
                      u[:, :, 0].astype(onp.float32), axis=1)[:, :, None]


@settings(max_examples=15)
@given(rt.tf_arrays(p=1, m=1), rt.input_sequences(L=st.integers(1, 200)))
def test_a_float32_kernel_matches_the_oracle(tf, u):
    num, den = tf
    rt.assert_matches_reference("lti", {"num": num, "den": den}, {"u": u},
                                {"y": my_fast_lti(num, den, u)}, precision="float32")


def test_assert_matches_reference_raises_with_the_report():
    num, den = onp.array([[[1.0, 0.5]]]), onp.array([[1.0, -0.99]])
    u = onp.random.default_rng(0).standard_normal((1, 100, 1))
    y = my_fast_lti(num, den, u)
    with pytest.raises(AssertionError, match="y .*MISMATCH"):
        rt.assert_matches_reference("lti", {"num": num, "den": den}, {"u": u}, {"y": y})
    with pytest.raises(AssertionError, match="MISMATCH"):
        rt.assert_matches_reference("lti", {"num": num, "den": den}, {"u": u},
                                    {"y": y * onp.float32(1.0001)}, precision="float32")
