"""Tests of rssm_ref.convolution: FFT routes against the recurrence (scipy.signal.lfilter,
rssm_ref.recurrence), their ``_ref`` loops, a long-double recursion, and LTI invariants.

Where systems are drawn at random, the comparison with the float64 recursion must be
well posed: lfilter's own rounding error grows like eps * ||1/a||_1, measured against a
long-double recursion at 7e-13 (L=4096) and 1.4e-12 (L=16384) for a double pole at
0.999, 8e-12 for a triple pole at 0.99, 2e-10 for poles 0.997/0.998/0.999 -- beyond
TOLERANCES["recurrent_vs_fft"] whatever the FFT route does. ``lfilter_systems`` therefore
draws by construction: at most one slow pole or conjugate pair (|p| in [0.99, 0.999]),
repeated once only at |p| <= 0.99, plus any number of (repeated) poles with |p| <= 0.9.
The harder clusters are checked against the long-double recursion instead
(``test_clustered_poles_against_long_double``), where the FFT route is the *more*
accurate one.
"""
import numpy as onp
import pytest
import scipy.signal as ssig
from autograd.test_util import check_grads
from hypothesis import given, settings, strategies as st

from rssm_ref import convolution as cv
from rssm_ref.kernels.convolution import even_fast_len
from rssm_ref.convolution import (
    fft_conv, fft_conv_ref, ss_fft_filter, ss_fft_filter_ref, tf_fft_filter,
    tf_fft_filter_ref, tf_kernel, tf_kernel_aliased, tf_kernel_aliased_ref, tf_kernel_ref)
from rssm_ref.tolerances import TOLERANCES, assert_close, rel_err



def grads_ok(f, *args):
    """check_grads in every argument (reverse mode, order 1; autograd's finite-difference
    step is 1e-6 = TOLERANCES["check_grads_eps"])."""
    assert TOLERANCES["check_grads_eps"] == 1e-6
    onp.random.seed(0)                    # check_vjp draws its random directions from here
    check_grads(f, tuple(range(len(args))), modes=["rev"], order=1)(*args)


# ------------------------------------------------------------------------ helpers
def den_from_poles(poles):
    """Real monic polynomial (descending powers of z) from conjugate-closed poles."""
    return onp.real(onp.poly(onp.asarray(poles, dtype=complex))) if len(poles) else onp.ones(1)


def lfilter_mimo(num, den, u):
    """Recurrent ground truth: y_i = sum_j lfilter(num[i, j], den[i], u_j)."""
    p, m, _ = num.shape
    return onp.stack([sum(ssig.lfilter(num[i, j], den[i], u[:, :, j], axis=1) for j in range(m))
                      for i in range(p)], axis=-1)


def long_double_filter(b, a, x):
    """SISO difference equation in extended precision (x87 long double, eps 1.1e-19)."""
    LD = onp.longdouble
    b, a = onp.asarray(b, LD) / LD(a[0]), onp.asarray(a, LD) / LD(a[0])
    x, n = onp.asarray(x, LD), len(a) - 1
    y = onp.zeros(len(x), LD)
    for t in range(len(x)):
        acc = LD(0)
        for i in range(min(t, n) + 1):
            acc += b[i] * x[t - i] - (a[i] * y[t - i] if i else LD(0))
        y[t] = acc
    return y


KAPPA_MAX = 2e4   # ||1/a||_1 above which lfilter's own error nears 1e-12 (see module doc)


def kappa(a):
    """||1/a||_1, the l1 norm of the impulse response of 1/a(q): the error gain of the
    recursion. Measured lfilter errors: 1e-13 at 1e4, 8e-13 at 4e4, 1e-12 at 1e5."""
    r = max(onp.abs(onp.roots(a))) if len(a) > 1 else 0.0
    N = int(40 / (1 - r)) + 200
    return float(onp.sum(onp.abs(ssig.lfilter([1.0], a, onp.r_[1.0, onp.zeros(N - 1)]))))


