"""mamba_ssm's own pure-torch SSD references, read from its source and run in float64 on
the oracle's inputs: ``ssd_minimal_discrete`` (the paper's Listing 1, modules/ssd_minimal.py),
``chunk_state_ref`` + ``state_passing_ref`` + ``chunk_scan_ref`` (the chunked algorithm,
ops/triton/ssd_chunk_state.py, ssd_state_passing.py, ssd_chunk_scan.py),
``ssd_chunk_scan_combined_ref`` (ops/triton/ssd_combined.py, which casts dt to float32) and
``selective_state_update_ref`` (the decoding step, ops/triton/selective_state_update.py).

mamba_ssm does not import without its CUDA build, and these files import triton at the
top; nothing is stubbed: only the named function definitions are taken from each file
(``ast``) and run with torch, torch.nn.functional and einops. Skipped, with the reason,
when torch, einops or a mamba_ssm source directory on the path is missing (``pip download
mamba-ssm`` and unpack it, or a clone, on PYTHONPATH)."""
import ast
import importlib.util
import os

import numpy as onp
import pytest

from rssm_ref.oracle.forward import bundle, compute, resolve_options
from rssm_ref.oracle.verify import verify
from rssm_ref.ssd import ssd_dt, ssd_minimal_convention, ssd_params
from rssm_ref.tolerances import rel_err, TOLERANCES

TOL = TOLERANCES["third_party_float64"]
PARAM_KEYS = ["A", "A_log", "D", "dt_bias"]
INPUT_KEYS = ["x", "dt", "B", "C", "z", "initial_states"]


def _load(relpath, names):
    """The functions ``names`` of mamba_ssm's file ``relpath``, defined in a namespace of
    torch, F, rearrange, repeat and math (their files' own imports, less triton)."""
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU)")
    einops = pytest.importorskip("einops", reason="einops is not importable: pip install einops")
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.origin is None:
        pytest.skip("mamba_ssm's source is not on the path: pip download mamba-ssm (or clone "
                    "state-spaces/mamba) and put its directory on PYTHONPATH")
    path = os.path.join(os.path.dirname(spec.origin), relpath)
    tree = ast.parse(open(path, encoding="utf-8").read())
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    if {f.name for f in fns} != set(names):
        pytest.skip(f"{path} lacks {sorted(set(names) - {f.name for f in fns})}")
    import math
    ns = {"torch": torch, "F": torch.nn.functional, "rearrange": einops.rearrange,
          "repeat": einops.repeat, "math": math}
    exec(compile(ast.Module(body=fns, type_ignores=[]), path, "exec"), ns)
    return torch, ns


def _split(P):
    return ({k: P[k] for k in PARAM_KEYS if k in P}, {k: P[k] for k in INPUT_KEYS if k in P})


def _oracle(P, dy, **opts):
    params, inputs = _split(P)
    return compute("ssd", params, dict(inputs, dy=dy), grads=True, **opts)


def test_ssd_minimal_discrete_in_float64():
    """Listing 1 on the inputs of ssd_minimal_convention (g = 2 groups of 2 heads; B, C
    per head), torch's autograd through the mapping X = x dt', A_disc = A dt'
    (dt' = softplus(dt + dt_bias)), B_h = B repeat_interleaved: y, the final state and
    every gradient against the oracle."""
    torch, ns = _load("modules/ssd_minimal.py", ["segsum", "ssd_minimal_discrete"])
    P = ssd_params(batch=2, L=12, h=4, g=2, p=2, n=4, seed=11, dtA=(1e-3, 3.0), dt_bias=True,
                   dt_softplus=True, initial_states=True)
    dy = onp.random.default_rng(2).normal(size=P["x"].shape)
    ours = _oracle(P, dy, dt_softplus=True, chunk_size=5)
    t = {k: torch.tensor(P[k], dtype=torch.float64, requires_grad=True)
         for k in ("x", "dt", "A", "B", "C", "dt_bias", "initial_states")}
    dtp = torch.nn.functional.softplus(t["dt"] + t["dt_bias"])
    m = ssd_minimal_convention(**P)                  # the mapping, checked against torch's
    assert rel_err(dtp.detach().numpy()[..., None] * P["x"], m["X"]) <= TOL
    import inspect
    src = inspect.getsource(ns["ssd_minimal_discrete"])
    if "bclgn" in src:
        pytest.skip("this mamba_ssm has the older listing (B, C per group, contracted apart "
                    "from the heads): right only for g = 1")
    per_head = lambda T: torch.repeat_interleave(T, 2, dim=2)          # head i <- group i // 2
    Y, final = ns["ssd_minimal_discrete"](t["x"] * dtp[..., None], t["A"] * dtp, per_head(t["B"]),
                                          per_head(t["C"]), 4, t["initial_states"][:, None])
    (Y * torch.tensor(dy)).sum().backward()
    assert rel_err(Y.detach().numpy(), ours["y"]) <= TOL
    assert rel_err(final.detach().numpy(), ours["final_states"]) <= TOL
    for k in ("x", "dt", "A", "B", "C", "dt_bias", "initial_states"):
        assert rel_err(t[k].grad.numpy(), ours[f"grad_{k}"]) <= TOL, k


def _chunk_refs():
    torch, a = _load("ops/triton/ssd_chunk_state.py", ["chunk_state_ref"])
    _, b = _load("ops/triton/ssd_state_passing.py", ["state_passing_ref"])
    _, c = _load("ops/triton/ssd_chunk_scan.py", ["chunk_scan_ref"])
    return torch, a["chunk_state_ref"], b["state_passing_ref"], c["chunk_scan_ref"]


