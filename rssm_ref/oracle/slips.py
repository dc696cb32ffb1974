"""The slips a port of a whole Mamba-1 layer, of Mamba-2's SSD core, or of a whole
Mamba-2 layer makes, named for ``diagnose``.

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

Mamba-2's SSD core (rssm_ref.ssd, (S1)-(S4); ``precision.ssd_scan(..., slip=name)``):

    name                    in (S1)-(S4), what the port computes instead
    groups_repeat           head i reads group i % g (B.repeat), not i // (h/g)
                            (repeat_interleave)
    dt_bias_missing         (S1)  dt' without + dt_bias
    dt_bias_twice           (S1)  dt + 2 dt_bias (dt + dt_bias passed as dt, and dt_bias)
    softplus_missing        (S1)  no softplus where dt_softplus is on
    softplus_twice          (S1)  softplus(softplus(dt + dt_bias)) where dt_softplus is on
    softplus_unwanted       (S1)  softplus(dt + dt_bias) where dt_softplus is off
    dt_limit_ignored        (S1)  no clamp where dt_limit is set
    dt_clamped_at_zero      (S1)  clamp(dt', 0, inf) where no dt_limit is set: a negative
                            dt' becomes 0 (mamba_ssm forks clamp even with (0, inf))
    A_dt_missing            (S2)  exp(A) where exp(dt' A) belongs
    A_dt_twice              (S2)  exp(dt'^2 A)
    x_dt_missing            (S2)  x B^T enters the state where dt' x B^T belongs
    x_dt_twice              (S2)  dt'^2 x B^T enters the state (x pre-multiplied by dt,
                            then again by the scan); D x keeps x
    initial_states_ignored  (S2)  H_{-1} = 0
    D_missing               (S3)  no + D x
    D_unsqueeze_missing     (S3)  D (h,) broadcast over the last axis: D[j] x[..., i, j]
                            (tried when p == h, the only shapes that let a port run)
    D_flat_order            (S3)  D (h, p) read from its flat (h·p,) storage as (p h):
                            D[i, j] -> D.ravel()[j h + i]
    padding_leak            final_states (and the last chunk_states) read at L padded up to
                            a multiple of chunk_size, the pad's x = 0 but its raw dt = 0, so
                            dt' = clamp(softplus(dt_bias)) decays the state (y unchanged)

Slips that change nothing for the given params, inputs and options are not tried
(``ssd_applies``): g in (1, h), a dt_bias, D, initial_states that are nonzero, a clamp
that binds, a negative dt', L not a multiple of chunk_size with a nonzero pad step and a
candidate holding a state.

A whole Mamba-2 layer (rssm_ref.mamba2_block, (B1)-(B10);
``precision.mamba2_block_scan(..., slip=name)``, whose SSD core is ``ssd_scan``: the
core's slips below are ssd's, computed there, under the same names but for
ssm_state_ignored, ssd's initial_states_ignored):

    name                    in (B1)-(B10), what the port computes instead
    z_xBC_swapped           (B1)  in_proj's output split as [z0, x0, xBC, z, dt]
    dt_first                (B1)  split as [dt, z0, x0, z, xBC]: dt taken from the front
    conv_flipped            (B2)  conv1d.weight reversed in time (a convolution)
    conv_bias_missing       (B2)  no + b_conv
    conv_right_padded       (B2)  the conv reads xBC[t..t+W-1], zeros past the end
    conv_silu_missing       (B2)  xBC_conv without the SiLU
    conv_state_ignored      (B2)  x̃ starts with W-1 zeros where conv_state belongs
    dt_bias_missing, dt_bias_twice, softplus_missing, softplus_twice, dt_limit_ignored
                            (B4)  ssd's (S1) slips (softplus is always on in the layer)
    A_dt_missing, A_dt_twice, x_dt_missing, x_dt_twice, groups_repeat
                            (B6)  ssd's (S2) slips
    ssm_state_ignored       (B6)  H_{-1} = 0 where ssm_state belongs
    D_missing, D_flat_order (B7)  ssd's (S3) slips (D_flat_order: D (d_ssm,) read (p h))
    D_repeat                (B7)  D (h,) spread over the d_ssm channels as D.repeat(p):
                                  channel c reads D[c % h], not D[c // p]
    norm_whole_width        (B8)  one group of d_ssm channels where G = d_ssm / g (or the
                                  reference's --norm-group-size) belongs
    norm_per_group          (B8)  groups of d_ssm / g where the reference's G is another
    norm_before_gate        (B8)  norm_before_gate=True where it is off
    norm_after_gate         (B8)  norm_before_gate=False where it is on
    padding_leak            ssd's: ssm_state read at L padded to a multiple of chunk_size
    mlp_dropped             (B9)  y_inner = [0 | y_norm]
    mlp_ungated             (B9)  y_inner = [x0 | y_norm]

Slips that change nothing are not tried (``mamba2_applies``): besides ssd's rules (on
the layer's raw dt, softplus on), a conv bias, W > 1, a weight that reversing changes, a
nonzero conv_state; D (h,) that the spreading changes; norm.weight for the norm slips
(and a group size that differs: g > 1 or the reference's own); the opposite of the
reference's norm_before_gate; d_mlp > 0 for the MLP slips.

Glossary
--------
SLIPS                     name -> Slip(words, fix), in the order of the layer (mamba-block)
SSD_SLIPS                 the same for the ssd model, in the order of (S1)-(S4)
MAMBA2_SLIPS              the same for mamba2-block, in the order of (B1)-(B10)
MAMBA2_CORE               a mamba2-block slip -> the ssd slip it is in the core, where
                          the names differ
slips_of(model)           SLIPS, SSD_SLIPS or MAMBA2_SLIPS
Slip.words                the slip in a porter's words (the report's row label)
Slip.fix                  what to change in the port (the report's advice)
check_slip(name, model)   None, or ValueError naming the slips known
applies(name, params)     False when the slip computes the layer itself for these params
ssd_applies(name, params, inputs, options, keys)   the same for ssd
mamba2_applies(name, params, inputs, options, keys)   the same for mamba2-block

>>> list(SLIPS)[:3]
['xz_swapped', 'conv_flipped', 'conv_bias_missing']
>>> SLIPS["conv_flipped"].words
'the conv flipped: a convolution where a cross-correlation belongs (conv1d.weight reversed in time)'
"""
import collections
import math

