"""--model ssd: Mamba-2's SSD core through the oracle's commands (init, forward, verify),
its options, its bad inputs, and (optional: skipped without torch) a float64 torch port of
mamba_ssm's ssd_minimal_discrete (the paper's Listing 1), written here, against it.

Expectations come from paths that share no code with the oracle's: the time loop
``ssd_ref`` (outputs) and autograd through it (gradients), or torch."""
import json
import os

import autograd
import autograd.numpy as anp
import numpy as onp
import pytest

from rssm_ref.oracle.forward import compute
from rssm_ref.ssd import ssd_dt, ssd_params, ssd_ref
from rssm_ref.tolerances import TOLERANCES, rel_err
from _helpers import candidate_file, run_cli

TOL_Y = TOLERANCES["chunked_vs_recurrence"]
TOL_GRAD = TOLERANCES["ssd_vjp_vs_autograd"]
PARAM_KEYS = ("A", "A_log", "D", "dt_bias")
INPUT_KEYS = ("x", "dt", "B", "C", "z", "initial_states")


_run = run_cli


def _split(P):
    """ssd_params' dict -> (params, inputs) in the file format's keys."""
    return ({k: P[k] for k in PARAM_KEYS if k in P}, {k: P[k] for k in INPUT_KEYS if k in P})


def _ref_grads(P, dy):
    """Autograd through the time loop: gradients of sum(y * dy) for every array."""
    names = [k for k in PARAM_KEYS + INPUT_KEYS if k in P]

    def f(args):
        return anp.sum(ssd_ref(**{**P, **dict(zip(names, args))})["y"] * dy)
    return dict(zip(names, autograd.grad(f)([P[k] for k in names])))


@pytest.fixture
def files(tmp_path):
    P, U = tmp_path / "P.npz", tmp_path / "U.npz"
    res = _run("init", "--model", "ssd", "--heads", 4, "--ngroups", 2, "--p", 3, "--n", 2,
               "--seed", 3, "--length", 11, "--out", P, "--inputs-out", U)
    assert res.exit_code == 0, res.output
    return tmp_path, P, U


_candidate = candidate_file