@st.composite
def pole_sets(draw, order):
    """Conjugate-closed stable poles r e^{i theta} on which float64 lfilter is accurate.

    At most one slow component: a real pole or a pair with r in [0.99, 0.999] (the hard
    radii 0.99, 0.995, 0.999 drawn on purpose, pair angles in [0.05, pi - 0.05]); a real
    slow pole may be doubled when r <= 0.99. The rest has r <= 0.9 and may repeat
    (multiple roots). By construction ||1/a||_1 <= KAPPA_MAX: the fast poles are pulled
    towards 0 (x 0.7) until it holds, which always ends (the slow part alone is < 1.3e4).
    """
    slow, fast = [], []
    if order >= 1 and draw(st.booleans()):
        r = draw(st.one_of(st.sampled_from([0.99, 0.995, 0.999]), st.floats(0.99, 0.999)))
        if order >= 2 and draw(st.booleans()):
            z = r * onp.exp(1j * draw(st.floats(0.05, onp.pi - 0.05)))
            slow = [z, onp.conj(z)]
        else:
            slow = [r * draw(st.sampled_from([1.0, -1.0])) + 0j]
            if r <= 0.99 and order >= 2 and draw(st.booleans()):
                slow = slow * 2                                  # a double slow pole
    while len(slow) + len(fast) < order:
        room = order - len(slow) - len(fast)
        if fast and draw(st.integers(0, 2)) == 0:                # repeat the previous fast pole
            last = fast[-1]
            if last.imag != 0 and room >= 2:
                fast += [onp.conj(last), last]
                continue
            if last.imag == 0:
                fast.append(last)
                continue
        r = draw(st.floats(0.0, 0.9))
        if room >= 2 and draw(st.booleans()):
            z = r * onp.exp(1j * draw(st.floats(0.05, 3.1)))
            fast += [z, onp.conj(z)]
        else:
            fast.append(r * draw(st.sampled_from([1.0, -1.0])) + 0j)
    while kappa(den_from_poles(slow + fast)) > KAPPA_MAX:
        fast = [0.7 * z for z in fast]
    return slow + fast


@st.composite
def lfilter_systems(draw, max_io=3, max_order=4):
    """(num (p, m, k), den (p, k)) with every row's poles from ``pole_sets``."""
    p, m = draw(st.integers(1, max_io)), draw(st.integers(1, max_io))
    order = draw(st.integers(0, max_order))
    den = onp.stack([den_from_poles(draw(pole_sets(order))) if order else onp.ones(1)
                     for _ in range(p)])
    # den[:, 0] need not be 1; powers of two here because lfilter divides by a0 in float64,
    # which rounds the coefficients (1.2e-12 at a0 = 3 for kappa 2e4): a0 = 3 is checked
    # against long double in test_unnormalized_denominator_against_long_double
    den = den * draw(st.sampled_from([1.0, 0.5, 4.0]))
    rng = onp.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.standard_normal((p, m, order + 1)), den


def inputs(seed, batch, L, m):
    return onp.random.default_rng(seed).standard_normal((batch, L, m))


def modal_ss(poles, m, p, seed):
    """Real block-diagonal (normal) A with the given conjugate-closed poles, random B, C, D."""
    rng = onp.random.default_rng(seed)
    blocks, i = [], 0
    poles = list(poles)
    while i < len(poles):
        z = poles[i]
        if abs(z.imag) > 0:
            blocks.append(onp.array([[z.real, z.imag], [-z.imag, z.real]]))
            i += 2
        else:
            blocks.append(onp.array([[z.real]]))
            i += 1
    n = sum(b.shape[0] for b in blocks)
    A = onp.zeros((n, n))
    k = 0
    for blk in blocks:
        A[k:k + blk.shape[0], k:k + blk.shape[0]] = blk
        k += blk.shape[0]
    return A, rng.standard_normal((n, m)), rng.standard_normal((p, n)), rng.standard_normal((p, m))