import numpy as onp

from rssm_ref.kernels.ssd import ssd_dt
from rssm_ref.mamba2_block import validate_mamba2_block
from rssm_ref.oracle.formats import mamba2_options, ssd_limit, SSD_CHUNK_SIZE

__all__ = ["Slip", "SLIPS", "SSD_SLIPS", "MAMBA2_SLIPS", "MAMBA2_CORE", "slips_of",
           "check_slip", "applies", "ssd_applies", "mamba2_applies"]

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


SSD_SLIPS = {
    "groups_repeat": Slip(
        "heads paired with groups the wrong way: head i reads group i % g (repeat), not "
        "i // (h/g) (repeat_interleave)",
        "give head i the group i // (h // g): B.repeat_interleave(h // g, dim=2) (einops "
        "repeat(B, 'b l g n -> b l (g r) n', r=h // g)), not B.repeat(1, 1, h // g, 1)"),
    "dt_bias_missing": Slip(
        "dt_bias never added",
        "add dt_bias to dt before the softplus (or pass it as dt_bias=)"),
    "dt_bias_twice": Slip(
        "dt_bias added twice (dt + dt_bias passed as dt, and dt_bias again)",
        "add dt_bias once: pass the raw dt with dt_bias=, or dt + dt_bias with dt_bias=None"),
    "softplus_missing": Slip(
        "softplus missing on dt (dt_softplus is on)",
        "dt' = softplus(dt + dt_bias) (dt_softplus=True)"),
    "softplus_twice": Slip(
        "softplus applied twice to dt (softplus(dt + dt_bias) passed as dt, with "
        "dt_softplus=True)",
        "apply softplus once: pass the raw dt with dt_softplus=True, or the softplus'ed one "
        "with dt_softplus=False"),
    "softplus_unwanted": Slip(
        "softplus applied to dt where dt_softplus is off",
        "dt' = dt + dt_bias without softplus (dt_softplus=False), or rerun forward with "
        "--dt-softplus if your model applies it"),
    "dt_limit_ignored": Slip(
        "the dt_limit clamp ignored",
        "clamp dt' to [lo, hi] after the softplus: dt.clamp(min=lo, max=hi)"),
    "dt_clamped_at_zero": Slip(
        "dt clamped to (0, inf) with no dt_limit set (a negative dt' became 0)",
        "skip the clamp when dt_limit == (0, inf), as mamba_ssm does (or make dt positive, "
        "e.g. with dt_softplus)"),
    "A_dt_missing": Slip(
        "A not multiplied by dt: exp(A) where exp(dt' A) belongs",
        "discretize A with the step: exp(dt' * A) (ssd_minimal takes A * dt)"),
    "A_dt_twice": Slip(
        "A multiplied by dt twice: exp(dt'^2 A)",
        "multiply A by dt once: pass A, or A * dt to a function that takes it discretized, "
        "never both"),
    "x_dt_missing": Slip(
        "x not multiplied by dt: B x enters the state where dt' B x belongs",
        "the state's input is dt' * x (ssd_minimal takes X = x * dt)"),
    "x_dt_twice": Slip(
        "x multiplied by dt twice: dt'^2 B x enters the state",
        "multiply x by dt once: pass x, or x * dt to a function that takes it discretized, "
        "never both"),
    "initial_states_ignored": Slip(
        "initial_states ignored (the scan started from zero)",
        "start the scan from initial_states: H_{-1} = initial_states (the first chunk's "
        "incoming state)"),
    "D_missing": Slip(
        "the skip D x missing",
        "add D * x to the scan's output, before the z gate"),
    "D_unsqueeze_missing": Slip(
        "D (h,) applied per channel: x * D broadcast over the head dimension p, where "
        "x * D[:, None] belongs",
        "broadcast D (h,) over heads: y + x * D[:, None] (einops rearrange(D, 'h -> h 1'))"),
    "D_flat_order": Slip(
        "D (h, p) read in the wrong order from its flat (h·p,) storage ((p h) where (h p) "
        "belongs)",
        "reshape a flat D as rearrange(D, '(h p) -> h p', p=headdim) (row i is head i)"),
    "padding_leak": Slip(
        "padding leaking into the final state: L padded to a multiple of chunk_size with "
        "x = 0 but raw dt = 0 (dt' = softplus(dt_bias)), the state read at the padded end",
        "read the final state at position L - 1, or pad with dt' = 0 (pad dt * A and "
        "x * dt after the discretization, as HF does), so the pad does not decay it"),
}


