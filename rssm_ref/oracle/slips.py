"""The slips a port of a whole Mamba-1 layer makes, named for ``diagnose``.

A port of mamba_ssm's ``Mamba`` (rssm_ref.mamba_block, (M1)-(M9)) that gets one step of
the layer wrong fails ``verify`` with errors of order 1 and no hint of where. ``diagnose``
recomputes the layer with each slip below, one at a time on top of the reference's
conventions (``rssm_ref.oracle.precision.mamba_block_scan(..., slip=name)``: the same
rounded computation ``verify`` emulates, so a slip is also matched at the candidate's
precision), and names the one the candidate follows. The parameters are never changed:
a slip that leaves out a parameter (the conv bias, dt_proj.bias) gives it a zero gradient.

    name                in (M1)-(M9), what the port computes instead
    xz_swapped          (M1)  x = xz[..., E:], z = xz[..., :E]
    conv_flipped        (M2)  Σ_k w[e, W-1-k] x̃[t+k]: a convolution (weight reversed in time)
    conv_bias_missing   (M2)  no + b_conv
    conv_right_padded   (M2)  Σ_k w[e, k] x[t+k], zeros past the end: W-1 zeros on the right,
                              the conv reads tokens t..t+W-1 (anti-causal; the conv state
                              it keeps is the layer's, but the initial one is never read)
    conv_silu_missing   (M3)  x_act = x_conv
    dt_bias_twice       (M5)  softplus(dt_low W_dtᵀ + 2 b_dt): dt_proj with its bias, then
                              dt_proj.bias again as the scan's delta_bias
    dt_bias_missing     (M5)  softplus(dt_low W_dtᵀ): dt_proj without its bias and no
                              delta_bias
    softplus_missing    (M5)  Δ = dt_low W_dtᵀ + b_dt
    A_is_A_log          (M6)  A = A_log
    zoh_B               (M7)  (exp(Δ A) - 1) / A ⊙ B: the paper's ZOH B, eq. (3b)
    output_before       (M8)  y_ssm,t = h_{t-1} C_t + D x_t: the state read before the update
    D_missing           (M8)  no + D ⊙ x_act
    gate_before_D       (M8)-(M9)  (h_t C_t) ⊙ silu(z) + D ⊙ x_act: the D skip added after the
                              gate (a fused-gate scan's output given D again, outside)
    gate_on_x           (M9)  y_ssm ⊙ silu(x_act): the gate read from the conv branch

The two gate slips are the ones whose shapes fit, so that a port runs without an error:
silu(x_act) in place of silu(z) (the split's names mixed up after the conv reassigns x),
and the skip placed after the gate. A slip that changes nothing for the given params
(no conv bias, W = 1, D = 0, dt_proj.bias = 0) is not tried (``applies``).

Glossary
--------
SLIPS                     name -> Slip(words, fix), in the order of the layer
Slip.words                the slip in a porter's words (the report's row label)
Slip.fix                  what to change in the port (the report's advice)
check_slip(name)          None, or ValueError naming the slips known
applies(name, params)     False when the slip computes the layer itself for these params

>>> list(SLIPS)[:3]
['xz_swapped', 'conv_flipped', 'conv_bias_missing']
>>> SLIPS["conv_flipped"].words
'the conv flipped: a convolution where a cross-correlation belongs (conv1d.weight reversed in time)'
"""
import collections

import numpy as onp

__all__ = ["Slip", "SLIPS", "check_slip", "applies"]

Slip = collections.namedtuple("Slip", "words fix")

