"""FFT convolution paths of discrete LTI systems: the Markov-kernel route and the
paper's state-free transfer-function route (Remark 3.2, Section 4.1, after Parnichkun
et al. 2024), with the aliasing of the transfer-function kernel corrected exactly.

An LTI system maps an input ``u`` to ``y(t) = sum_{s<=t} h(t-s) u(s)`` where ``h`` is
its impulse response (Markov parameters; the LTI case of eq. (2): ``h[0] = D``,
``h[t] = C A^(t-1) B``). Both routes compute this causal convolution for a whole
sequence at once with real FFTs of an even length ``K >= 2L``:

    (C1)  y = irfft( rfft(h, K) . rfft(u, K), K )[:L]        (. = sum over inputs m)

The routes differ in how the spectrum of the kernel, truncated to its first ``L``
samples, is obtained:

* Markov-kernel route (``ss_fft_filter``): ``h`` from ``rssm_ref.lti.markov_parameters``.
* State-free route (``tf_fft_filter``, ``tf_kernel``): straight from the transfer
  function. With ``q = z^-1``, ``a(q) = sum_i a_i q^i`` (``den``) and ``b(q)``
  (``num``), the kernel is ``h(q) = b(q)/a(q)``. Evaluating it on the K-th roots of
  unity ``w_k = exp(-2 pi i k / K)`` (``tf_kernel_aliased``) gives the DFT of the
  *aliased* kernel

      (C2)  h_K[t] = sum_{j>=0} h[t + jK],       h_K = irfft(b(w)/a(w), K),

  which differs from ``h[t]`` by about ``|p_max|^K`` (1.7e-2 for a pole at 0.999 and
  K = 4096). The truncated kernel ``h^(L)(q) = sum_{t<L} h_t q^t`` satisfies

      (C3)  a(q) h^(L)(q) = b(q) - q^L c_L(q),          deg c_L < n,

  (``a (h - h^(L))`` is ``q^L`` times a power series, and the left side of (C3) is a
  polynomial of degree < L + n), and ``c_L`` is the state of the observable companion
  (direct form II transposed) realization after ``L`` steps of an impulse, i.e.
  ``scipy.signal.lfilter``'s ``zf``. As ``h^(L)`` has degree < L <= K, its K-point DFT
  is exact:

      (C4)  H^(L)(w_k) = [ b(w_k) - w_k^L c_L(w_k) ] / a(w_k).

Computing c_L (``_tf_setup``). In descending powers of ``z``, ``A(z) = z^n a(1/z) / a_0``
(monic), ``B(z) = z^n b(1/z) / a_0``:

      (C5)  c_L(q) = a_0 q^(n-1) R(1/q),     R(z) = z^(L-1) (B mod A)(z)  mod A(z),

computed by repeated squaring of the operator "multiply by z modulo A" (O(n^3 log L)).
In the monomial basis (the companion matrix) squaring loses up to all digits for
clustered poles near the unit circle: the powers have transients of size ~t^(m-1) p^t
that cancel with alternating signs (measured relative errors of c_L 1e-8 for a double
pole at 0.999, 1e+21 for poles 0.997/0.998/0.999 at L = 65536). We work instead in the
Newton basis ``N_k(z) = prod_{i<k} (z - mu_i)`` with nodes ``mu`` = the computed roots
of ``A`` (constants for differentiation; any nodes give an exact identity, so gradients
are exact): there the operator is ``T = diag(mu) + subdiag(1) - d e_(n-1)^T`` with
``A = N_n + sum_k d_k N_k`` and tiny ``d``; the entries of ``T^M`` are divided
differences of ``z^M`` and square without cancellation. ``d`` comes from
``den - a_0 N_n`` evaluated to 1 ulp of itself (long-double constants, den never
rescaled: dividing by a_0 would round the coefficients and move clustered poles). ``A``
is evaluated on the grid in the same basis, ``A(z) = N_n(z) + sum_k d_k N_k(z)``, which
is accurate to a few ulps relative to ``|A(z)|`` even next to a double root (the
monomial sum is accurate only relative to ``sum |a_i|``: 1e-10 relative error at a
double pole 0.999). With ``beta`` = Newton coordinates of ``B mod A`` and
``rho = T^(L-1) beta``, (C4) becomes, at ``q = 1/z``,

      (C6)  H^(L)(q) = b_0/a_0 + sum_k (beta_k - q^(L-1) rho_k) N_k(z) / A(z).

(C6) is evaluated on the circle ``|q| = r`` instead of ``|q| = 1`` when the kernel has
not decayed within L samples (``_damping``): a polynomial of degree < L is fixed by its
DFT on any circle, and damping commutes with convolution, ``(h r^t) * (u r^t) =
r^t (h * u)``; on the unit circle ``b/a`` would be much larger than ``h^(L)`` and (C6)
would cancel (5e-11 for a double pole 0.999 at L = 2). In ``tf_fft_filter`` the
spectrum goes straight onto the convolution grid, block by block over frequencies
(``_tf_block``), so the (p, K/2 + 1, m) kernel spectrum is never held at once.

Measured (float64, max error relative to max|y|, against a long-double recursion):
with a pole at 0.999 the corrected route is within 5e-15 (L = 4096) and 1.4e-14
(L = 65536), the Markov route within 8e-15, the uncorrected route off by 1e-2 at
L = 4096; for clustered poles it is more accurate than ``scipy.signal.lfilter`` itself
(double pole 0.999: 2e-14 vs 1e-12; triple 0.99: 4e-14 vs 8e-12). The Markov route is
only as accurate as ``markov_parameters``, which squares the state matrix. See
tests/test_convolution.py.

Glossary (shapes)
-----------------
batch, L, m, p      batch size, sequence length, inputs, outputs
u       (batch, L, m)   input sequences (batch-major, zero initial state)
y       (batch, L, p)   output sequences
h       (Lh, p, m)      kernel / Markov parameters, h[0] = D, h[t] = C A^(t-1) B
num     (p, m, k)       numerators b, descending powers of z (= ascending powers of q)
den     (p, k)          one common denominator a per output row, a[:, 0] != 0
n = k-1                 order of each row's denominator
A, B, C, D              (n, n), (n, m), (p, n), (p, m) state-space matrices, eq. (2)
K                       even FFT length (>= 2L for the convolutions)
w_k                     exp(-2 pi i k / K), k = 0 .. K/2 (rfft grid)

Public functions
----------------
fft_conv(h, u), fft_conv_ref(h, u)                                   (C1)
ss_fft_filter(A, B, C, D, u), ss_fft_filter_ref(A, B, C, D, u)       eq. (2), (C1)
tf_kernel_aliased(num, den, K), tf_kernel_aliased_ref(num, den, K)   (C2)
tf_kernel(num, den, L), tf_kernel_ref(num, den, L)                   (C3)-(C6)
tf_fft_filter(num, den, u, corrected=True), tf_fft_filter_ref(num, den, u)

>>> import numpy
>>> num, den = [[[0.0, 1.0]]], [[1.0, -0.5]]          # h = [0, 1, 0.5, 0.25, ...]
>>> numpy.round(tf_kernel(num, den, 4)[:, 0, 0], 12)
array([0.  , 1.  , 0.5 , 0.25])
>>> numpy.round(tf_kernel_aliased(num, den, 4)[:, 0, 0], 6)   # h_4[t] = sum_j h[t + 4j]
array([0.133333, 1.066667, 0.533333, 0.266667])
"""
import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from rssm_ref.kernels.convolution import causal_conv_kernel, even_fast_len
from rssm_ref.realization import markov_parameters, tf_impulse_ref
from rssm_ref.validation import check_array, check_length, check_state_space, check_tf, check_u


