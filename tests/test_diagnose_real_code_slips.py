"""``diagnose`` names slips put into copies of REAL third-party code, not into code written
here: mamba_ssm's pure-torch SSD functions (read from its source files by ``ast``, as
tests/test_mamba_ssm_ssd_source.py does) and HF transformers' Mamba2 code (the module's
own source, read the same way, and a Mamba2Mixer built offline from a random config).

Each slip is one edit of the copy's source text (``_edit``: every edited string must be
found, so a moved site skips with its name instead of testing unedited code) or, where the
slip is how a caller uses the function (not passing initial_states, passing dt_softplus
where the model has none), that call. Every copy is first shown to PASS as it is (or with
only its float32 casts removed), so the slip is the one difference diagnose sees; then the
slipped copy must FAIL with that slip ranked first, the next row far off.

Precision: mamba_ssm's ssd_chunk_scan_combined_ref casts dt to float32 (``dt.float()``)
and HF's Mamba2 torch path casts x, B, C, dt, A and the norm to float32: the float64
copies here have those casts removed (and say so); one case runs ssd_chunk_scan_combined_ref
as shipped in float32 tensors and is judged at float32.

Not injected (no natural home in runnable real code): ``D_flat_order`` (the flat D is
reshaped by Mamba2.forward in modules/mamba2.py, a module that needs the CUDA kernels;
the pure-torch functions take D (h, p) already reshaped).
"""
import ast
import importlib.util
import math
import os
import textwrap
import types

import numpy as onp
import pytest

from rssm_ref.oracle.diagnose import diagnose
from rssm_ref.oracle.forward import bundle, compute, resolve_options
from rssm_ref.ssd import ssd_params

torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU)")
einops = pytest.importorskip("einops", reason="einops is not importable: pip install einops")

PARAM_KEYS = ("A", "A_log", "D", "dt_bias")
INPUT_KEYS = ("x", "dt", "B", "C", "z", "initial_states")
Q = 4                                        # the ssd references' chunk_size


# ------------------------------------------------------------ copies of real source
def _edit(src, edits, where):
    """``src`` with each (old, new) replaced; skip when ``old`` is not there (the slip's
    site moved upstream: an unedited copy must not pass for a slipped one)."""
    for old, new in edits:
        if old not in src:
            pytest.skip(f"{where} no longer has {old!r}: update the slip's edit")
        src = src.replace(old, new)
    return src


def _copy(path, ns, edits=None, cls=None, names=()):
    """Define in ``ns`` the functions ``names`` (methods of class ``cls`` when given) of
    the file ``path``, each from its own source text with ``edits[name]`` applied
    (decorators dropped: the copy is the plain function). Returns ``ns``."""
    text = open(path, encoding="utf-8").read()
    body = ast.parse(text).body
    if cls is not None:
        body = next((n.body for n in body if isinstance(n, ast.ClassDef) and n.name == cls), [])
    found = {n.name: n for n in body if isinstance(n, ast.FunctionDef) and n.name in names}
    if set(found) != set(names):
        pytest.skip(f"{path} lacks {sorted(set(names) - set(found))}")
    for name in names:
        src = textwrap.dedent(ast.get_source_segment(text, found[name], padded=True))
        src = _edit(src, (edits or {}).get(name, ()), f"{os.path.basename(path)}:{name}")
        # at its own line in the file, so a traceback points into the real source
        exec(compile("\n" * (found[name].lineno - 1) + src, path, "exec"), ns)
    return ns


def _mamba_ssm_file(relpath):
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.origin is None:
        pytest.skip("mamba_ssm's source is not on the path: pip download mamba-ssm (or clone "
                    "state-spaces/mamba) and put its directory on PYTHONPATH")
    return os.path.join(os.path.dirname(spec.origin), relpath)