_SPLIT_FIX = ("split in_proj's output as mamba_ssm's Mamba2 does: z0, x0, z, xBC, dt = "
              "torch.split(zxbcdt, [d_mlp, d_mlp, d_ssm, d_ssm + 2 * ngroups * d_state, "
              "nheads], dim=-1)")

MAMBA2_SLIPS = {
    "z_xBC_swapped": Slip(
        "z and xBC swapped in the in_proj split (read as [xBC, z, dt])", _SPLIT_FIX),
    "dt_first": Slip(
        "dt taken from the front of the in_proj split (read as [dt, z, xBC])", _SPLIT_FIX),
    "conv_flipped": SLIPS["conv_flipped"],
    "conv_bias_missing": SLIPS["conv_bias_missing"],
    "conv_right_padded": SLIPS["conv_right_padded"],
    "conv_silu_missing": Slip(
        "SiLU after the conv missing",
        "apply silu to the conv output before splitting it into x, B, C: "
        "xBC = silu(conv1d(xBC))"),
    "conv_state_ignored": Slip(
        "conv_state ignored (the conv started from zeros, not from the given conv_state)",
        "feed the conv the W - 1 inputs kept in conv_state before the first token: "
        "torch.cat([conv_state, xBC], dim=-1) before the conv (causal_conv1d_fn's "
        "initial_states)"),
    "dt_bias_missing": SSD_SLIPS["dt_bias_missing"],
    "dt_bias_twice": SSD_SLIPS["dt_bias_twice"],
    "softplus_missing": Slip(
        "softplus missing on dt (the layer always applies it)",
        "dt' = softplus(dt + dt_bias) (dt_softplus=True)"),
    "softplus_twice": SSD_SLIPS["softplus_twice"],
    "dt_limit_ignored": Slip(
        "the dt_limit clamp ignored",
        "clamp dt' to [lo, hi] after the softplus: dt.clamp(min=lo, max=hi) (mamba_ssm's "
        "dt_limit, HF's time_step_limit), or rerun forward without --dt-limit"),
    "A_dt_missing": SSD_SLIPS["A_dt_missing"],
    "A_dt_twice": SSD_SLIPS["A_dt_twice"],
    "x_dt_missing": SSD_SLIPS["x_dt_missing"],
    "x_dt_twice": SSD_SLIPS["x_dt_twice"],
    "groups_repeat": SSD_SLIPS["groups_repeat"],
    "ssm_state_ignored": Slip(
        "ssm_state ignored (the scan started from zero, not from the given ssm_state)",
        "start the scan from ssm_state: initial_states=ssm_state (the first chunk's "
        "incoming state)"),
    "D_missing": Slip(
        "the skip D x missing",
        "add D * x to the scan's output, before the norm and gate (D per head: "
        "x * D[:, None] on (h, p))"),
    "D_repeat": Slip(
        "D (h,) spread over the channels the wrong way: channel c reads D[c % h] "
        "(D.repeat(headdim)), not D[c // headdim] (repeat_interleave)",
        "give each head's headdim channels its own D: D.repeat_interleave(headdim) on the "
        "flat channels, or x * D[:, None] on (h, p)"),
    "D_flat_order": Slip(
        "D (d_ssm,) per channel read in the wrong order ((p h) where (h p) belongs)",
        "reshape D as rearrange(D, '(h p) -> h p', p=headdim) (channel i·p + j is head i's)"),
    "norm_whole_width": Slip(
        "the norm over the whole width (one group of d_ssm channels) instead of per group",
        "normalize each group of d_ssm / ngroups channels on its own: "
        "RMSNormGated(d_ssm, group_size=d_ssm // ngroups), as mamba_ssm's Mamba2 and "
        "transformers 5 do (or rerun forward with --norm-group-size d_ssm if your model "
        "normalizes the whole width)"),
    "norm_per_group": Slip(
        "the norm per group of d_ssm / ngroups channels where the reference's groups are "
        "another size (--norm-group-size)",
        "normalize groups of the reference's norm_group_size (the whole width: "
        "group_size=d_ssm, older transformers), or rerun forward without --norm-group-size "
        "if your model normalizes per group"),
    "norm_before_gate": Slip(
        "the norm applied before the gate (norm(y) * silu(z)) where norm_before_gate is off",
        "gate first, then normalize: norm(y * silu(z)) (norm_before_gate=False, mamba_ssm's "
        "and HF's), or rerun forward with --norm-before-gate if your model normalizes first"),
    "norm_after_gate": Slip(
        "the norm applied after the gate (norm(y * silu(z))) where norm_before_gate is on",
        "normalize first, then gate: norm(y) * silu(z) (norm_before_gate=True), or rerun "
        "forward without --norm-before-gate"),
    "padding_leak": Slip(
        "padding leaking into ssm_state: L padded to a multiple of chunk_size with x = 0 "
        "but raw dt = 0 (dt' = softplus(dt_bias)), the state read at the padded end",
        SSD_SLIPS["padding_leak"].fix),
    "mlp_dropped": Slip(
        "the gated MLP part dropped (out_proj's first d_mlp inputs left zero)",
        "out_proj reads [silu(z0) * x0, y]: keep the d_mlp-wide z0 and x0 at the front of "
        "in_proj's split and concatenate silu(z0) * x0 before the SSM's output"),
    "mlp_ungated": Slip(
        "the gated MLP part ungated (x0 where silu(z0) * x0 belongs)",
        "gate the MLP part: silu(z0) * x0, concatenated before the SSM's output"),
}
# the mamba2-block slips of the SSD core whose ssd name differs
MAMBA2_CORE = {"ssm_state_ignored": "initial_states_ignored"}