# ------------------------------------------------------------------ forward
def test_forward_writes_every_output_and_they_are_the_loop_s(files):
    d, P, U = files
    R = d / "R.npz"
    res = _run("forward", "--model", "ssd", "--params", P, "--inputs", U, "--out", R,
               "--grads", "--intermediates", "--dt-softplus", "--chunk-size", 4)
    assert res.exit_code == 0, res.output
    o = dict(onp.load(R))
    Pz, Uz = dict(onp.load(P)), dict(onp.load(U))
    assert sorted(Pz) == ["A_log", "D", "dt_bias"]
    keys = {"y", "final_states", "chunk_states"} | {f"grad_{k}" for k in list(Pz) + list(Uz)
                                                     if k != "dy"}
    assert keys == {k for k in o if not k.startswith(("param__", "input__", "options"))}
    args = {**Pz, **{k: v for k, v in Uz.items() if k != "dy"}, "dt_softplus": True}
    want = ssd_ref(**args)
    assert rel_err(o["y"], want["y"]) <= TOL_Y
    assert rel_err(o["final_states"], want["final_states"]) <= TOL_Y
    # chunk c ends at position min(4 (c + 1), 11) - 1: the loop run up to there
    assert o["chunk_states"].shape == (2, 3, 4, 3, 2)
    for c, e in enumerate((4, 8, 11)):
        cut = {k: (v[:, :e] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
        assert rel_err(o["chunk_states"][:, c], ssd_ref(**cut)["final_states"]) <= TOL_Y
    for k, g in _ref_grads(args, Uz["dy"]).items():
        assert rel_err(o[f"grad_{k}"], g) <= TOL_GRAD, k
    opts = json.loads(bytes(o["options_json"]).decode())
    assert (opts["model"], opts["dt_softplus"], opts["dt_limit"], opts["chunk_size"]) == \
        ("ssd", True, [0.0, None], 4)


def test_the_outputs_do_not_depend_on_the_chunk_size():
    P = ssd_params(batch=2, L=13, h=4, g=1, p=2, n=3, seed=4, D="hp", z=True, dt_bias=True,
                   dt_softplus=True, initial_states=True, A_log=True)
    params, inputs = _split(P)
    inputs["dy"] = onp.random.default_rng(0).normal(size=P["x"].shape)
    outs = [compute("ssd", params, inputs, grads=True, dt_softplus=True, chunk_size=Q)
            for Q in (1, 3, 5, 13, 256)]
    for o in outs[1:]:
        assert rel_err(o["y"], outs[0]["y"]) <= TOL_Y
        assert rel_err(o["final_states"], outs[0]["final_states"]) <= TOL_Y
        for k in o:
            if k.startswith("grad_"):
                assert rel_err(o[k], outs[0][k]) <= TOL_GRAD, k


def test_dt_limit_and_A_given_directly(tmp_path):
    P = ssd_params(batch=1, L=9, h=2, g=2, p=2, n=2, seed=5, D="h")
    lo, hi = [float(v) for v in onp.quantile(P["dt"], [0.3, 0.7])]
    params, inputs = _split(P)
    onp.savez(tmp_path / "P.npz", **params)
    onp.savez(tmp_path / "U.npz", **inputs)
    res = _run("forward", "--model", "ssd", "--params", tmp_path / "P.npz", "--inputs",
               tmp_path / "U.npz", "--out", tmp_path / "O.npz", "--grads", "--dt-limit", lo, hi)
    assert res.exit_code == 0, res.output
    o = onp.load(tmp_path / "O.npz")
    args = dict(P, dt_limit=(lo, hi))
    assert rel_err(o["y"], ssd_ref(**args)["y"]) <= TOL_Y
    g = _ref_grads(args, onp.ones(P["x"].shape))
    assert rel_err(o["grad_A"], g["A"]) <= TOL_GRAD
    # mamba_ssm's clamp: no gradient where dt lies strictly outside [lo, hi]
    outside = (P["dt"] < lo) | (P["dt"] > hi)
    assert outside.any() and not o["grad_dt"][outside].any()
    assert rel_err(o["grad_dt"], g["dt"]) <= TOL_GRAD
    # an open upper bound is stored as null (JSON has no infinity)
    res = _run("forward", "--model", "ssd", "--params", tmp_path / "P.npz", "--inputs",
               tmp_path / "U.npz", "--out", tmp_path / "O2.npz", "--dt-limit", lo, "inf")
    assert res.exit_code == 0, res.output
    opts = json.loads(bytes(onp.load(tmp_path / "O2.npz")["options_json"]).decode())
    assert opts["dt_limit"] == [lo, None]


# ------------------------------------------------------------------ verify
def test_verify_passes_the_exact_candidate_and_fails_a_perturbed_one(files):
    d, P, U = files
    R = d / "R.npz"
    assert _run("forward", "--model", "ssd", "--params", P, "--inputs", U, "--out", R,
                "--grads", "--intermediates", "--chunk-size", 4).exit_code == 0
    _candidate(R, d / "same.npz")
    res = _run("verify", "--reference", R, "--candidate", d / "same.npz")
    assert res.exit_code == 0 and "PASS" in res.output, res.output

    def nudge(o):          # one wrong entry of one gradient, by a millionth
        o["grad_B"] = o["grad_B"].copy()
        o["grad_B"][1, 5, 0, 1] *= 1.0 + 1e-6
    _candidate(R, d / "bad.npz", nudge)
    res = _run("verify", "--reference", R, "--candidate", d / "bad.npz")
    assert res.exit_code == 1, res.output
    bad = [line for line in res.output.splitlines() if "MISMATCH" in line]
    assert len(bad) == 1 and bad[0].startswith("grad_B") and "(1, 5, 0, 1)" in bad[0]


def test_verify_in_float32(files):
    d, P, U = files
    R = d / "R.npz"
    assert _run("forward", "--model", "ssd", "--params", P, "--inputs", U, "--out", R,
                "--grads", "--dt-softplus").exit_code == 0
    # the reference rounded to float32 passes at float32 (read from the dtype) ...
    _candidate(R, d / "f32.npz", dtype=onp.float32)
    res = _run("verify", "--reference", R, "--candidate", d / "f32.npz")
    assert res.exit_code == 0 and "precision float32" in res.output, res.output
    # ... and a float32 error a hundred times the rounding fails
    def off(o):
        o["y"] = o["y"] * (1.0 + 1e-5)
    _candidate(R, d / "f32bad.npz", off, dtype=onp.float32)
    res = _run("verify", "--reference", R, "--candidate", d / "f32bad.npz")
    assert res.exit_code == 1 and "MISMATCH" in res.output, res.output


@pytest.mark.parametrize("precision", ["float64", "float32", "bfloat16"])
def test_the_emulated_recurrence_is_the_oracle_in_float64_and_rounds_below(precision):
    """verify's yardstick (rssm_ref.oracle.precision.ssd_scan, the recurrence with every
    result rounded): in float64 an independent implementation of the outputs and every
    gradient; in float32 / bfloat16 within 20 unit roundoffs of them."""
    from rssm_ref.oracle.forward import resolve_options
    from rssm_ref.oracle.precision import emulate
    P = ssd_params(batch=2, L=9, h=4, g=2, p=2, n=3, seed=2, D="hp", z=True, dt_bias=True,
                   dt_softplus=True, initial_states=True)
    dtp = ssd_dt(P["dt"], P["dt_bias"], True)
    lo, hi = [float(v) for v in onp.quantile(dtp, [0.2, 0.8])]          # the clamp binds
    params, inputs = _split(P)
    kw = dict(dt_softplus=True, dt_limit=(lo, hi), chunk_size=4, intermediates=True)
    ours = compute("ssd", params, inputs, grads=True, **kw)
    run = emulate("ssd", params, inputs, resolve_options("ssd", grads=True, **kw), precision,
                  grads=True)
    assert set(run) == set(ours)
    # measured: 6 unit roundoffs (float32), 3 (bfloat16)
    unit = {"float64": TOL_GRAD, "float32": 20 * 2.0 ** -24, "bfloat16": 20 * 2.0 ** -8}
    for k in ours:
        assert rel_err(run[k], ours[k]) <= unit[precision], (k, rel_err(run[k], ours[k]))
    assert not ours["grad_dt"][(dtp < lo) | (dtp > hi)].any()


# ------------------------------------------------------------------ bad input
def _ones(*shape):
    return onp.ones(shape)


BAD = [
    (lambda P, U: U.update(B=_ones(2, 5, 3, 2), C=_ones(2, 5, 3, 2)), [],
     "U.npz: key 'B': ngroups g = 3 does not divide nheads h = 4"),
    (lambda P, U: U.update(dt=_ones(2, 5, 3)), [], "U.npz: key 'dt': shape (2, 5, 3) gives h = 3"),
    (lambda P, U: U.update(C=_ones(2, 5, 2, 3)), [],
     "U.npz: key 'C': shape (2, 5, 2, 3) gives n = 3"),
    (lambda P, U: U.update(initial_states=_ones(2, 4, 3, 3)), [], "U.npz: key 'initial_states'"),
    (lambda P, U: U.update(z=_ones(2, 5, 4, 2)), [], "U.npz: key 'z'"),
    (lambda P, U: U.pop("dt"), [], "U.npz: missing key 'dt'"),
    (lambda P, U: U.update(u=_ones(2, 5, 4)), [], "U.npz: unexpected key 'u' for --model ssd"),
    (lambda P, U: P.update(A=onp.array([-1.0, 0.5, -1.0, -2.0])) or P.pop("A_log"), [],
     "P.npz: key 'A': entry 1 = 0.5 is not negative"),
    (lambda P, U: P.update(A=-_ones(4)), [], "P.npz: key 'A' mixes forms with key 'A_log'"),
    (lambda P, U: P.pop("A_log"), [], "P.npz: missing key 'A_log' (expected A_log"),
    (lambda P, U: P.update(D=_ones(4, 3, 1)), [], "P.npz: key 'D': shape (4, 3, 1)"),
    (lambda P, U: P.update(dt_bias=_ones(3)), [], "P.npz: key 'dt_bias'"),
    (lambda P, U: P.update(A_log=onp.full(4, 800.0)), [], "P.npz: key 'A_log': entry 0"),
    (lambda P, U: None, ["--dt-limit", 2, 1], "dt_limit: (2.0, 1.0)"),
    (lambda P, U: None, ["--chunk-size", 0], "chunk_size: 0"),
    (lambda P, U: None, ["--layout", "channel-first"],
     "layout: 'channel-first' given for --model ssd"),
    (lambda P, U: None, ["--discretization", "zoh"], "discretization: 'zoh' given for --model ssd"),
]


@pytest.mark.parametrize("edit, flags, needle", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_exit_2_naming_the_file_and_key(tmp_path, edit, flags, needle):
    P = ssd_params(batch=2, L=5, h=4, g=2, p=3, n=2, seed=0, A_log=True, D="h", z=True,
                   initial_states=True, dt_bias=True)
    params, inputs = _split(P)
    edit(params, inputs)
    onp.savez(tmp_path / "P.npz", **params)
    onp.savez(tmp_path / "U.npz", **inputs)
    res = _run("forward", "--model", "ssd", "--params", tmp_path / "P.npz",
               "--inputs", tmp_path / "U.npz", "--out", tmp_path / "O.npz", *flags)
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "O.npz")


@pytest.mark.parametrize("args, needle", [
    (["forward", "--model", "lti", "--dt-softplus"], "dt_softplus: given for --model lti"),
    (["forward", "--model", "selective", "--chunk-size", 8], "chunk_size: given for --model"),
    (["init", "--model", "ssd", "--heads", 4, "--ngroups", 3], "--ngroups: 3 does not divide"),
    (["init", "--model", "ssd", "--m", 4], "--m: given for --model ssd"),
    (["init", "--model", "lti", "--heads", 2], "--heads: given for --model lti"),
])
def test_ssd_options_elsewhere_and_bad_init_sizes_are_refused(tmp_path, args, needle):
    onp.savez(tmp_path / "P.npz", num=_ones(1, 1, 2), den=onp.array([[1.0, -0.5]]))
    onp.savez(tmp_path / "U.npz", u=_ones(1, 3, 1))
    files = (["--params", tmp_path / "P.npz", "--inputs", tmp_path / "U.npz", "--out",
              tmp_path / "O.npz"] if args[0] == "forward" else ["--out", tmp_path / "Q.npz"])
    res = _run(*args, *files)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert not os.path.exists(tmp_path / "O.npz") and not os.path.exists(tmp_path / "Q.npz")


# ------------------------------------------------------------------ torch, optional
def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: pip install torch (CPU) "
                               "to run the ssd_minimal_discrete port against the oracle")


def _segsum_torch(torch, x):
    """Listing 1's stable segment sum: masked cumulative sums, -inf above the diagonal."""
    T = x.shape[-1]
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), -1), 0.0)
    s = torch.cumsum(x, dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), 0), -torch.inf)