SYSTEMS = {
    # name: (list of pole sets, one per output row)
    "single 0.999": [[0.999]],
    "pole 0.999 + pair 0.99 + real": [[0.999, 0.99 * onp.exp(1j), 0.99 * onp.exp(-1j), -0.5]],
    "double 0.99": [[0.99, 0.99]],
    "MIMO rows 0.999 / pair 0.995": [[0.999, 0.5], [0.995 * onp.exp(2j), 0.995 * onp.exp(-2j)]],
    "FIR (poles at 0)": [[0.0, 0.0]],
}


def system(name, m=2, seed=0):
    rows = SYSTEMS[name]
    den = onp.stack([den_from_poles(r) for r in rows]) * 2.0
    num = onp.random.default_rng(seed).standard_normal((len(rows), m, den.shape[1]))
    return num, den


# -------------------------------------------------------------- fft_conv (C1)
@pytest.mark.parametrize("L, Lh, p, m", [(1, 1, 1, 1), (5, 5, 2, 3), (7, 3, 1, 2), (6, 9, 3, 1),
                                         (33, 33, 2, 2)])
def test_fft_conv_matches_direct_sum(L, Lh, p, m):
    rng = onp.random.default_rng(L * 100 + Lh)
    h, u = rng.standard_normal((Lh, p, m)), rng.standard_normal((2, L, m))
    assert_close(fft_conv(h, u), fft_conv_ref(h, u), "fast_vs_ref", f"L={L} Lh={Lh}")


def test_fft_conv_small_example_by_hand():
    h = onp.array([1.0, 2.0]).reshape(2, 1, 1)
    u = onp.array([1.0, 1.0, 1.0]).reshape(1, 3, 1)
    onp.testing.assert_allclose(fft_conv(h, u)[0, :, 0], [1.0, 3.0, 3.0], rtol=0, atol=1e-15)


def test_fft_conv_agrees_with_numpy_convolve_siso():
    rng = onp.random.default_rng(1)
    h, u = rng.standard_normal(100), rng.standard_normal(257)
    y = fft_conv(h.reshape(-1, 1, 1), u.reshape(1, -1, 1))[0, :, 0]
    assert_close(y, onp.convolve(h, u)[:257], "fast_vs_ref")


def _smooth(c):
    for q in (2, 3, 5):
        while c % q == 0:
            c //= q
    return c == 1


def test_even_fast_len_is_the_smallest_even_5_smooth_length():
    for n in list(range(1, 200)) + [8191, 65535, 131071]:
        K = even_fast_len(n)
        assert K >= n and K % 2 == 0 and _smooth(K)
        assert not any(c % 2 == 0 and _smooth(c) for c in range(max(n, 2), K))


# ----------------------------------------------------------- transfer-function kernels
@pytest.mark.parametrize("name", list(SYSTEMS))
@pytest.mark.parametrize("L", [1, 2, 3, 16, 201])
def test_tf_kernel_matches_difference_equation(name, L):
    num, den = system(name)
    assert_close(tf_kernel(num, den, L), tf_kernel_ref(num, den, L), "fast_vs_ref", f"{name} L={L}")


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_tf_kernel_matches_scipy_dimpulse(name):
    num, den = system(name, m=2)
    L = 300
    h = tf_kernel(num, den, L)
    for i in range(num.shape[0]):
        for j in range(num.shape[1]):
            _, (ref,) = ssig.dimpulse((num[i, j], den[i], 1), n=L)
            assert_close(h[:, i, j], ref[:, 0], "scipy_agreement", f"{name} ({i},{j})")


def test_tf_kernel_known_closed_form():
    # 1 / (1 - r q)^2 with r = 1 - 2^-10 (coefficients exact in float64): h[t] = (t + 1) r^t
    L, r = 5000, 1.0 - 2.0 ** -10
    h = tf_kernel([[[1.0, 0.0, 0.0]]], [[1.0, -2 * r, r * r]], L)[:, 0, 0]
    t = onp.arange(L)
    assert_close(h, (t + 1) * r ** t, "fast_vs_ref")