def slips_of(model):
    """The slips ``diagnose`` knows for ``model`` (an empty dict for a model without).

    >>> list(slips_of("ssd"))[:2]
    ['groups_repeat', 'dt_bias_missing']
    """
    return {"mamba-block": SLIPS, "ssd": SSD_SLIPS, "mamba2-block": MAMBA2_SLIPS}.get(model, {})


def check_slip(name, model="mamba-block"):
    """None for None or a known slip of ``model``; ValueError naming the slips otherwise.

    >>> check_slip("gate_on_x") is None
    True
    >>> check_slip("flipped")
    Traceback (most recent call last):
    ...
    ValueError: slip: 'flipped' (expected None or one of xz_swapped, conv_flipped, conv_bias_missing, conv_right_padded, conv_silu_missing, dt_bias_twice, dt_bias_missing, softplus_missing, A_is_A_log, zoh_B, output_before, D_missing, gate_before_D, gate_on_x)
    """
    known = slips_of(model)
    if name is not None and name not in known:
        raise ValueError(f"slip: {name!r} (expected None or one of {', '.join(known)})")


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


def ssd_applies(name, params, inputs, options, keys=("y",)):
    """Whether ssd slip ``name`` computes something else than the reference for these
    checked ``params``, canonical ``inputs`` and ``options`` (a forward file's), on the
    candidate's ``keys`` (the padding only moves the states).

    >>> import numpy
    >>> P = {"A_log": numpy.zeros(2), "dt_bias": numpy.zeros(2)}
    >>> U = {"x": numpy.ones((1, 4, 2, 2)), "dt": numpy.full((1, 4, 2), 0.5),
    ...      "B": numpy.ones((1, 4, 1, 3)), "C": numpy.ones((1, 4, 1, 3))}
    >>> [s for s in SSD_SLIPS if ssd_applies(s, P, U, {"chunk_size": 4})]
    ['softplus_unwanted', 'A_dt_missing', 'A_dt_twice', 'x_dt_missing', 'x_dt_twice']
    """
    check_slip(name, "ssd")
    h, p = onp.shape(inputs["x"])[2:]
    g = onp.shape(inputs["B"])[2]
    bias = params.get("dt_bias")
    soft = bool(options.get("dt_softplus"))
    limit = ssd_limit(options)
    free = ssd_dt(inputs["dt"], bias, soft)                 # dt' before any clamp
    dtp = ssd_dt(inputs["dt"], bias, soft, limit)

    def nonzero(v):
        return v is not None and bool(onp.any(onp.asarray(v) != 0))
    if name == "groups_repeat":
        return 1 < g < h
    if name in ("dt_bias_missing", "dt_bias_twice"):
        return nonzero(bias)
    if name in ("softplus_missing", "softplus_twice"):
        return soft
    if name == "softplus_unwanted":
        return not soft
    if name == "dt_limit_ignored":
        return limit != (0.0, math.inf) and bool(onp.any((free < limit[0]) | (free > limit[1])))
    if name == "dt_clamped_at_zero":
        return limit == (0.0, math.inf) and bool(onp.any(free < 0))
    if name in ("A_dt_missing", "A_dt_twice", "x_dt_missing", "x_dt_twice"):
        return bool(onp.any(dtp != 1))
    if name == "initial_states_ignored":
        return nonzero(inputs.get("initial_states"))
    D = params.get("D")
    if name == "D_missing":
        return nonzero(D)
    if name == "D_unsqueeze_missing":
        return D is not None and onp.ndim(D) == 1 and p == h and len(set(onp.ravel(D))) > 1
    if name == "D_flat_order":
        return D is not None and onp.ndim(D) == 2 and \
            not onp.array_equal(onp.reshape(onp.ravel(D), (p, h)).T, D)
    # padding_leak: a pad exists, its step decays, and the candidate holds a state
    L, Q = onp.shape(inputs["x"])[1], int(options.get("chunk_size") or SSD_CHUNK_SIZE)
    pad = ssd_dt(onp.zeros((1, 1, h)), bias, soft, limit)
    return L % Q != 0 and bool(onp.any(pad != 0)) and \
        any(k in keys for k in ("final_states", "chunk_states"))