def _mamba_ssm(edits=None, cast=False):
    """mamba_ssm's chunked SSD: ssd_chunk_scan_combined_ref calling chunk_state_ref,
    state_passing_ref and chunk_scan_ref, all copies with ``edits``; ``cast=False`` also
    removes combined_ref's dt.float() (float64 throughout), and ssd_minimal_discrete."""
    ns = {"torch": torch, "F": torch.nn.functional, "rearrange": einops.rearrange,
          "repeat": einops.repeat, "math": math}
    edits = dict(edits or {})
    if not cast:
        edits["ssd_chunk_scan_combined_ref"] = [("dt = dt.float()", "dt = dt")] + \
            edits.get("ssd_chunk_scan_combined_ref", [])
    for rel, names in (("ops/triton/ssd_chunk_state.py", ["chunk_state_ref"]),
                       ("ops/triton/ssd_state_passing.py", ["state_passing_ref"]),
                       ("ops/triton/ssd_chunk_scan.py", ["chunk_scan_ref"]),
                       ("ops/triton/ssd_combined.py", ["ssd_chunk_scan_combined_ref"]),
                       ("modules/ssd_minimal.py", ["segsum", "ssd_minimal_discrete"])):
        _copy(_mamba_ssm_file(rel), ns, edits, names=names)
    return types.SimpleNamespace(**ns)


def _hf_module():
    return pytest.importorskip("transformers.models.mamba2.modeling_mamba2",
                               reason="transformers (with Mamba2) is not installed: pip "
                                      "install transformers")


# HF's float32 casts, removed from the float64 copies (x, B, C, dt, A; the gated norm)
HF_CASTS = [(".float()", "")]
HF_NORM_CASTS = [(".to(torch.float32)", "")]


def _hf_scan(edits=()):
    """A copy of HF's mamba2_chunk_scan (its torch SSD) without its float32 casts."""
    M = _hf_module()
    ns = _copy(M.__file__, dict(vars(M)), {"mamba2_chunk_scan": HF_CASTS + list(edits)},
               names=["mamba2_chunk_scan"])
    return ns["mamba2_chunk_scan"]


# --------------------------------------------------------------- the oracle's side
def _T(a, dtype=torch.float64):
    return torch.tensor(onp.ascontiguousarray(a), dtype=dtype)


def _ssd_reference(P, **opts):
    params = {k: P[k] for k in PARAM_KEYS if k in P}
    inputs = {k: P[k] for k in INPUT_KEYS if k in P}
    opts = dict(opts, chunk_size=Q)
    return bundle(resolve_options("ssd", **opts), params, inputs,
                  compute("ssd", params, inputs, **opts))


def _ranking(rep):
    return [(r["conventions"]["slip"], r["rel_err"]) for r in rep.rows]


def _passes(ref, cand):
    rep = diagnose(ref, cand)
    assert rep.passed and rep.slip is None and rep.precision == "float64", \
        (rep.advice, _ranking(rep)[:2])


def _named(ref, cand, slip, where, top=1e-12, precision="float64"):
    rep = diagnose(ref, cand)
    rank = _ranking(rep)
    print(f"{slip:24s} {where:44s} first {rank[0][0]} {rank[0][1]:.2e}  "
          f"second {rank[1][0]} {rank[1][1]:.2e}")
    assert not rep.passed and rep.advice.startswith("FAIL"), rep.advice
    assert rep.slip == slip and rank[0][0] == slip, rank[:3]
    assert rep.precision == precision, rep.precision
    assert rank[0][1] <= top and rank[1][1] >= 1e-3, rank[:2]


# ------------------------------- mamba_ssm's ssd_chunk_scan_combined_ref and its callees
def _combined_case(dt_softplus=True):
    """L = 12 (combined_ref needs L % chunk_size == 0: see the padding test), 2 groups of
    2 heads, p == h (so D's broadcast can slip), D (h,), z, dt_bias; no initial_states
    (combined_ref has none)."""
    return ssd_params(batch=2, L=12, h=4, g=2, p=4, n=3, seed=7, dtA=(0.05, 1.5), D="h",
                      z=True, dt_bias=True, dt_softplus=dt_softplus)