def _ssd_minimal_discrete(torch, X, A, B, C, block_len, initial_states):
    """The paper's Listing 1 (mamba_ssm's ssd_minimal_discrete) for ngroups = 1, in torch:
    X, A already multiplied by dt. X (b, L, h, p), A (b, L, h), B, C (b, L, 1, n),
    initial_states (b, 1, 1, h, p, n), as the listing concatenates it to its states
    (b, c, g, h, p, n) -> Y (b, L, h, p), final state (b, 1, h, p, n)."""
    b, L, h, p = X.shape
    c = L // block_len
    X, A, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, A, B, C))
    A = A.permute(0, 3, 1, 2)                                   # (b, h, c, l)
    A_cumsum = torch.cumsum(A, dim=-1)
    Lm = torch.exp(_segsum_torch(torch, A))
    Y_diag = torch.einsum("bclgn,bcsgn,bhcls,bcshp->bclhp", C, B, Lm, X)
    decay_states = torch.exp(A_cumsum[..., -1:] - A_cumsum)
    states = torch.einsum("bclgn,bhcl,bclhp->bcghpn", B, decay_states, X)
    states = torch.cat([initial_states, states], dim=1)
    edge = torch.nn.functional.pad(A_cumsum[..., -1], (1, 0))
    decay_chunk = torch.exp(_segsum_torch(torch, edge))
    new_states = torch.einsum("bhzc,bcghpn->bzghpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclgn,bcghpn,bhcl->bclhp", C, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, L, h, p), final