SLIPS = {
    "xz_swapped": Slip(
        "z and x swapped in the in_proj split",
        "x is the first E outputs of in_proj (its first E rows), z the last E: "
        "x, z = xz.chunk(2, dim=-1)"),
    "conv_flipped": Slip(
        "the conv flipped: a convolution where a cross-correlation belongs "
        "(conv1d.weight reversed in time)",
        "apply conv1d.weight as F.conv1d does, without reversing it: weight[:, 0, -1] "
        "multiplies the current token, weight[:, 0, 0] the one W-1 steps back"),
    "conv_bias_missing": Slip(
        "the conv bias missing (conv1d.bias never added)",
        "add conv1d.bias to the conv output, before the SiLU"),
    "conv_right_padded": Slip(
        "right instead of left padding: an anti-causal conv (output t reads tokens "
        "t..t+W-1, the future)",
        "pad the conv input with W-1 zeros (or the conv state) on the left only, or keep "
        "the first L outputs of a conv padded on both sides: conv1d(x)[..., :L]"),
    "conv_silu_missing": Slip(
        "SiLU after the conv missing",
        "apply silu to the conv output before x_proj and the scan: x = silu(conv1d(x))"),
    "dt_bias_twice": Slip(
        "dt_proj.bias added twice (in dt_proj and again as delta_bias)",
        "add dt_proj.bias once: either dt_proj with its bias and delta_bias=None, or "
        "dt_proj.weight @ dt alone and delta_bias=dt_proj.bias (mamba_ssm's)"),
    "dt_bias_missing": Slip(
        "dt_proj.bias never added (neither in dt_proj nor as delta_bias)",
        "add dt_proj.bias to dt_proj.weight @ dt before the softplus (or pass it as "
        "delta_bias with delta_softplus=True)"),
    "softplus_missing": Slip(
        "softplus missing on delta",
        "delta = softplus(dt_proj.weight @ dt + dt_proj.bias) (delta_softplus=True)"),
    "A_is_A_log": Slip(
        "A used as A_log (A = A_log instead of -exp(A_log))",
        "compute A = -exp(A_log) from the stored A_log"),
    "zoh_B": Slip(
        "ZOH for B (the paper's eq. (3b)) where mamba_ssm's layer uses Euler",
        "discretize B as Euler: deltaB_u = delta * B * u (selective_scan_ref), not "
        "(exp(delta A) - 1) / A * B"),
    "output_before": Slip(
        "y read from the state before the update (h_{t-1} C_t)",
        "update the state with token t first, then read y_t = h_t C_t"),
    "D_missing": Slip(
        "the skip D x missing",
        "add D * x (the conv branch after SiLU) to the scan output, before the gate"),
    "gate_before_D": Slip(
        "the gate applied before the D skip ((h C) * silu(z) + D x)",
        "add D * x first, then gate: (h C + D x) * silu(z)"),
    "gate_on_x": Slip(
        "the gate applied to the wrong tensor: y * silu(x) (the conv branch) instead of "
        "y * silu(z)",
        "gate with z, the second half of in_proj's output, kept aside before the conv: "
        "y * silu(z)"),
}


def check_slip(name):
    """None for None or a known slip; ValueError naming the slips otherwise.

    >>> check_slip("gate_on_x") is None
    True
    >>> check_slip("flipped")
    Traceback (most recent call last):
    ...
    ValueError: slip: 'flipped' (expected None or one of xz_swapped, conv_flipped, conv_bias_missing, conv_right_padded, conv_silu_missing, dt_bias_twice, dt_bias_missing, softplus_missing, A_is_A_log, zoh_B, output_before, D_missing, gate_before_D, gate_on_x)
    """
    if name is not None and name not in SLIPS:
        raise ValueError(f"slip: {name!r} (expected None or one of {', '.join(SLIPS)})")


def applies(name, params):
    """Whether slip ``name`` computes something else than the layer for ``params`` (a
    state_dict of float arrays, rssm_ref.mamba_block's names).

    >>> import numpy
    >>> P = {"conv1d.weight": numpy.ones((2, 1, 1)), "D": numpy.zeros(2),
    ...      "dt_proj.bias": numpy.ones(2)}
    >>> [s for s in SLIPS if not applies(s, P)]
    ['conv_flipped', 'conv_bias_missing', 'conv_right_padded', 'D_missing', 'gate_before_D']
    """
    check_slip(name)
    w = onp.asarray(params["conv1d.weight"])
    nonzero = {"conv_bias_missing": "conv1d.bias", "dt_bias_twice": "dt_proj.bias",
               "dt_bias_missing": "dt_proj.bias", "D_missing": "D", "gate_before_D": "D"}
    if name in nonzero:
        key = nonzero[name]
        return key in params and bool(onp.any(onp.asarray(params[key]) != 0))
    if name == "conv_flipped":
        return not onp.array_equal(w, w[:, :, ::-1])
    if name == "conv_right_padded":
        return w.shape[2] > 1
    return True