def _combined(m, P, dtype=torch.float64, dt_softplus=None):
    T = lambda k: _T(P[k], dtype)
    soft = P["dt_softplus"] if dt_softplus is None else dt_softplus
    y = m.ssd_chunk_scan_combined_ref(T("x"), T("dt"), T("A"), T("B"), T("C"), Q, D=T("D"),
                                      z=T("z"), dt_bias=T("dt_bias"), dt_softplus=soft)
    return {"y": y.numpy()}


# slip -> the edits of mamba_ssm's functions that make it
COMBINED_SLIPS = {
    # einops "(g h)" spreads group g over heads g*r..g*r+r-1; "(h g)" is torch's .repeat
    "groups_repeat": {
        "chunk_state_ref": [("b l (g h) d", "b l (h g) d")],
        "chunk_scan_ref": [("b l (g h) d", "b l (h g) d")]},
    "dt_bias_missing": {
        "ssd_chunk_scan_combined_ref": [('dt = dt + rearrange(dt_bias, "h -> h 1 1")',
                                         "dt = dt")]},
    "dt_bias_twice": {
        "ssd_chunk_scan_combined_ref": [('dt = dt + rearrange(dt_bias, "h -> h 1 1")',
                                         'dt = dt + rearrange(dt_bias, "h -> h 1 1") '
                                         '+ rearrange(dt_bias, "h -> h 1 1")')]},
    "softplus_missing": {
        "ssd_chunk_scan_combined_ref": [("dt = F.softplus(dt)", "dt = dt")]},
    "softplus_twice": {
        "ssd_chunk_scan_combined_ref": [("dt = F.softplus(dt)", "dt = F.softplus(F.softplus(dt))")]},
    "A_dt_missing": {
        "ssd_chunk_scan_combined_ref": [('dA = dt * rearrange(A, "h -> h 1 1")',
                                         'dA = torch.ones_like(dt) * rearrange(A, "h -> h 1 1")')]},
    "A_dt_twice": {
        "ssd_chunk_scan_combined_ref": [('dA = dt * rearrange(A, "h -> h 1 1")',
                                         'dA = dt * dt * rearrange(A, "h -> h 1 1")')]},
    # the dt factor of X = x dt: in the state (chunk_state_ref) and within a chunk (chunk_scan_ref)
    "x_dt_missing": {
        "chunk_state_ref": [("dt.to(x.dtype), x)", "torch.ones_like(dt).to(x.dtype), x)")],
        "chunk_scan_ref": [("dt.to(x.dtype),", "torch.ones_like(dt).to(x.dtype),")]},
    "x_dt_twice": {
        "chunk_state_ref": [("dt.to(x.dtype), x)", "(dt * dt).to(x.dtype), x)")],
        "chunk_scan_ref": [("dt.to(x.dtype),", "(dt * dt).to(x.dtype),")]},
    "D_missing": {
        "chunk_scan_ref": [("out = out + x * D", "out = out")]},
    # chunk_scan_ref's D handling: D (h,) made (h, 1) before x * D; without it D[j] scales channel j
    "D_unsqueeze_missing": {
        "chunk_scan_ref": [('D = rearrange(D, "h -> h 1")', "pass")]},
}


@pytest.fixture(scope="module")
def combined():
    P = _combined_case()
    return P, _ssd_reference(P, dt_softplus=True)


def test_combined_ref_as_it_is_passes(combined):
    P, ref = combined
    _passes(ref, _combined(_mamba_ssm(), P))


@pytest.mark.parametrize("slip", list(COMBINED_SLIPS))
def test_slip_in_mamba_ssm_combined_ref_is_named(combined, slip):
    P, ref = combined
    where = "+".join(COMBINED_SLIPS[slip])
    _named(ref, _combined(_mamba_ssm(COMBINED_SLIPS[slip]), P), slip, where)


def test_softplus_where_the_model_has_none_is_named():
    """A caller's slip: combined_ref called with dt_softplus=True for a model without."""
    P = _combined_case(dt_softplus=False)
    ref = _ssd_reference(P)
    _passes(ref, _combined(_mamba_ssm(), P))
    _named(ref, _combined(_mamba_ssm(), P, dt_softplus=True), "softplus_unwanted",
           "ssd_chunk_scan_combined_ref (call)")


