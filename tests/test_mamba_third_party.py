"""Real third-party Mamba code against the oracle, when it is importable here.

mambapy's ``MambaBlock`` (pscan and sequential scan) and mamba_ssm's pure-PyTorch
``selective_scan_ref`` are run on a Mamba-layout parameter set; their outputs and
gradients, taken under the layer's own key names, are judged by ``verify`` against
``forward --model mamba``. Everything here is skipped, with its reason, when torch is
not importable (CI needs no torch): ``pip install -e ".[thirdparty]"`` brings torch (the
CPU wheel suffices), mambapy and einops. mamba_ssm's package does not import without its
CUDA extension, so ``selective_scan_ref`` is read from its installed source file (a
``mamba_ssm`` directory on the path) and only that function is executed.
"""
import ast
import importlib.util
import os

import numpy as onp
import pytest

from rssm_ref.oracle import forward, mamba
from rssm_ref.oracle.diagnose import diagnose
from rssm_ref.oracle.verify import verify

try:
    import torch
except Exception as exc:     # not installed, or an install that fails to load
    pytest.skip(f"torch is not importable ({type(exc).__name__}: {exc}): pip install -e "
                "'.[thirdparty]' (CPU torch suffices) to run real mambapy / mamba_ssm code "
                "against the oracle", allow_module_level=True)

M, N, R, BATCH, L = 16, 4, 2, 2, 48


def _case(layout="channel-last"):
    P = mamba.random_params(m=M, n=N, dt_rank=R, seed=0)
    rng = onp.random.default_rng(1)
    shape = (BATCH, L, M) if layout == "channel-last" else (BATCH, M, L)
    U = {"u": rng.standard_normal(shape), "dy": rng.standard_normal(shape)}
    return P, U


def _reference(P, U, **opts):
    o = forward.resolve_options("mamba", grads=True, **opts)
    return forward.bundle(o, P, U, forward.compute("mamba", P, U, grads=True, **opts))


def _grads_of(params, inputs, y, dy):
    (y * torch.tensor(dy, dtype=y.dtype)).sum().backward()
    out = {"y": y.detach().numpy(), "grad_u": inputs.grad.numpy()}
    out.update({"grad_" + k: t.grad.numpy() for k, t in params.items()})
    return out


