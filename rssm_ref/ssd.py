"""Mamba-2's SSD core in float64: the recurrence, and the chunked state-space-dual algorithm.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality" (ICML 2024, arXiv 2405.21060). Section and equation
numbers below are cited from memory of the paper's arXiv version, as best known (sections;
equation numbers beyond (1)-(3) are not given); the equations of this module are
numbered (S1)-(S9) and each says where it sits in the paper.

Semantics are those of mamba_ssm's ``mamba_chunk_scan_combined`` (argument names and
shapes included), in exact float64 and differentiable with autograd.

Glossary (shapes)
-----------------
batch, L          sequences, sequence length (any L >= 1; not tied to chunk_size)
h, p              heads, head dimension (mamba_ssm: nheads, headdim; the paper's H, P)
g, n              groups of heads sharing B and C, state size (ngroups, dstate; the paper's
                  G, N; the multihead patterns of Section 7.2, groups as in grouped-query
                  attention). h % g == 0; head i reads group i // (h // g)
                  (repeat_interleave)
x (batch, L, h, p)          input;    y (batch, L, h, p) output
dt (batch, L, h)            raw step; dt' the step after bias, softplus and clamp (S1)
A (h,) < 0                  one scalar per head (scalar-times-identity A, Section 5 / 7);
                            or A_log (h,) with A = -exp(A_log)
B, C (batch, L, g, n)       input and output projections
D (h,) or (h, p)            optional skip;   z (batch, L, h, p) optional gate (S4)
dt_bias (h,)                optional;  dt_softplus bool;  dt_limit (lo, hi)
initial_states, final_states (batch, h, p, n)   H_{-1} and H_{L-1}
chunk_size = Q              the paper's chunk (block) length T/Q of Section 6
a_t = dt'_t A  (batch, L, h)   log-decay per step (ssd_minimal's discrete ``A``)

Equations (per batch row, per head; H_t is (p, n))
--------------------------------------------------
(S1)  dt'_t = clamp(softplus(dt_t + dt_bias) if dt_softplus else dt_t + dt_bias, lo, hi)
      [the clamp is skipped when dt_limit == (0, inf), as mamba_ssm does]
(S2)  H_t = exp(a_t) H_{t-1} + dt'_t x_t B_t^T,      a_t = dt'_t A
      [the selective SSM recurrence, eq. (1) of Section 2 / the SSD layer of Section 5.1,
      with Ā_t = exp(Δ_t A) and Euler B̄_t = Δ_t B_t as mamba_ssm discretizes]
(S3)  y_t = H_t C_t + D x_t
(S4)  y_t <- y_t * silu(z_t),   silu(z) = z sigmoid(z)
(S5)  y = M X  with  X_s = dt'_s x_s,  M_ts = (C_t . B_s) L_ts,
      L_ts = exp(a_{s+1} + ... + a_t) for s <= t, 0 for s > t
      [the matrix (dual, "attention-like") form: eq. (3) of Section 3.1; L is the
      1-semiseparable mask of Section 3.3 (a scalar-A SSM is 1-semiseparable), and
      M = L o (C B^T) the structured masked attention of Section 4 / the quadratic
      mode of the state space duality, Section 5]
(S6)  segsum(a)_ts = a_{s+1} + ... + a_t (s <= t), -inf (s > t);  L = exp(segsum(a))
      [the stable segment sum of Section 6 / Listing 1: each entry is the sum of the
      segment's own terms, never a difference of two long cumulative sums and never
      split as exp(cumsum_t) exp(-cumsum_s); every exponent is <= 0, so a log-decay in
      the 10^6 range underflows to the exact 0 instead of making inf * 0 = NaN, and a
      short segment keeps all its digits]
(S7)  chunk c (positions t in [cQ, cQ + Q)):  diagonal block  Y_diag = (L_c o C_c B_c^T) X_c
      [Section 6.1, the diagonal blocks; Section 6.2 splits the off-diagonal blocks into
      the B, A and C factors of (S8)-(S9)]
(S8)  chunk states (Section 6, "B" step):  S_c = sum_s exp(segsum to chunk end) X_s B_s^T;
      state passing ("A" step, the recurrence (S2) over chunks):
      H_end(c) = exp(sum of a over chunk c) H_end(c-1) + S_c,   H_end(-1) = initial_states
(S9)  state to output ("C" step, the low-rank off-diagonal blocks):
      Y_off_t = exp(a_{cQ} + ... + a_t) H_end(c-1) C_t;   y = Y_diag + Y_off, then (S3)-(S4)

``ssd_ref`` is (S1)-(S4) as one loop over time; ``ssd_chunked`` is (S1), (S5)-(S9), (S3),
(S4) vectorized over batch, heads and chunks with einsum (only the state passing (S8)
loops, over chunks), as one autograd primitive whose VJP is written by hand and is itself
chunked (rssm_ref.kernels.ssd, (V1)-(V5): the same einsums transposed, and one reverse
pass over chunks). ``ssd_chunked_ref`` is the same forward with autograd tracing it: the
second reference for the VJP, beside autograd through ``ssd_ref``. A last partial chunk
is its own block of length L mod Q: no padding.

The clamp of (S1) has mamba_ssm's gradient: zero where dt' lies strictly outside
[lo, hi], passed through at the bounds themselves.

mamba_ssm's kernels use softplus with a threshold (softplus(u) = u for u > 20, a
difference below 2.1e-9); here softplus is exact (logaddexp).

>>> P = ssd_params(batch=2, L=10, h=4, g=2, p=3, n=5, seed=0, D="h", z=True)
>>> r, c = ssd_ref(**P), ssd_chunked(**P, chunk_size=4)
>>> c["y"].shape, c["final_states"].shape
((2, 10, 4, 3), (2, 4, 3, 5))
>>> bool(onp.max(onp.abs(r["y"] - c["y"])) <= 1e-13 * onp.max(onp.abs(r["y"])))
True
"""
import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from rssm_ref.kernels.nonlinear import silu
from rssm_ref.kernels.ssd import DT_LIMIT_NONE, segsum, ssd_core, ssd_core_ref, ssd_dt
from rssm_ref.selective_ssm import A_from_log
from rssm_ref.validation import check_array, check_dt_limit, is_traced