@settings(max_examples=40)
@given(lfilter_systems(), st.integers(1, 300))
def test_tf_kernel_matches_ref_property(sys_, L):
    num, den = sys_
    assert_close(tf_kernel(num, den, L), tf_kernel_ref(num, den, L), "fast_vs_ref")


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 8, 17, 64])
def test_tf_kernel_aliased_is_the_folded_impulse_response(K):
    num, den = system("double 0.99", m=2)         # (a pole 0.999: test_correction_removes...)
    assert_close(tf_kernel_aliased(num, den, K), tf_kernel_aliased_ref(num, den, K), "fast_vs_ref",
                 f"K={K}")


@pytest.mark.parametrize("K", [6, 8, 64, 256])
def test_tf_kernel_aliased_equals_literal_rfft_ratio(K):
    # the paper's formula irfft(rfft(num, K) / rfft(den, K)) for K >= k, where the plain
    # monomial evaluation is accurate (poles well inside the unit circle)
    rng = onp.random.default_rng(K)
    den = onp.stack([den_from_poles([0.8, 0.5 * onp.exp(1j), 0.5 * onp.exp(-1j)]),
                     den_from_poles([-0.7, 0.3, 0.6])])
    num = rng.standard_normal((2, 3, 4))
    lit = onp.fft.irfft(onp.fft.rfft(num, K, axis=-1) / onp.fft.rfft(den, K, axis=-1)[:, None, :],
                        K, axis=-1)
    assert_close(tf_kernel_aliased(num, den, K), onp.moveaxis(lit, -1, 0), "fast_vs_ref")


def test_correction_removes_exactly_the_aliasing():
    # uncorrected - corrected route = (h_K - h) * u  (K = L rounded to even), exactly
    num, den = system("single 0.999", m=1)
    L = 257
    u = inputs(3, 2, L, 1)
    K = L + L % 2
    alias = tf_kernel_aliased_ref(num, den, K)[:L] - tf_kernel_ref(num, den, L)
    diff = tf_fft_filter(num, den, u, corrected=False) - tf_fft_filter(num, den, u)
    assert_close(diff, fft_conv_ref(alias, u), "fast_vs_ref")
    # and what the correction buys: 0.999^258 ~ 0.77, the uncorrected route is far off
    assert rel_err(tf_fft_filter(num, den, u, corrected=False), lfilter_mimo(num, den, u)) > 0.1


# --------------------------------------------------------- routes vs the recurrence
@settings(max_examples=60)
@given(lfilter_systems(), st.integers(1, 600), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_tf_fft_filter_equals_lfilter(sys_, L, batch, seed):
    num, den = sys_
    u = inputs(seed, batch, L, num.shape[1])
    assert_close(tf_fft_filter(num, den, u), lfilter_mimo(num, den, u), "recurrent_vs_fft")


@settings(max_examples=40)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 400),
       st.integers(0, 2**32 - 1), st.data())
def test_ss_fft_filter_equals_recurrence(n, m, p, L, seed, data):
    poles = data.draw(pole_sets(n))
    A, B, C, D = modal_ss(poles, m, p, seed)
    u = inputs(seed + 1, 2, L, m)
    from rssm_ref.recurrence import ss_filter
    assert_close(ss_fft_filter(A, B, C, D, u), ss_filter(A, B, C, D, u), "recurrent_vs_fft")


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_routes_agree_with_recurrence_modules(name):
    from rssm_ref.lti import tf2ss
    from rssm_ref.recurrence import tf_filter
    num, den = system(name, m=2)
    u = inputs(7, 3, 1001, 2)
    y = tf_filter(num, den, u)
    assert_close(tf_fft_filter(num, den, u), y, "recurrent_vs_fft", name)
    if name != "double 0.99":  # companion powers of a double pole: see the report
        assert_close(ss_fft_filter(*tf2ss(num, den), u), y, "recurrent_vs_fft", name)