def test_combined_ref_as_shipped_in_float32_with_a_slip_is_named_at_float32(combined):
    """Its dt.float() kept, every tensor float32: the slip is still first, at float32."""
    P, ref = combined
    m = _mamba_ssm(COMBINED_SLIPS["dt_bias_twice"], cast=True)
    _named(ref, _combined(m, P, torch.float32), "dt_bias_twice",
           "ssd_chunk_scan_combined_ref float32", top=1e-5, precision="float32")


def test_combined_ref_cannot_pad_so_has_no_final_state_to_leak():
    """combined_ref pads dt when L % chunk_size != 0, but chunk_scan_ref then asserts
    seqlen == nchunks * chunk_size, and it returns no final state: its padding cannot leak
    anywhere (the leak is shown below on chunk_state_ref + state_passing_ref)."""
    P = ssd_params(batch=1, L=10, h=4, g=2, p=4, n=3, seed=1, dt_bias=True, dt_softplus=True)
    m = _mamba_ssm()
    with pytest.raises(AssertionError) as err:
        m.ssd_chunk_scan_combined_ref(*(_T(P[k]) for k in ("x", "dt", "A", "B", "C")), Q,
                                      dt_bias=_T(P["dt_bias"]), dt_softplus=True)
    assert err.traceback[-1].name == "chunk_scan_ref"


# --------------------------------- initial states and the final state (y, final_states)
@pytest.fixture(scope="module")
def stated():
    """L = 10 (a pad of 2 at chunk_size 4), initial_states, D (h,), z, softplus."""
    P = ssd_params(batch=2, L=10, h=4, g=2, p=4, n=3, seed=9, dtA=(0.05, 1.5), D="h", z=True,
                   dt_bias=True, initial_states=True, dt_softplus=True)
    return P, _ssd_reference(P, dt_softplus=True)


def _minimal(m, P, with_initial_states=True):
    """ssd_minimal_discrete (Listing 1, block_len 5) with the mapping a port writes around
    it: X = x dt', A dt', B and C per head (repeat_interleave), D x and the z gate after."""
    t = {k: _T(P[k]) for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias",
                               "initial_states")}
    dtp = torch.nn.functional.softplus(t["dt"] + t["dt_bias"])
    r = t["x"].shape[2] // t["B"].shape[2]
    per_head = lambda v: torch.repeat_interleave(v, r, dim=2)
    init = t["initial_states"][:, None] if with_initial_states else None
    Y, final = m.ssd_minimal_discrete(t["x"] * dtp[..., None], t["A"] * dtp, per_head(t["B"]),
                                      per_head(t["C"]), 5, init)
    y = (Y + t["D"][:, None] * t["x"]) * torch.nn.functional.silu(t["z"])
    return {"y": y.numpy(), "final_states": final.numpy()}


def test_initial_states_not_passed_to_ssd_minimal_discrete_is_named(stated):
    P, ref = stated
    m = _mamba_ssm()
    if "bclgn" in open(_mamba_ssm_file("modules/ssd_minimal.py"), encoding="utf-8").read():
        pytest.skip("this mamba_ssm has the older listing (B, C per group: right only for "
                    "g = 1)")
    _passes(ref, _minimal(m, P))
    _named(ref, _minimal(m, P, with_initial_states=False), "initial_states_ignored",
           "ssd_minimal_discrete (call)")