__all__ = [
    "causal_conv", "fft_conv", "fft_conv_ref",
    "ss_fft_filter", "ss_fft_filter_ref",
    "tf_kernel_aliased", "tf_kernel_aliased_ref",
    "tf_kernel", "tf_kernel_ref",
    "tf_fft_filter", "tf_fft_filter_ref",
]


def _check_kernel(h, u):
    """A kernel h (Lh >= 1, p, m) and inputs u (batch, L, m) of matching width: (h, u, L)."""
    h = check_array("h", h, ndim=3)
    if onp.shape(h)[0] < 1:
        raise ValueError(f"h: shape {onp.shape(h)} has no samples (expected (Lh, p, m), Lh >= 1)")
    u = check_u(u, onp.shape(h)[2], what="h (Lh, p, m)")
    L = onp.shape(u)[1]
    return h, u, L


def _conv_spectral(Hv, u, K):
    """(C1) given the kernel spectrum: y (batch, L, p) = irfft(H . rfft(u, K), K)[:L].

    Hv (F, m, p) complex kernel spectrum on the rfft grid of the even length K (a view
    whose (m, p) slices are BLAS-compatible, e.g. a transpose of a (p, F, m) array);
    u (batch, L, m). The sum over inputs is one stacked matmul over frequencies.
    """
    L = onp.shape(u)[1]
    Uf = np.fft.rfft(np.transpose(u, (1, 0, 2)), K, axis=0)      # (F, batch, m), K positional
    y = np.fft.irfft(np.matmul(Uf, Hv), K, axis=0)[:L]            # (L, batch, p)
    return np.transpose(y, (1, 0, 2))