__all__ = ["ssd_ref", "ssd_chunked", "ssd_chunked_ref", "ssd_dt", "segsum", "silu",
           "ssd_params", "check_ssd_inputs", "ssd_minimal_convention", "DT_LIMIT_NONE"]


# ------------------------------------------------------------------ the _ref twin
def ssd_ref(x, dt, A=None, B=None, C=None, *, D=None, z=None, dt_bias=None,
            initial_states=None, dt_softplus=False, dt_limit=DT_LIMIT_NONE, A_log=None):
    """(S1)-(S4) written straight from the recurrence: one Python loop over time.

    Shapes: x (batch, L, h, p), dt (batch, L, h), A (h,) < 0 [or A_log (h,)],
    B, C (batch, L, g, n), D (h,) or (h, p), z (batch, L, h, p), dt_bias (h,),
    initial_states (batch, h, p, n) -> {"y": (batch, L, h, p),
    "final_states": (batch, h, p, n)}. Differentiable with autograd in every array.

        H_t = exp(dt'_t A) H_{t-1} + dt'_t x_t B_t^T;   y_t = (H_t C_t + D x_t) silu(z_t)

    >>> one = onp.ones((1, 3, 1, 1))
    >>> out = ssd_ref(one, onp.ones((1, 3, 1)), onp.array([-onp.log(2.0)]), one, one)
    >>> out["y"][0, :, 0, 0].tolist()          # H_t = H_{t-1} / 2 + 1
    [1.0, 1.5, 1.75]
    """
    v = check_ssd_inputs(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                         initial_states=initial_states, dt_limit=dt_limit, A_log=A_log)
    x, B, C, D, z = v["x"], v["B"], v["C"], v["D"], v["z"]
    batch, L, h, p, g, n = (v["dims"][k] for k in ("batch", "L", "h", "p", "g", "n"))
    A = v["A"]
    dtp = ssd_dt(v["dt"], v["dt_bias"], dt_softplus, dt_limit)
    # head i reads group i // (h // g): repeat_interleave along the group axis
    Bh = np.repeat(B, h // g, axis=2)
    Ch = np.repeat(C, h // g, axis=2)
    H = onp.zeros((batch, h, p, n)) if v["initial_states"] is None else v["initial_states"]
    ys = []
    for t in range(L):
        decay = np.exp(dtp[:, t] * A)                                        # (batch, h)
        inject = (dtp[:, t, :, None] * x[:, t])[:, :, :, None] * Bh[:, t, :, None, :]
        H = decay[:, :, None, None] * H + inject                            # (S2)
        y_t = np.einsum("bhpn,bhn->bhp", H, Ch[:, t])                        # (S3)
        if D is not None:
            y_t = y_t + (D if np.ndim(D) == 2 else D[:, None]) * x[:, t]
        if z is not None:
            y_t = y_t * silu(z[:, t])                                        # (S4)
        ys.append(y_t)
    return {"y": np.stack(ys, axis=1), "final_states": H}


# ------------------------------------------------------------------ the chunked algorithm
def ssd_chunked_ref(x, dt, A=None, B=None, C=None, *, chunk_size=64, D=None, z=None,
                    dt_bias=None, initial_states=None, dt_softplus=False,
                    dt_limit=DT_LIMIT_NONE, A_log=None, return_chunk_states=False):
    """``ssd_chunked`` with autograd tracing its einsums (rssm_ref.kernels.ssd.ssd_core_ref)
    instead of the hand-written VJP: the same forward, and the reference for the VJP's
    gradients besides autograd through ``ssd_ref``.

    Shapes and arguments as ``ssd_chunked``.

    >>> P = ssd_params(batch=1, L=7, h=2, g=1, p=2, n=3, seed=1)
    >>> a, b = ssd_chunked_ref(**P, chunk_size=3), ssd_chunked(**P, chunk_size=3)
    >>> bool(onp.array_equal(a["y"], b["y"]))
    True
    """
    return _chunked(ssd_core_ref, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                    dt_softplus, dt_limit, A_log, return_chunk_states)


def ssd_chunked(x, dt, A=None, B=None, C=None, *, chunk_size=64, D=None, z=None,
                dt_bias=None, initial_states=None, dt_softplus=False,
                dt_limit=DT_LIMIT_NONE, A_log=None, return_chunk_states=False):
    """The chunked SSD algorithm (Section 6): (S1), (S5)-(S9), then (S3)-(S4), as one
    autograd primitive with a hand-written chunked VJP (rssm_ref.kernels.ssd, (V1)-(V5))
    in every array argument (A_log through A = -exp(A_log)).

    Shapes as ``ssd_ref``; chunk_size Q >= 1 (any L: a last partial chunk is a block of
    its own length, unpadded; Q > L is one block). Returns {"y": (batch, L, h, p),
    "final_states": (batch, h, p, n)} and, with ``return_chunk_states``,
    "chunk_states": (batch, ceil(L / Q), h, p, n), the state H_t at the last position t
    of each chunk (so chunk_states[:, -1] == final_states; the state entering chunk c
    is chunk_states[:, c-1], or initial_states for c = 0).

        y = (L o C B^T)(dt' x)  [within chunks]  +  exp(a_{cQ..t}) H_end(c-1) C_t  [across]

    >>> P = ssd_params(batch=1, L=7, h=2, g=1, p=2, n=3, seed=1)
    >>> out = ssd_chunked(**P, chunk_size=3, return_chunk_states=True)
    >>> out["chunk_states"].shape
    (1, 3, 2, 2, 3)
    >>> bool(onp.allclose(out["chunk_states"][:, -1], out["final_states"], rtol=0, atol=0))
    True
    """
    def core(x, dt, A, B, C, D, z, dt_bias, H0, dt_softplus, dt_limit, Q):
        traced = any(is_traced(v) for v in (x, dt, A, B, C, D, z, dt_bias, H0))
        lo, hi = (float(dt_limit[0]), float(dt_limit[1]))
        return ssd_core(x, dt, A, B, C, D, z, dt_bias, H0, bool(dt_softplus), lo, hi, Q,
                        traced)
    return _chunked(core, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                    dt_softplus, dt_limit, A_log, return_chunk_states)


def _chunked(core, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus,
             dt_limit, A_log, return_chunk_states):
    v = check_ssd_inputs(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                         initial_states=initial_states, dt_limit=dt_limit, A_log=A_log,
                         chunk_size=chunk_size)
    y, final, ends = core(v["x"], v["dt"], v["A"], v["B"], v["C"], v["D"], v["z"],
                          v["dt_bias"], v["initial_states"], dt_softplus, dt_limit,
                          int(chunk_size))
    out = {"y": y, "final_states": final}
    if return_chunk_states:
        out["chunk_states"] = ends
    return out


# ------------------------------------------------------------------ the ssd_minimal mapping
def ssd_minimal_convention(x, dt, A=None, B=None, C=None, *, dt_bias=None,
                           initial_states=None, dt_softplus=False, dt_limit=DT_LIMIT_NONE,
                           A_log=None):
    """Arguments for mamba_ssm's ``ssd_minimal_discrete(X, A, B, C, block_len,
    initial_states)`` (the paper's Listing 1, modules/ssd_minimal.py), which takes the
    step already folded in and B, C per head:

        X = x * dt'[..., None]   (batch, L, h, p)        A_disc = A * dt'   (batch, L, h)
        B_h, C_h = B, C of head i's group, i // (h / g)   (batch, L, h, n)

    with dt' of (S1); initial_states gains the listing's chunk axis, (batch, 1, h, p, n).
    Its output is y of (S2)-(S3) without D and before the z-gate (add D x, then multiply
    by silu(z), yourself) and the final state (batch, h, p, n); it needs
    L % block_len == 0. (An older version of the listing took B, C (batch, L, g, n) and
    contracted g independently of the heads, which is this model only for g = 1.)

    >>> P = ssd_params(batch=1, L=4, h=2, g=1, p=3, n=2, seed=0)
    >>> m = ssd_minimal_convention(**P)
    >>> m["X"].shape, m["A"].shape, m["B"].shape
    ((1, 4, 2, 3), (1, 4, 2), (1, 4, 2, 2))
    """
    v = check_ssd_inputs(x, dt, A, B, C, dt_bias=dt_bias, initial_states=initial_states,
                         dt_limit=dt_limit, A_log=A_log)
    h, g = v["dims"]["h"], v["dims"]["g"]
    dtp = ssd_dt(v["dt"], v["dt_bias"], dt_softplus, dt_limit)
    H0 = v["initial_states"]
    return {"X": v["x"] * dtp[..., None], "A": dtp * v["A"],
            "B": onp.repeat(v["B"], h // g, axis=2), "C": onp.repeat(v["C"], h // g, axis=2),
            "initial_states": None if H0 is None else H0[:, None]}


# ------------------------------------------------------------------ inputs
def check_ssd_inputs(x, dt, A=None, B=None, C=None, *, D=None, z=None, dt_bias=None,
                     initial_states=None, dt_limit=DT_LIMIT_NONE, A_log=None,
                     chunk_size=None):
    """Check every argument against the shapes of the glossary; raise ValueError naming
    the argument and the expected shape. Returns the arrays (float64; autograd-traced
    values as they are), the resolved A (from A_log when given) and
    "dims": {batch, L, h, p, g, n}.

    >>> check_ssd_inputs(onp.zeros((1, 2, 4, 3)), onp.zeros((1, 2, 4)), -onp.ones(4),
    ...                  onp.zeros((1, 2, 3, 5)), onp.zeros((1, 2, 3, 5)))
    Traceback (most recent call last):
    ...
    ValueError: B: ngroups g = 3 does not divide nheads h = 4 (expected shape (batch, L, g, n) = (1, 2, g, *) with h % g == 0)
    """
    x = check_array("x", x)
    if np.ndim(x) != 4 or np.shape(x)[1] < 1:
        raise ValueError(f"x: expected shape (batch, L, h, p) with L >= 1, got {np.shape(x)}")
    batch, L, h, p = np.shape(x)

    def want(name, arr, shape, symbols):
        arr = check_array(name, arr)
        if np.shape(arr) != tuple(shape):
            raise ValueError(f"{name}: expected shape {symbols} = {tuple(shape)}, got {np.shape(arr)}")
        return arr

    dt = want("dt", dt, (batch, L, h), "(batch, L, h)")
    if (A is None) == (A_log is None):
        raise ValueError("A: give exactly one of A (h,) (negative) and A_log (h,) with A = -exp(A_log)")
    if A_log is not None:
        A = A_from_log(want("A_log", A_log, (h,), "(h,)"))
    else:
        A = want("A", A, (h,), "(h,)")
        if not onp.all(onp.asarray(getval(A)) < 0):
            raise ValueError(f"A: expected shape (h,) = ({h},) with every entry < 0 "
                             f"(A = -exp(A_log) in Mamba-2), got max {float(onp.max(getval(A))):.6g}")
    if B is None:
        raise ValueError("B: required, shape (batch, L, g, n)")
    B = check_array("B", B)
    if np.ndim(B) != 4 or np.shape(B)[:2] != (batch, L):
        raise ValueError(f"B: expected shape (batch, L, g, n) = ({batch}, {L}, g, n), got {np.shape(B)}")
    g, n = np.shape(B)[2:]
    if g < 1 or h % g:
        raise ValueError(f"B: ngroups g = {g} does not divide nheads h = {h} (expected shape "
                         f"(batch, L, g, n) = ({batch}, {L}, g, *) with h % g == 0)")
    if C is None:
        raise ValueError("C: required, shape (batch, L, g, n)")
    C = want("C", C, (batch, L, g, n), "(batch, L, g, n)")
    if D is not None:
        D = check_array("D", D)
        if np.shape(D) not in ((h,), (h, p)):
            raise ValueError(f"D: expected shape (h,) = ({h},) or (h, p) = ({h}, {p}), got {np.shape(D)}")
    if z is not None:
        z = want("z", z, (batch, L, h, p), "(batch, L, h, p)")
    if dt_bias is not None:
        dt_bias = want("dt_bias", dt_bias, (h,), "(h,)")
    if initial_states is not None:
        initial_states = want("initial_states", initial_states, (batch, h, p, n), "(batch, h, p, n)")
    lo, hi = check_dt_limit(dt_limit)
    if chunk_size is not None and not (isinstance(chunk_size, (int, onp.integer))
                                       and not isinstance(chunk_size, bool) and chunk_size >= 1):
        raise ValueError(f"chunk_size: {chunk_size!r} (expected an integer >= 1)")
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
            "initial_states": initial_states,
            "dims": {"batch": batch, "L": L, "h": h, "p": p, "g": g, "n": n}}


def ssd_params(batch=2, L=16, h=4, g=2, p=3, n=5, seed=0, *, dtA=(1e-3, 1.0), D=None,
               z=False, dt_bias=False, initial_states=False, dt_softplus=False,
               dt_limit=None, A_log=False):
    """Seeded random inputs, a keyword dict for ``ssd_ref`` / ``ssd_chunked``.

    A = -exp(U(-1, 1)) per head; dt is drawn so that the effective |dt'_t A| (after
    dt_bias and softplus, before any clamp) is log-uniform on ``dtA`` = (lo, hi).
    D: None, "h" (shape (h,)) or "hp" (shape (h, p)); z, dt_bias, initial_states: include
    them; A_log: give A as A_log; dt_limit passes through when not None.

    >>> sorted(ssd_params(h=2, g=1, D="hp", A_log=True))
    ['A_log', 'B', 'C', 'D', 'dt', 'dt_softplus', 'x']
    """
    if D not in (None, "h", "hp"):
        raise ValueError(f"D: {D!r} (expected None, 'h' or 'hp')")
    if h % g:
        raise ValueError(f"g: {g} does not divide h = {h}")
    rng = onp.random.default_rng(seed)
    A = -onp.exp(rng.uniform(-1.0, 1.0, size=h))
    q = onp.exp(rng.uniform(onp.log(dtA[0]), onp.log(dtA[1]), size=(batch, L, h)))
    dtp = q / -A
    bias = rng.normal(0.0, 0.5, size=h) if dt_bias else onp.zeros(h)
    # invert softplus stably: softplus^{-1}(y) = y + log(-expm1(-y))
    raw = (dtp + onp.log(-onp.expm1(-dtp)) if dt_softplus else dtp) - bias
    P = {"x": rng.normal(size=(batch, L, h, p)), "dt": raw,
         "B": rng.normal(size=(batch, L, g, n)), "C": rng.normal(size=(batch, L, g, n)),
         "dt_softplus": bool(dt_softplus)}
    if A_log:
        P["A_log"] = onp.log(-A)
    else:
        P["A"] = A
    if dt_bias:
        P["dt_bias"] = bias
    if D == "h":
        P["D"] = rng.normal(size=h)
    elif D == "hp":
        P["D"] = rng.normal(size=(h, p))
    if z:
        P["z"] = rng.normal(size=(batch, L, h, p))
    if initial_states:
        P["initial_states"] = rng.normal(size=(batch, h, p, n))
    if dt_limit is not None:
        P["dt_limit"] = tuple(dt_limit)
    return P