def _padded_pipeline(m, P):
    """chunk_state_ref + state_passing_ref + chunk_scan_ref on the sequence padded to a
    multiple of chunk_size as ssd_chunk_scan_combined_ref pads it: raw dt = 0 at the pad
    (so dt' = softplus(dt_bias) there), x, B (chunk_state_ref's own F.pad), C, z zero; y cut
    to L, the final state read at the padded end."""
    F = torch.nn.functional
    t = {k: _T(P[k]) for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias",
                               "initial_states")}
    b, L, h, p = t["x"].shape
    n = t["B"].shape[-1]
    pad = -L % Q
    dt = F.pad(t["dt"], (0, 0, 0, pad))                               # as combined_ref does
    dt = einops.rearrange(dt, "b (c l) h -> b h c l", l=Q)
    dt = F.softplus(dt + einops.rearrange(t["dt_bias"], "h -> h 1 1"))
    dA_cumsum = torch.cumsum(dt * einops.rearrange(t["A"], "h -> h 1 1"), dim=-1)
    states = m.chunk_state_ref(t["B"], t["x"], dt, dA_cumsum)
    prev, final = m.state_passing_ref(states.reshape(*states.shape[:3], -1),
                                      dA_cumsum[:, :, :, -1],
                                      t["initial_states"].reshape(b, h, p * n))
    padL = lambda v: F.pad(v, (0, 0, 0, 0, 0, pad))
    y = m.chunk_scan_ref(padL(t["B"]), padL(t["C"]), padL(t["x"]), dt, dA_cumsum,
                         prev.reshape(states.shape), D=t["D"], z=padL(t["z"]))[:, :L]
    return {"y": y.numpy(), "final_states": final.reshape(b, h, p, n).numpy()}


def test_padding_leaking_into_the_final_state_of_mamba_ssm_refs_is_named(stated):
    P, ref = stated
    out = _padded_pipeline(_mamba_ssm(), P)
    _passes(ref, {"y": out["y"]})                   # y is right: the pad comes after it
    _named(ref, out, "padding_leak", "chunk_state_ref+state_passing_ref (padded)")


# ---------------------------------------- HF's mamba2_chunk_scan: the clamp it always does
def _hf_case(dt_softplus):
    """HF's scan takes D (h,) and no z; initial_states; L = 10 (HF pads after the
    discretization: no leak)."""
    P = ssd_params(batch=2, L=10, h=4, g=2, p=3, n=3, seed=11, dtA=(0.05, 1.5), D="h",
                   dt_bias=True, initial_states=True, dt_softplus=dt_softplus)
    return P