def _damping(L, mu):
    """Radius r of the evaluation circle |q| = r < 1 for a truncated kernel, and r^-t (t < L).

    Any r gives the same h^(L) (a polynomial of degree < L is fixed by its DFT on any
    circle; damping commutes with convolution). On |q| = 1, when the kernel has not
    decayed within L samples, b/a is much larger than h^(L) and (C6) cancels: relative
    error ~ eps (L (1 - |p|))^-m for an m-fold pole |p| (5e-11 for a double pole 0.999
    at L = 2). r = exp(-c/L), c = clip(1 + L log max|p|, 0, 1), removes that cancellation
    and costs at most a factor e^c <= e in rounding; c = 0 (no damping) once
    max|p|^L <= 1/e.
    """
    rmax = float(onp.max(onp.abs(mu))) if onp.size(mu) else 0.0
    c = 0.0 if rmax == 0.0 else min(1.0, max(0.0, 1.0 + L * onp.log(rmax)))
    return float(onp.exp(-c / L)), onp.exp(c * onp.arange(L) / L)


def _mat_power(T, e):
    """T^e for a stack T (p, n, n) by repeated squaring (products of commuting powers)."""
    out = None
    base = T
    while e:
        if e & 1:
            out = base if out is None else np.matmul(out, base)
        e >>= 1
        if e:
            base = np.matmul(base, base)
    if out is None:
        n = onp.shape(T)[-1]
        out = onp.broadcast_to(onp.eye(n, dtype=complex), onp.shape(T))
    return out


def _newton_data(den_rows):
    """Constants of the Newton basis for each row of ``den_rows`` (p, n+1) float64.

    Returns mu (p, n) nodes (the computed roots), M2N (p, n, n) (descending coefficients
    of a degree < n polynomial -> Newton coordinates), E (p, n), the coefficients
    z^(n-1) .. z^0 of N_n = prod (z - mu_i), and a0 E split as P_hi + P_lo, evaluated in
    long double: ``den[1:] - P_hi`` is exact (Sterbenz: den ~ a0 N_n), so
    ``den[1:] - P_hi - P_lo`` (= den - a0 N_n) is accurate to ~1 ulp of itself, however
    tiny. Normalizing den by a0 first would round every coefficient and move clustered
    poles (1.6e-12 output error for a double pole at 0.99 with a0 = 3).
    """
    p, k = den_rows.shape
    n = k - 1
    mus, m2ns, Es, His, Los = [], [], [], [], []
    for row in den_rows:
        mu = onp.sort_complex(onp.roots(row).astype(complex))
        e64 = onp.array([1.0 + 0j])
        eld = onp.array([1.0 + 0j], dtype=onp.clongdouble)
        n2m = onp.zeros((n, n), dtype=complex)
        for j in range(n):
            n2m[n - 1 - j:, j] = e64          # column j: descending coefficients of N_j
            e64 = onp.convolve(e64, [1.0, -mu[j]])
            eld = onp.convolve(eld, onp.array([1.0, -mu[j]], dtype=onp.clongdouble))
        prod = onp.clongdouble(row[0]) * eld[1:]
        hi = prod.astype(complex)
        mus.append(mu)
        m2ns.append(onp.linalg.inv(n2m))      # unit upper-triangular: exact structure
        Es.append(e64[1:])
        His.append(hi)
        Los.append((prod - hi.astype(onp.clongdouble)).astype(complex))
    return tuple(onp.array(x) for x in (mus, m2ns, Es, His, Los))


BLOCK = 512   # frequencies per block: the (p, BLOCK, m) kernel spectrum stays in cache