def test_chunk_state_passing_and_scan_refs_in_float64():
    """mamba_ssm's chunked pipeline in float64 (dt' and its cumulative sums made in float64
    here: ssd_chunk_scan_combined_ref would cast them to float32), g = 2 groups of 2 heads,
    D (h,), z: y against the oracle."""
    torch, chunk_state_ref, state_passing_ref, chunk_scan_ref = _chunk_refs()
    Q = 4
    P = ssd_params(batch=2, L=12, h=4, g=2, p=3, n=5, seed=12, dtA=(1e-3, 2.0), D="h", z=True,
                   dt_bias=True, dt_softplus=True)
    dy = onp.ones(P["x"].shape)
    ours = _oracle(P, dy, dt_softplus=True, chunk_size=Q)
    tt = {k: torch.tensor(v, dtype=torch.float64) for k, v in P.items() if isinstance(v, onp.ndarray)}
    dtp = torch.tensor(ssd_dt(P["dt"], P["dt_bias"], True))              # (b, L, h)
    b, L, h = dtp.shape
    dt_c = dtp.reshape(b, L // Q, Q, h).permute(0, 3, 1, 2)              # (b, h, c, l)
    dA_cumsum = torch.cumsum(dt_c * tt["A"][None, :, None, None], dim=-1)
    states = chunk_state_ref(tt["B"], tt["x"], dt_c, dA_cumsum)          # (b, c, h, p, n)
    flat = states.reshape(*states.shape[:3], -1)
    prev, final = state_passing_ref(flat, dA_cumsum[:, :, :, -1])
    prev = prev.reshape(states.shape)
    y = chunk_scan_ref(tt["B"], tt["C"], tt["x"], dt_c, dA_cumsum, prev, D=tt["D"], z=tt["z"])
    assert rel_err(y.numpy(), ours["y"]) <= TOL
    assert rel_err(final.reshape(states.shape[:1] + states.shape[2:]).numpy(),
                   ours["final_states"]) <= TOL


def test_ssd_chunk_scan_combined_ref_computes_dt_in_float32():
    """Its dt.float() before the cumulative sum: a float64 run is float32-accurate, which
    verify must say (FAIL at float64, PASS at float32), not call float64-exact."""
    torch, ns = _load("ops/triton/ssd_combined.py", ["ssd_chunk_scan_combined_ref"])
    _, a = _load("ops/triton/ssd_chunk_state.py", ["chunk_state_ref"])
    _, b = _load("ops/triton/ssd_state_passing.py", ["state_passing_ref"])
    _, c = _load("ops/triton/ssd_chunk_scan.py", ["chunk_scan_ref"])
    ns.update(chunk_state_ref=a["chunk_state_ref"], state_passing_ref=b["state_passing_ref"],
              chunk_scan_ref=c["chunk_scan_ref"])
    P = ssd_params(batch=2, L=16, h=4, g=2, p=3, n=5, seed=13, dtA=(1e-3, 2.0), D="h",
                   dt_bias=True, dt_softplus=True)
    tt = {k: torch.tensor(v, dtype=torch.float64) for k, v in P.items() if isinstance(v, onp.ndarray)}
    y = ns["ssd_chunk_scan_combined_ref"](tt["x"], tt["dt"], tt["A"], tt["B"], tt["C"], 4,
                                          D=tt["D"], dt_bias=tt["dt_bias"], dt_softplus=True)
    params, inputs = _split(P)
    opts = resolve_options("ssd", dt_softplus=True, chunk_size=4)
    ref = bundle(opts, params, inputs, compute("ssd", params, inputs, dt_softplus=True,
                                              chunk_size=4))
    cand = {"y": y.numpy()}
    assert cand["y"].dtype == onp.float64
    assert 1e-10 < rel_err(cand["y"], ref["y"]) < 1e-5
    assert verify(ref, cand, "float64").verdict == "FAIL"
    assert verify(ref, cand, "float32").verdict == "PASS"


def test_selective_state_update_ref_is_one_decoding_step():
    """The decoding step with heads (state (b, h, p, n), dt and dt_bias per (h, p) as
    Mamba2.step repeats them, B, C per group) equals the oracle's SSD over one token from
    initial_states = the state: its output y and the state it writes in place."""
    torch, ns = _load("ops/triton/selective_state_update.py", ["selective_state_update_ref"])
    P = ssd_params(batch=3, L=1, h=4, g=2, p=3, n=5, seed=14, dtA=(1e-2, 2.0), D="h", z=True,
                   dt_bias=True, dt_softplus=True, initial_states=True)
    ours = _oracle(P, onp.ones(P["x"].shape), dt_softplus=True)
    h, p, n = P["x"].shape[2], P["x"].shape[3], P["B"].shape[3]
    T = lambda a: torch.tensor(onp.ascontiguousarray(a), dtype=torch.float64)
    state = T(P["initial_states"]).clone()
    rep = lambda v: onp.repeat(v[..., None], p, axis=-1)               # per head -> (.., h, p)
    out = ns["selective_state_update_ref"](
        state, T(P["x"][:, 0]), T(rep(P["dt"][:, 0])),
        T(onp.broadcast_to(P["A"][:, None, None], (h, p, n))), T(P["B"][:, 0]), T(P["C"][:, 0]),
        D=T(rep(P["D"])), z=T(P["z"][:, 0]), dt_bias=T(rep(P["dt_bias"])), dt_softplus=True)
    assert rel_err(out.numpy(), ours["y"][:, 0]) <= TOL
    assert rel_err(state.numpy(), ours["final_states"]) <= TOL