# ------------------------------------------------------------------ mambapy
def _mambapy_block(P, dtype, pscan):
    mp = pytest.importorskip("mambapy.mamba", reason="mambapy is not importable: pip install "
                                                     "mambapy")
    torch.manual_seed(0)
    cfg = mp.MambaConfig(d_model=M // 2, n_layers=1, d_state=N, dt_rank=R, pscan=pscan)
    blk = mp.MambaBlock(cfg).to(dtype)
    # the oracle's keys are the block's own state_dict names
    missing, unexpected = blk.load_state_dict({k: torch.tensor(v, dtype=dtype)
                                               for k, v in P.items()}, strict=False)
    assert not unexpected and set(missing) == {"in_proj.weight", "conv1d.weight",
                                               "conv1d.bias", "out_proj.weight"}
    return blk


def _run_mambapy(P, U, dtype, pscan):
    blk = _mambapy_block(P, dtype, pscan)
    x = torch.tensor(U["u"], dtype=dtype, requires_grad=True)
    y = blk.ssm(x, None)                      # (batch, L, d_inner), no z-gate
    named = dict(blk.named_parameters())
    return _grads_of({k: named[k] for k in P}, x, y, U["dy"])


@pytest.mark.parametrize("pscan", [True, False], ids=["pscan", "sequential"])
def test_mambapy_float32_block_matches_at_float32_and_not_at_float64(pscan):
    P, U = _case()
    ref = _reference(P, U)
    cand = _run_mambapy(P, U, torch.float32, pscan)
    assert verify(ref, cand, "float32").passed, verify(ref, cand, "float32").to_text()
    r64 = verify(ref, cand, "float64")
    assert not r64.passed and all(t.rel > 1e-9 for t in r64.tensors), r64.to_text()


@pytest.mark.parametrize("pscan", [True, False], ids=["pscan", "sequential"])
def test_mambapy_float64_block_is_float64_except_where_it_rounds_to_float32(pscan):
    P, U = _case()
    ref = _reference(P, U)
    cand = _run_mambapy(P, U, torch.float64, pscan)
    rep = verify(ref, cand, "float64")
    by = {t.name: t for t in rep.tensors}
    # ssm() takes A_log.float() and D.float(): their gradients come back through a float32
    # cast, the rest of the layer is float64 throughout
    rounded = {"grad_A_log", "grad_D"}
    assert all(t.passed for k, t in by.items() if k not in rounded), rep.to_text()
    assert verify(ref, cand, "float32").passed


def test_mambapy_with_the_paper_defaults_fails_at_step_0_and_diagnose_names_mamba():
    P, U = _case()
    ref = _reference(P, U, discretization="zoh", output="before")     # the forgotten flags
    cand = _run_mambapy(P, U, torch.float32, True)
    rep = verify(ref, {"y": cand["y"]}, "float32")
    assert not rep.passed and rep.tensors[0].first_bad_t == 0
    d = diagnose(ref, cand)
    assert d.best["discretization"] == "euler" and d.best["output"] == "after"
    assert d.precision == "float32" and d.rerun_flags == "--discretization euler --output after"


# ------------------------------------------------------------------ mamba_ssm
def _selective_scan_ref():
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.origin is None:
        pytest.skip("mamba_ssm is not on the path: pip download mamba-ssm and put its source "
                    "directory on PYTHONPATH (its package needs a CUDA build to import)")
    einops = pytest.importorskip("einops", reason="einops is not importable: pip install einops")
    path = os.path.join(os.path.dirname(spec.origin), "ops", "selective_scan_interface.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "selective_scan_ref"]
    if not fn:
        pytest.skip(f"{path} has no selective_scan_ref")
    ns = {"torch": torch, "F": torch.nn.functional, "rearrange": einops.rearrange,
          "repeat": einops.repeat}
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), ns)
    return ns["selective_scan_ref"]


def _run_mamba_ssm(P, U):
    """The mapping of docs/12-verify-mamba.md, channel-first, in float32 (what
    selective_scan_ref computes in whatever it is given)."""
    ssr = _selective_scan_ref()
    T = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in P.items()}
    u = torch.tensor(U["u"], dtype=torch.float32, requires_grad=True)       # (batch, d, L)
    x_dbl = torch.einsum("bdl,kd->bkl", u, T["x_proj.weight"])              # (batch, r+2n, L)
    delta = torch.einsum("dr,brl->bdl", T["dt_proj.weight"], x_dbl[:, :R])  # before bias, softplus
    y, last = ssr(u, delta, -torch.exp(T["A_log"]), x_dbl[:, R:R + N], x_dbl[:, R + N:],
                  T["D"], z=None, delta_bias=T["dt_proj.bias"], delta_softplus=True,
                  return_last_state=True)
    out = _grads_of(T, u, y, U["dy"])
    out["last_state"] = last.detach().numpy()
    return out


def test_mamba_ssm_selective_scan_ref_matches_with_gradients_in_its_layout():
    P, U = _case("channel-first")
    cand = _run_mamba_ssm(P, U)
    o = forward.resolve_options("mamba", grads=True, intermediates=True, layout="channel-first")
    ref = forward.bundle(o, P, U, forward.compute("mamba", P, U, grads=True, intermediates=True,
                                                  layout="channel-first"))
    rep = verify(ref, cand, "float32")
    assert rep.passed and len(rep.tensors) == 8, rep.to_text()
    assert not verify(ref, cand, "float64").passed
    # the same candidate against the paper's defaults: a diagnosis, not a mystery
    bad = _reference(P, U, layout="channel-first", discretization="zoh", output="before")
    d = diagnose(bad, cand)
    assert d.best == {"discretization": "euler", "output": "after", "D": "yes",
                      "layout": "channel-first"} and d.precision == "float32"