def _tf_setup(num, den, L, damped=False):
    """The frequency-independent part of (C5)-(C6) for validated num (p, m, k), den (p, k).

    ``L=None``: the untruncated b(q)/a(q) on the unit circle (aliased kernel, (C2)).
    ``L`` int: the first L Markov parameters, on the circle |q| = r (``damped``, see
    ``_damping``; the spectrum is then that of h(t) r^t). Returns a dict: n, G (p, j, m)
    the coefficients [b0; beta; rho] of (C6) (j = 1 + n, or 1 + 2n with rho), mu (p, n)
    nodes, d (p, n), radius r, undamp (L,) = r^-t, L.
    """
    p, m, k = onp.shape(num)
    n = k - 1
    a0 = den[:, :1]                                       # (p, 1); den is never rescaled
    b0 = num[:, :, 0] / a0                                # h[0], (p, m)
    if n == 0:                                            # static gain: H = b0
        return dict(n=0, G=b0[:, None, :], radius=1.0, undamp=onp.ones(L or 1), L=L)
    mu, M2N, E, P_hi, P_lo = _newton_data(onp.asarray(getval(den)))
    radius, undamp = _damping(L, mu) if damped else (1.0, onp.ones(L or 1))
    # A = den / a0 = N_n + sum_k d_k N_k: d from den - a0 N_n (tiny, computed exactly up
    # to 1 ulp of itself); the last term is zero in value and carries d/da0 = -E
    resid = (den[:, 1:] - P_hi) - P_lo - (a0 - getval(a0)) * E             # (p, n)
    d = np.einsum("pkl,pl->pk", M2N, resid) / a0                           # (p, n)
    # B mod A = (num - b_0 den) / a0 (descending coefficients), Newton coordinates beta
    v = (num[:, :, 1:] - b0[:, :, None] * den[:, None, 1:]) / a0[:, :, None]   # (p, m, n)
    beta = np.einsum("pkl,pml->pkm", M2N, v)                                 # (p, n, m)
    G = [b0[:, None, :] + 0j, beta]      # + 0j: a promotion whose VJP keeps the real part
    if L is not None:
        # (C5): rho = T^(L-1) beta, T = "multiply by z mod A" in the Newton basis
        J = onp.zeros((p, n, n), dtype=complex)
        J[:, onp.arange(n), onp.arange(n)] = mu
        J[:, onp.arange(1, n), onp.arange(n - 1)] = 1.0
        e_last = onp.zeros(n)
        e_last[n - 1] = 1.0
        T = J - d[:, :, None] * e_last[None, None, :]
        G.append(np.matmul(_mat_power(T, L - 1), beta))                    # rho, (p, n, m)
    return dict(n=n, G=np.concatenate(G, axis=1), mu=mu, d=d, radius=radius,
                undamp=undamp, L=L)