@pytest.mark.parametrize("L", [1, 2, 3, 5, 8, 9])
def test_small_and_odd_lengths(L):
    num, den = system("MIMO rows 0.999 / pair 0.995", m=3)
    u = inputs(L, 2, L, 3)
    ref = tf_fft_filter_ref(num, den, u)
    assert_close(tf_fft_filter(num, den, u), ref, "fast_vs_ref", f"L={L}")
    assert_close(lfilter_mimo(num, den, u), ref, "scipy_agreement", f"L={L}")


def test_fast_paths_match_their_ref_loops():
    num, den = system("pole 0.999 + pair 0.99 + real", m=2)
    u = inputs(11, 2, 40, 2)
    assert_close(tf_fft_filter(num, den, u), tf_fft_filter_ref(num, den, u), "fast_vs_ref")
    A, B, C, D = modal_ss([0.999, 0.9 * onp.exp(1j), 0.9 * onp.exp(-1j)], 2, 3, 5)
    assert_close(ss_fft_filter(A, B, C, D, u), ss_fft_filter_ref(A, B, C, D, u), "fast_vs_ref")


@pytest.mark.parametrize("poles", [
    [0.999, 0.999],                                   # double pole: lfilter itself ~1e-12
    [0.99, 0.99, 0.99],                               # triple pole: lfilter ~1e-11
    [0.999, 0.999 * onp.exp(0.01j), 0.999 * onp.exp(-0.01j)],
], ids=["double-0.999", "triple-0.99", "cluster-0.999"])
def test_clustered_poles_against_long_double(poles):
    # beyond lfilter's accuracy the corrected route is still exact to rounding: compare
    # with the same difference equation run in long double
    L = 2048
    b = onp.random.default_rng(0).standard_normal(len(poles) + 1)
    a = den_from_poles(poles)
    u = inputs(1, 1, L, 1)
    truth = onp.asarray(long_double_filter(b, a, u[0, :, 0]), dtype=float)
    assert_close(tf_fft_filter(b[None, None], a[None], u)[0, :, 0], truth, "recurrent_vs_fft")


def test_unnormalized_denominator_against_long_double():
    # den[:, 0] = 3: the route works with den as given (no rounding division by a0)
    L = 336
    a = 3.0 * den_from_poles([0.99, 0.99, 0.2843 + 0.0192j, 0.2843 - 0.0192j])
    b = onp.random.default_rng(2).standard_normal(5)
    u = inputs(2, 1, L, 1)
    truth = onp.asarray(long_double_filter(b, a, u[0, :, 0]), dtype=float)
    assert_close(tf_fft_filter(b[None, None], a[None], u)[0, :, 0], truth, "recurrent_vs_fft")
    imp = onp.r_[1.0, onp.zeros(L - 1)]
    assert_close(tf_kernel(b[None, None], a[None], L)[:, 0, 0],
                 onp.asarray(long_double_filter(b, a, imp), dtype=float), "recurrent_vs_fft")


@pytest.mark.parametrize("L", [4096, pytest.param(65536, marks=pytest.mark.slow)])
def test_pole_0999_long_sequences(L):
    num, den = system("pole 0.999 + pair 0.99 + real", m=2)
    num2, den2 = system("MIMO rows 0.999 / pair 0.995", m=2)
    from rssm_ref.lti import tf2ss
    for nm, dn in [(num, den), (num2, den2)]:
        u = inputs(L, 2, L, 2)
        y = lfilter_mimo(nm, dn, u)
        assert_close(tf_fft_filter(nm, dn, u), y, "recurrent_vs_fft", f"TF route L={L}")
        assert_close(ss_fft_filter(*tf2ss(nm, dn), u), y, "recurrent_vs_fft", f"Markov route L={L}")


# ---------------------------------------------------------------- LTI invariants
@settings(max_examples=30)
@given(lfilter_systems(max_io=2), st.integers(2, 200), st.floats(-3, 3), st.floats(-3, 3),
       st.integers(0, 2**32 - 1))