def _hf_run(scan, P, **kw):
    t = {k: _T(P[k]) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_states")}
    y, final = scan(t["x"], t["dt"], t["A"], t["B"], t["C"], Q, D=t["D"], dt_bias=t["dt_bias"],
                    initial_states=t["initial_states"], dt_softplus=P["dt_softplus"],
                    return_final_states=True, **kw)
    return {"y": y.numpy(), "final_states": final.numpy()}


def test_hf_chunk_scan_clamp_ignored_is_named():
    P = _hf_case(dt_softplus=True)
    dtp = onp.logaddexp(0, P["dt"] + P["dt_bias"])
    limit = tuple(float(v) for v in onp.quantile(dtp, [0.15, 0.85]))    # binds both ways
    ref = _ssd_reference(P, dt_softplus=True, dt_limit=limit)
    _passes(ref, _hf_run(_hf_scan(), P, dt_limit=limit))
    clamp = "dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])"
    _named(ref, _hf_run(_hf_scan([(clamp, "dt = dt")]), P, dt_limit=limit),
           "dt_limit_ignored", "HF mamba2_chunk_scan")


def test_hf_chunk_scan_clamping_at_zero_without_a_limit_is_named():
    """HF clamps dt' to its default dt_limit (0, inf) always; without softplus a negative
    dt' becomes 0, which mamba_ssm skips (no dt_limit set)."""
    P = _hf_case(dt_softplus=False)
    neg = onp.random.default_rng(3).random(P["dt"].shape) < 0.2
    P["dt"] = onp.where(neg, -0.3 - P["dt_bias"], P["dt"])            # dt' = -0.3 there
    ref = _ssd_reference(P)
    _passes(ref, _hf_run(_hf_scan(), P, dt_limit=(-math.inf, math.inf)))
    _named(ref, _hf_run(_hf_scan(), P), "dt_clamped_at_zero", "HF mamba2_chunk_scan (as is)")


# ------------------------------------------ HF's Mamba2Mixer and its gated RMSNorm
def _hf_mixer(norm_edits=()):
    """HF's Mamba2Mixer (random Mamba2Config, no download; eval: the torch path), 2 groups,
    with its forward, mamba2_chunk_scan and MambaRMSNormGated.forward replaced by copies of
    their source without the float32 casts (and ``norm_edits`` in the norm's)."""
    M = _hf_module()
    from transformers import Mamba2Config
    h, p, n, d = 4, 3, 3, 6
    cfg = Mamba2Config(hidden_size=d, num_heads=h, head_dim=p, state_size=n, n_groups=2,
                       conv_kernel=4, expand=2, chunk_size=5, num_hidden_layers=1, use_bias=True,
                       use_conv_bias=True, vocab_size=8)
    torch.manual_seed(0)
    mixer = M.Mamba2Mixer(cfg, layer_idx=0).double().eval()
    rng = onp.random.default_rng(0)
    with torch.no_grad():
        for _, prm in mixer.named_parameters():
            prm.copy_(torch.tensor(rng.uniform(-0.6, 0.6, size=tuple(prm.shape))))
        mixer.dt_bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, size=h)))
        mixer.norm.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, size=h * p)))
    ns = dict(vars(M), mamba2_chunk_scan=_hf_scan())
    fwd = _copy(M.__file__, ns, {"forward": HF_CASTS}, cls="Mamba2Mixer",
                names=["forward"])["forward"]
    norm = _copy(M.__file__, dict(vars(M)), {"forward": HF_NORM_CASTS + list(norm_edits)},
                 cls="MambaRMSNormGated", names=["forward"])["forward"]
    mixer.forward = types.MethodType(fwd, mixer)
    mixer.norm.forward = types.MethodType(norm, mixer.norm)
    P = {k: v.detach().numpy().copy() for k, v in mixer.state_dict().items()}
    u = rng.normal(size=(2, 13, d))

    def run():
        with torch.no_grad():
            return {"y": mixer(torch.tensor(u)).numpy()}
    return mixer, P, u, run


def _block_reference(P, u, **opts):
    opts = dict(opts, ngroups=2, chunk_size=5)
    inputs = {"hidden_states": u}
    return bundle(resolve_options("mamba2-block", **opts), P, inputs,
                  compute("mamba2-block", P, inputs, **opts))


# HF gates first (norm(y * silu(z))); the slip normalizes first: norm(y) * silu(z)
# (the copy is dedented: a method's body is indented by 4)
NORM_FIRST = [("    if gate is not None:\n"
               "        hidden_states = hidden_states * nn.functional.silu(gate)\n", ""),
              ("return self.weight * hidden_states.to(input_dtype)",
               "return self.weight * hidden_states.to(input_dtype) * nn.functional.silu(gate)")]


def test_hf_mixer_copy_without_casts_passes_in_float64():
    _, P, u, run = _hf_mixer()
    _passes(_block_reference(P, u), run())


def test_hf_mixer_norm_over_the_whole_width_is_named():
    mixer, P, u, run = _hf_mixer()
    mixer.norm.group_size = mixer.intermediate_size          # older transformers' norm
    _named(_block_reference(P, u), run(), "norm_whole_width", "HF MambaRMSNormGated.group_size")


def test_hf_mixer_norm_per_group_against_a_whole_width_reference_is_named():
    _, P, u, run = _hf_mixer()
    _named(_block_reference(P, u, norm_group_size=12), run(), "norm_per_group",
           "HF MambaRMSNormGated (as is)")


def test_hf_mixer_norm_before_the_gate_is_named():
    _, P, u, run = _hf_mixer(NORM_FIRST)
    _named(_block_reference(P, u), run(), "norm_before_gate", "HF MambaRMSNormGated.forward")


def test_hf_mixer_norm_after_the_gate_against_a_norm_first_reference_is_named():
    _, P, u, run = _hf_mixer()
    _named(_block_reference(P, u, norm_before_gate=True), run(), "norm_after_gate",
           "HF MambaRMSNormGated (as is)")