def _tf_block(setup, kk, K):
    """Kernel spectrum H[p, f, m] at the frequencies q_f = r exp(-2 pi i kk_f / K), (C6).

    kk (Fb,) integer frequency indices -> (p, Fb, m) complex.
    """
    G, n, L, radius = setup["G"], setup["n"], setup["L"], setup["radius"]
    p = onp.shape(G)[0]
    if n == 0:
        return G * onp.ones((1, len(kk), 1), dtype=complex)                 # H = b0
    mu, d = setup["mu"], setup["d"]
    # Newton basis N_0 .. N_n at z = 1/q (constants). Arrays of this size are handled
    # as real and imaginary planes: numpy's complex elementwise arithmetic is several
    # times slower than the equivalent real operations.
    zr = onp.cos(2 * onp.pi * kk / K) / radius
    zi = onp.sin(2 * onp.pi * kk / K) / radius
    Nr, Ni = [onp.ones((p, len(kk)))], [onp.zeros((p, len(kk)))]
    for j in range(n):
        fr = zr[None, :] - mu[:, j:j + 1].real
        fi = zi[None, :] - mu[:, j:j + 1].imag
        Nr.append(Nr[-1] * fr - Ni[-1] * fi)
        Ni.append(Nr[-2] * fi + Ni[-1] * fr)
    NR, NI = onp.stack(Nr[:n], axis=1), onp.stack(Ni[:n], axis=1)          # (p, n, Fb)
    # A(z) = N_n(z) + sum_k d_k N_k(z), accurate relative to |A(z)| even next to a root
    dr, di = np.real(d)[:, None, :], np.imag(d)[:, None, :]                 # (p, 1, n)
    Ar = Nr[n] + (np.matmul(dr, NR) - np.matmul(di, NI))[:, 0, :]          # (p, Fb)
    Ai = Ni[n] + (np.matmul(dr, NI) + np.matmul(di, NR))[:, 0, :]
    A2 = Ar * Ar + Ai * Ai
    iAr, iAi = (Ar / A2)[:, None, :], (-Ai / A2)[:, None, :]                 # 1/A, (p, 1, Fb)
    # X_k = N_k / A: (C6) is H = b0 + sum_k X_k (beta_k - q^(L-1) rho_k)
    XR, XI = NR * iAr - NI * iAi, NR * iAi + NI * iAr                       # (p, n, Fb)
    rows_re, rows_im = [onp.ones((p, 1, len(kk))), XR], [onp.zeros((p, 1, len(kk))), XI]
    if L is not None:
        # -q^(L-1) X_k, the angle of q^(L-1) reduced mod K in integers (exact twiddle)
        ang = 2 * onp.pi * ((kk * (L - 1)) % K) / K
        qr, qi = radius ** (L - 1) * onp.cos(ang), -radius ** (L - 1) * onp.sin(ang)
        rows_re.append(qi * XI - qr * XR)
        rows_im.append(-(qr * XI + qi * XR))
    # H[p, f, m] = sum_j rows[p, j, f] G[p, j, m]: one complex matmul per output row p
    rows = np.concatenate([a_ + 1j * b_ for a_, b_ in zip(rows_re, rows_im)], axis=1)  # (p, j, Fb)
    return np.matmul(np.transpose(rows, (0, 2, 1)), G)                                 # (p, Fb, m)


def _blocks(F):
    return [onp.arange(s, min(s + BLOCK, F)) for s in range(0, F, BLOCK)]


def _tf_kernel_spectrum(setup, K, full=False):
    """The whole kernel spectrum (F, p, m), F = K//2 + 1 (rfft grid) or K (``full``)."""
    F = K if full else K // 2 + 1
    H = np.concatenate([_tf_block(setup, kk, K) for kk in _blocks(F)], axis=1)
    return np.transpose(H, (1, 0, 2))


# ------------------------------------------------------------------- convolution (C1)
def fft_conv_ref(h, u):
    """Direct-sum twin of ``fft_conv``: ``y(t) = sum_{s<=t} h(t-s) u(s)``, a plain loop.

    h (Lh, p, m), u (batch, L, m) -> (batch, L, p). O(L^2); for tests.

    >>> import numpy
    >>> h = numpy.array([1.0, 0.5, 0.25]).reshape(3, 1, 1)
    >>> u = numpy.array([1.0, 0.0, 0.0, 2.0, 0.0]).reshape(1, 5, 1)
    >>> fft_conv_ref(h, u)[0, :, 0].tolist()
    [1.0, 0.5, 0.25, 2.0, 1.0]
    """
    h = check_array("h", h, ndim=3)
    u = check_u(u, onp.shape(h)[2], what="h (Lh, p, m)")
    L = onp.shape(u)[1]
    Lh = onp.shape(h)[0]
    batch, p = onp.shape(u)[0], onp.shape(h)[1]
    ys = []
    for t in range(L):
        acc = onp.zeros((batch, p))
        for s in range(t + 1):
            if t - s < Lh:
                acc = acc + np.dot(u[:, s, :], np.transpose(h[t - s]))      # (batch, p)
        ys.append(acc)
    return np.stack(ys, axis=1)


def fft_conv(h, u):
    """Causal linear convolution ``y(t) = sum_{s<=t} h(t-s) u(s)`` by real FFTs, (C1).

    h (Lh, p, m) kernel (only its first L samples matter; a shorter kernel is a FIR
    filter, zero beyond Lh); u (batch, L, m) -> y (batch, L, p). The FFT length is the
    smallest even 2^a 3^b 5^c >= L + min(Lh, L) - 1, so no circular wrap reaches the
    first L outputs; odd L is fine. Differentiable in h and u (autograd's FFT).

    >>> import numpy
    >>> h = numpy.array([1.0, 0.5, 0.25]).reshape(3, 1, 1)
    >>> u = numpy.array([1.0, 0.0, 0.0, 2.0, 0.0]).reshape(1, 5, 1)
    >>> numpy.round(fft_conv(h, u)[0, :, 0], 12)
    array([1.  , 0.5 , 0.25, 2.  , 1.  ])
    """
    h, u, L = _check_kernel(h, u)
    h = h[:L]
    K = even_fast_len(L + onp.shape(h)[0] - 1)
    Hf = np.fft.rfft(h, K, axis=0)                        # (F, p, m), K positional
    return _conv_spectral(np.transpose(Hf, (0, 2, 1)), u, K)