def test_torch_port_of_ssd_minimal_discrete_float64():
    """X = x dt', A_disc = A dt' (the listing's pre-multiplied convention, mapped in torch
    so that its autograd reaches x, dt and A); y, the final state and every gradient of
    sum(y * dy) against the oracle. ngroups = 1: the listing contracts the group axis
    independently of the heads."""
    torch = _torch()
    P = ssd_params(batch=2, L=12, h=3, g=1, p=2, n=4, seed=9, dtA=(1e-3, 2.0),
                   initial_states=True)
    dy = onp.random.default_rng(1).normal(size=P["x"].shape)
    params, inputs = _split(P)
    ours = compute("ssd", params, dict(inputs, dy=dy), grads=True, chunk_size=5)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in {**params, **inputs}.items()}
    Y, final = _ssd_minimal_discrete(torch, t["x"] * t["dt"][..., None], t["A"] * t["dt"],
                                     t["B"], t["C"], 4, t["initial_states"][:, None, None])
    final = final[:, 0]
    (Y * torch.tensor(dy)).sum().backward()
    tol = TOLERANCES["third_party_float64"]
    assert rel_err(Y.detach().numpy(), ours["y"]) <= tol
    assert rel_err(final.detach().numpy(), ours["final_states"]) <= tol
    for k, v in t.items():
        assert rel_err(v.grad.numpy(), ours[f"grad_{k}"]) <= tol, k