def test_linearity(sys_, L, alpha, beta, seed):
    num, den = sys_
    u1, u2 = inputs(seed, 2, L, num.shape[1]), inputs(seed + 1, 2, L, num.shape[1])
    lhs = tf_fft_filter(num, den, alpha * u1 + beta * u2)
    rhs = alpha * tf_fft_filter(num, den, u1) + beta * tf_fft_filter(num, den, u2)
    scale = max(onp.max(onp.abs(alpha * tf_fft_filter(num, den, u1))),
                onp.max(onp.abs(beta * tf_fft_filter(num, den, u2))), 1e-300)
    assert onp.max(onp.abs(lhs - rhs)) <= TOLERANCES["fast_vs_ref"] * scale


@settings(max_examples=30)
@given(lfilter_systems(max_io=2), st.integers(2, 200), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_time_invariance(sys_, L, shift, seed):
    num, den = sys_
    shift = min(shift, L - 1)
    u = inputs(seed, 1, L, num.shape[1])
    delayed = onp.concatenate([onp.zeros((1, shift, num.shape[1])), u[:, :L - shift]], axis=1)
    y, yd = tf_fft_filter(num, den, u), tf_fft_filter(num, den, delayed)
    assert_close(yd[:, shift:], y[:, :L - shift], "fast_vs_ref")
    assert onp.max(onp.abs(yd[:, :shift])) <= TOLERANCES["fast_vs_ref"] * max(onp.max(onp.abs(y)), 1e-300)


@settings(max_examples=30)
@given(lfilter_systems(max_io=2), st.integers(2, 200), st.data())
def test_causality(sys_, L, data):
    num, den = sys_
    t0 = data.draw(st.integers(1, L - 1))
    u = inputs(data.draw(st.integers(0, 2**32 - 1)), 1, L, num.shape[1])
    v = u.copy()
    v[:, t0:] = 10 * onp.random.default_rng(0).standard_normal(v[:, t0:].shape)  # change the future
    y, yv = tf_fft_filter(num, den, u), tf_fft_filter(num, den, v)
    # the past moves only by FFT rounding (relative to the size of the outputs involved)
    scale = max(onp.max(onp.abs(y)), onp.max(onp.abs(yv)), 1e-300)
    assert onp.max(onp.abs(y[:, :t0] - yv[:, :t0])) <= TOLERANCES["fast_vs_ref"] * scale


# ---------------------------------------------------------------------- gradients
def _small_tf():
    num, den = system("pole 0.999 + pair 0.99 + real", m=2, seed=4)
    return num, den


@pytest.mark.parametrize("L", [1, 4, 7])
def test_grad_fft_conv(L):
    rng = onp.random.default_rng(L)
    grads_ok(fft_conv, rng.standard_normal((L, 2, 3)), rng.standard_normal((2, L, 3)))


@pytest.mark.parametrize("corrected", [True, False])
@pytest.mark.parametrize("L", [1, 4, 7])
def test_grad_tf_fft_filter(L, corrected):
    num, den = _small_tf()
    den = onp.concatenate([den, 0.5 * den], axis=0)
    num = onp.concatenate([num, num[::-1]], axis=0)
    u = inputs(L, 2, L, 2)
    grads_ok(lambda n_, d_, u_: tf_fft_filter(n_, d_, u_, corrected=corrected), num, den, u)


@pytest.mark.parametrize("L", [1, 5, 8])
def test_grad_tf_kernels(L):
    num, den = _small_tf()
    grads_ok(lambda n_, d_: tf_kernel(n_, d_, L), num, den)
    grads_ok(lambda n_, d_: tf_kernel_aliased(n_, d_, L), num, den)


def test_grad_tf_fft_filter_repeated_pole_and_static_gain():
    u = inputs(0, 1, 6, 1)
    grads_ok(lambda n_, d_: tf_fft_filter(n_, d_, u),
             onp.array([[[0.3, -1.0, 2.0]]]), onp.array([[1.0, -1.98, 0.9801]]))
    grads_ok(lambda n_, d_: tf_fft_filter(n_, d_, u), onp.array([[[1.5]]]), onp.array([[2.0]]))


@pytest.mark.parametrize("L", [1, 3, 6])
def test_grad_ss_fft_filter(L):
    A, B, C, D = modal_ss([0.9, 0.5 * onp.exp(1j), 0.5 * onp.exp(-1j)], 2, 2, L)
    A = A + 0.05 * onp.random.default_rng(L).standard_normal(A.shape)   # not normal
    grads_ok(ss_fft_filter, A, B, C, D, inputs(L, 2, L, 2))


# ---------------------------------------------------------------------- bad input
GOOD_NUM, GOOD_DEN = onp.ones((1, 1, 2)), onp.array([[1.0, -0.5]])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: tf_fft_filter(GOOD_NUM, GOOD_DEN, onp.ones((4, 1))), ValueError, "u: expected 3 dimensions"),
    (lambda: tf_fft_filter(GOOD_NUM, GOOD_DEN, onp.ones((1, 4, 2))), ValueError, r"u: expected shape \(batch, L, 1\)"),
    (lambda: tf_fft_filter(GOOD_NUM, GOOD_DEN, onp.ones((1, 0, 1))), ValueError, "u: .* no time steps"),
    (lambda: tf_fft_filter(GOOD_NUM, GOOD_DEN, onp.full((1, 2, 1), onp.nan)), ValueError, "u: contains NaN"),
    (lambda: tf_fft_filter(GOOD_NUM, [[1.0, -0.5, 0.1]], onp.ones((1, 2, 1))), ValueError, r"den: expected shape \(1, 2\)"),
    (lambda: tf_fft_filter(GOOD_NUM, [[1.0, -1.5]], onp.ones((1, 2, 1))), ValueError, "den: row 0 has a pole of modulus 1.5"),
    (lambda: tf_fft_filter(GOOD_NUM, [[0.0, 1.0]], onp.ones((1, 2, 1))), ValueError, "den: row 0 has a zero leading"),
    (lambda: tf_fft_filter(GOOD_NUM, GOOD_DEN, onp.ones((1, 2, 1)), corrected="yes"), TypeError, "corrected"),
    (lambda: tf_fft_filter(GOOD_NUM + 0j, GOOD_DEN, onp.ones((1, 2, 1))), TypeError, "num: complex"),
    (lambda: tf_kernel(GOOD_NUM, GOOD_DEN, 0), ValueError, "L: expected an integer >= 1, got 0"),
    (lambda: tf_kernel(GOOD_NUM, GOOD_DEN, 2.0), TypeError, "L: expected an int, got float"),
    (lambda: tf_kernel_aliased(GOOD_NUM, GOOD_DEN, True), TypeError, "K: expected an int, got bool"),
    (lambda: tf_kernel_aliased(onp.ones((1, 2)), GOOD_DEN, 4), ValueError, "num: expected 3 dimensions"),
    (lambda: fft_conv(onp.ones((2, 1, 3)), onp.ones((1, 4, 2))), ValueError, r"u: expected shape \(batch, L, 3\)"),
    (lambda: fft_conv(onp.ones((0, 1, 1)), onp.ones((1, 4, 1))), ValueError, "h: .* no samples"),
    (lambda: ss_fft_filter(onp.eye(2), onp.ones((3, 1)), onp.ones((1, 2)), onp.ones((1, 1)),
                           onp.ones((1, 4, 1))), ValueError, r"B: expected shape \(2, m\)"),
    (lambda: ss_fft_filter(onp.eye(2), onp.ones((2, 1)), onp.ones((1, 2)), onp.ones((1, 1)),
                           onp.ones((1, 4, 3))), ValueError, r"u: expected shape \(batch, L, 1\)"),
])
def test_bad_input_is_refused_with_a_clear_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