def causal_conv(h, u):
    """Causal convolution ``y(t) = sum_{s<=t} h(t-s) u(s)``, (C1), the fastest way for L.

    h (Lh, p, m) kernel (samples beyond L are unused; a shorter kernel is zero beyond
    Lh), u (batch, L, m) -> y (batch, L, p). L <= ``DIRECT_MAX_L``: one matmul with the
    (L m, L p) block-Toeplitz matrix of h (the training length, L = 16); longer: zero-
    padded real FFTs of an even length >= 2L. An autograd primitive with a hand-written
    VJP (the transposed matmul / FFT correlations), differentiable in h and u. Twin:
    :func:`fft_conv_ref`.

    >>> import numpy
    >>> h = numpy.array([1.0, 0.5, 0.25]).reshape(3, 1, 1)
    >>> u = numpy.array([1.0, 0.0, 0.0, 2.0, 0.0]).reshape(1, 5, 1)
    >>> numpy.round(causal_conv(h, u)[0, :, 0], 12)
    array([1.  , 0.5 , 0.25, 2.  , 1.  ])
    """
    h, u, L = _check_kernel(h, u)
    if onp.shape(h)[0] < L:
        h = np.concatenate([h, onp.zeros((L - onp.shape(h)[0],) + onp.shape(h)[1:])], axis=0)
    return causal_conv_kernel(h, u)


# --------------------------------------------------------------- Markov-kernel route
def ss_fft_filter_ref(A, B, C, D, u):
    """Recurrence twin of ``ss_fft_filter``: the state eq. (2) as a plain loop.

    A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m) -> y (batch, L, p).

    >>> import numpy
    >>> A, B, C, D = [[0.5]], [[1.0]], [[1.0]], [[0.0]]
    >>> ss_fft_filter_ref(A, B, C, D, numpy.ones((1, 4, 1)))[0, :, 0].tolist()
    [0.0, 1.0, 1.5, 1.75]
    """
    A, B, C, D = check_state_space(A, B, C, D)
    u = check_u(u, onp.shape(B)[1], what="B (n, m)")
    L = onp.shape(u)[1]
    x = onp.zeros((onp.shape(u)[0], onp.shape(A)[0]))
    ys = []
    for t in range(L):
        ut = u[:, t, :]
        # y(t) = C x(t) + D u(t);  x(t+1) = A x(t) + B u(t)   (row-vector form)
        ys.append(np.dot(x, np.transpose(C)) + np.dot(ut, np.transpose(D)))
        x = np.dot(x, np.transpose(A)) + np.dot(ut, np.transpose(B))
    return np.stack(ys, axis=1)


def ss_fft_filter(A, B, C, D, u):
    """Output of the LTI system (eq. (2) with constant matrices, zero initial state)
    by FFT convolution with its Markov parameters, (C1).

    x(t+1) = A x(t) + B u(t), y(t) = C x(t) + D u(t); h[0] = D, h[t] = C A^(t-1) B.
    A (n, n), B (n, m), C (p, n), D (p, m), u (batch, L, m) -> y (batch, L, p).
    Differentiable in A, B, C, D, u.

    >>> import numpy
    >>> A, B, C, D = [[0.5]], [[1.0]], [[1.0]], [[0.0]]
    >>> numpy.round(ss_fft_filter(A, B, C, D, numpy.ones((1, 4, 1)))[0, :, 0], 12)
    array([0.  , 1.  , 1.5 , 1.75])
    """
    A, B, C, D = check_state_space(A, B, C, D)
    u = check_u(u, onp.shape(B)[1], what="B (n, m)")
    L = onp.shape(u)[1]
    return fft_conv(markov_parameters(A, B, C, D, L), u)