def mamba2_applies(name, params, inputs, options, keys=("y",)):
    """Whether mamba2-block slip ``name`` computes something else than the reference for
    these checked ``params``, canonical ``inputs`` (hidden_states, conv_state, ssm_state)
    and ``options`` (a forward file's), on the candidate's ``keys``. The SSD core's slips
    follow ``ssd_applies`` on the layer's raw dt (in_proj's last h outputs), softplus on.

    >>> from rssm_ref.mamba2_block import mamba2_block_params
    >>> import numpy
    >>> P = mamba2_block_params(d_model=2, d_state=2, d_conv=1, headdim=2, conv_bias=False)
    >>> U = {"hidden_states": numpy.ones((1, 4, 2))}
    >>> O = {"ngroups": 1, "chunk_size": 4}
    >>> [s for s in MAMBA2_SLIPS if mamba2_applies(s, P, U, O)]  # doctest: +NORMALIZE_WHITESPACE
    ['z_xBC_swapped', 'dt_first', 'conv_silu_missing', 'dt_bias_missing', 'dt_bias_twice',
     'softplus_missing', 'softplus_twice', 'A_dt_missing', 'A_dt_twice', 'x_dt_missing',
     'x_dt_twice', 'D_missing', 'norm_before_gate']
    """
    check_slip(name, "mamba2-block")
    kw = mamba2_options(options)
    v = validate_mamba2_block(params, ngroups=kw["ngroups"], d_state=kw["d_state"],
                              norm_group_size=kw["norm_group_size"])
    dm, group = v["dims"], v["options"]["group_size"]
    h, p, W, s = dm["h"], dm["p"], dm["W"], dm["d_ssm"]
    w, D = onp.asarray(params["conv1d.weight"]), onp.asarray(params["D"])
    norm = "norm.weight" in params

    def nonzero(v):
        return v is not None and bool(onp.any(onp.asarray(v) != 0))
    layer = {
        "z_xBC_swapped": True, "dt_first": True, "conv_silu_missing": True,
        "conv_flipped": not onp.array_equal(w, w[:, :, ::-1]),
        "conv_bias_missing": nonzero(params.get("conv1d.bias")),
        "conv_right_padded": W > 1,
        "conv_state_ignored": W > 1 and "conv_state" in inputs
        and nonzero(onp.asarray(inputs["conv_state"])[:, :, -(W - 1):]),
        "D_repeat": D.shape == (h,) and not onp.array_equal(onp.tile(D, p), onp.repeat(D, p)),
        "norm_whole_width": norm and group != s,
        "norm_per_group": norm and group != s // dm["g"],
        "norm_before_gate": norm and not kw["norm_before_gate"],
        "norm_after_gate": norm and bool(kw["norm_before_gate"]),
        "mlp_dropped": dm["d_mlp"] > 0, "mlp_ungated": dm["d_mlp"] > 0,
    }
    if name in layer:
        return bool(layer[name])
    # the SSD core's slips, judged as ssd's on the core's inputs (only dt's values matter)
    hs = onp.asarray(inputs["hidden_states"])
    zxbcdt = hs @ onp.asarray(params["in_proj.weight"]).T
    if "in_proj.bias" in params:
        zxbcdt = zxbcdt + params["in_proj.bias"]
    lead = hs.shape[:2]
    core = {"x": onp.broadcast_to(0.0, lead + (h, p)), "dt": zxbcdt[..., -h:],
            "B": onp.broadcast_to(0.0, lead + (dm["g"], dm["n"]))}
    core["C"] = core["B"]
    if "ssm_state" in inputs:
        core["initial_states"] = inputs["ssm_state"]
    core_params = {"dt_bias": params["dt_bias"], "D": D if D.shape == (h,) else D.reshape(h, p)}
    core_options = dict(options, dt_softplus=True)
    core_keys = ["final_states" if k == "ssm_state" else k for k in keys]
    return ssd_applies(MAMBA2_CORE.get(name, name), core_params, core, core_options, core_keys)