# ------------------------------------------------------------ transfer-function route
def tf_kernel_aliased_ref(num, den, K):
    """Twin of ``tf_kernel_aliased``: fold the impulse response, ``sum_j h[t + jK]``, (C2).

    The difference-equation impulse response (``tf_kernel_ref``) is summed over as many
    periods as it takes for ``rho^N N^n`` to fall below 1e-18 (rho = largest pole
    modulus). num (p, m, k), den (p, k) -> (K, p, m).

    >>> import numpy
    >>> numpy.round(tf_kernel_aliased_ref([[[0.0, 1.0]]], [[1.0, -0.5]], 4)[:, 0, 0], 6)
    array([0.133333, 1.066667, 0.533333, 0.266667])
    """
    num, den = check_tf(num, den, proper=True, stable=True)
    K = check_length("K", K)
    k = onp.shape(num)[2]
    rho = max([float(onp.max(onp.abs(onp.roots(r)))) if k > 1 and onp.any(r[1:]) else 0.0
               for r in onp.asarray(den)])
    N = max(K, k)
    if rho > 0:
        while rho ** N * N ** (k - 1) > 1e-18:
            N *= 2
    periods = -(-N // K)
    h = tf_kernel_ref(num, den, periods * K)
    return np.sum(np.reshape(h, (periods, K) + onp.shape(h)[1:]), axis=0)


def tf_kernel_aliased(num, den, K):
    """The aliased kernel ``h_K[t] = sum_{j>=0} h[t + jK]``, t < K, (C2).

    This is ``irfft(rfft(num, K) / rfft(den, K), K)`` -- the paper's state-free
    evaluation of the transfer function on K FFT points (Remark 3.2, Section 4.1) --
    except that b(w) and a(w) are evaluated accurately (Newton basis, see the module
    docstring) and also for K < k (where ``rfft(num, K)`` would truncate instead of
    folding). Odd K uses the full complex FFT. num (p, m, k), den (p, k), K >= 1 ->
    (K, p, m). Differentiable in num and den.

    >>> import numpy
    >>> hK = tf_kernel_aliased([[[0.0, 1.0]]], [[1.0, -0.5]], 3)[:, 0, 0]
    >>> bool(numpy.allclose(hK, [0.25 / 0.875, 1 / 0.875, 0.5 / 0.875]))
    True
    """
    num, den = check_tf(num, den, proper=True, stable=True)
    K = check_length("K", K)
    if K % 2 == 0:
        return np.fft.irfft(_tf_kernel_spectrum(_tf_setup(num, den, None), K), K, axis=0)
    H = _tf_kernel_spectrum(_tf_setup(num, den, None), K, full=True)
    return np.real(np.fft.ifft(H, K, axis=0))


def tf_kernel_ref(num, den, L):
    """Twin of ``tf_kernel``: the impulse response by the difference equation, a loop
    (``rssm_ref.realization.tf_impulse_ref``):

        a_0 h[t] = b_t - sum_{i=1}^{min(t, n)} a_i h[t-i]  (b_t = 0 for t > n).

    num (p, m, k), den (p, k) -> (L, p, m). Works for any den with den[:, 0] != 0.

    >>> import numpy
    >>> numpy.round(tf_kernel_ref([[[1.0, 0.0, 0.0]]], [[1.0, -1.8, 0.81]], 4)[:, 0, 0], 12)
    array([1.   , 1.8  , 2.43 , 2.916])
    """
    return tf_impulse_ref(num, den, L)


def tf_kernel(num, den, L):
    """The first L Markov parameters of the transfer matrix, exactly, computed state-free
    on the FFT grid with the aliasing tail removed, (C3)-(C6).

    ``H^(L)(q) = [b(q) - q^L c_L(q)] / a(q)`` on an even grid K >= L (q = r w_k, r = 1
    unless the kernel has not decayed within L samples, see ``_damping``), then
    ``h = r^-t irfft(H^(L), K)[:L]``; c_L (the companion state after L steps, (C5))
    comes from O(n^3 log L) squaring in a well-conditioned (Newton) basis -- no large K,
    no recursion over time. num (p, m, k), den (p, k), L >= 1 -> (L, p, m) with
    h[0] = num[:, :, 0] / den[:, :1]. Differentiable in num and den.

    >>> import numpy
    >>> h = tf_kernel([[[1.0, 0.0, 0.0]]], [[1.0, -1.8, 0.81]], 6)[:, 0, 0]  # (1-0.9q)^-2
    >>> bool(numpy.allclose(h, [(t + 1) * 0.9**t for t in range(6)], rtol=0, atol=1e-14))
    True
    """
    num, den = check_tf(num, den, proper=True, stable=True)
    L = check_length("L", L)
    K = even_fast_len(L)
    setup = _tf_setup(num, den, L, damped=True)
    h = np.fft.irfft(_tf_kernel_spectrum(setup, K), K, axis=0)[:L]
    return h * setup["undamp"][:, None, None]


def tf_fft_filter_ref(num, den, u):
    """Twin of ``tf_fft_filter``: the difference equation of each output row, a loop.

    a_0 y_p(t) = sum_j sum_i b_pji u_j(t-i) - sum_{i>=1} a_pi y_p(t-i).
    num (p, m, k), den (p, k), u (batch, L, m) -> y (batch, L, p).

    >>> import numpy
    >>> tf_fft_filter_ref([[[0.0, 1.0]]], [[1.0, -0.5]], numpy.ones((1, 4, 1)))[0, :, 0].tolist()
    [0.0, 1.0, 1.5, 1.75]
    """
    num = check_array("num", num, ndim=3)
    den = check_array("den", den, ndim=2)
    p, m, k = onp.shape(num)
    if onp.shape(den) != (p, k):
        raise ValueError(f"den: expected shape ({p}, {k}) to match num, got {onp.shape(den)}")
    u = check_u(u, m)
    L = onp.shape(u)[1]
    ys = []
    for t in range(L):
        acc = onp.zeros((onp.shape(u)[0], p))
        for i in range(min(t, k - 1) + 1):
            acc = acc + np.dot(u[:, t - i, :], np.transpose(num[:, :, i]))   # (batch, p)
            if i:
                acc = acc - den[:, i] * ys[t - i]
        ys.append(acc / den[:, 0])
    return np.stack(ys, axis=1)


def tf_fft_filter(num, den, u, corrected=True):
    """Output of the transfer matrix by the state-free FFT route (Remark 3.2, Section 4.1).

    corrected=True: the exact truncated-kernel spectrum (C4)-(C6) is put straight on
    the convolution grid (even K >= 2L) and used in (C1): equal to the recurrence up to
    rounding. corrected=False: the paper's plain evaluation, the aliased kernel (C2)
    with K = L rounded up to even, truncated to L and convolved -- off by about
    ``|p_max|^L`` (kept to show what the correction buys).
    num (p, m, k), den (p, k), u (batch, L, m) -> y (batch, L, p). Differentiable in
    num, den and u.

    >>> import numpy
    >>> u = numpy.ones((1, 4, 1))
    >>> numpy.round(tf_fft_filter([[[0.0, 1.0]]], [[1.0, -0.5]], u)[0, :, 0], 12)
    array([0.  , 1.  , 1.5 , 1.75])
    >>> y = tf_fft_filter([[[0.0, 1.0]]], [[1.0, -0.5]], u, corrected=False)   # 1.2 = 1 + 0.2
    >>> numpy.round(y[0, :, 0], 6)
    array([0.133333, 1.2     , 1.733333, 2.      ])
    """
    num, den = check_tf(num, den, proper=True, stable=True)
    u = check_u(u, onp.shape(num)[1])
    L = onp.shape(u)[1]
    if not isinstance(corrected, (bool, onp.bool_)):
        raise TypeError(f"corrected: {type(corrected).__name__} (expected True or False)")
    if not corrected:
        return fft_conv(tf_kernel_aliased(num, den, L + L % 2)[:L], u)
    K = even_fast_len(2 * L)
    setup = _tf_setup(num, den, L, damped=True)
    undamp = setup["undamp"]
    # damping commutes with convolution: (h r^t) * (u r^t) = r^t (h * u)
    Uf = np.fft.rfft(np.transpose(u / undamp[None, :, None], (1, 0, 2)), K, axis=0)  # (F, batch, m)
    # (C1) block by block over frequencies: the (p, F, m) spectrum is never materialized
    Yf = np.concatenate([np.matmul(Uf[kk[0]:kk[-1] + 1],
                                   np.transpose(_tf_block(setup, kk, K), (1, 2, 0)))
                         for kk in _blocks(onp.shape(Uf)[0])], axis=0)             # (F, batch, p)
    y = np.fft.irfft(Yf, K, axis=0)[:L]
    return np.transpose(y, (1, 0, 2)) * undamp[None, :, None]


