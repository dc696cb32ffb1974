"""A candidate key typo against a reference that has gradients gets the nearest expected
key, not the advice to rerun forward with --grads."""
import numpy as onp
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.oracle import forward, mamba


def _files(tmp_path, grads):
    P = mamba.random_params(m=4, n=3, seed=1)
    U = {"u": onp.random.default_rng(2).standard_normal((1, 6, 4))}
    out = forward.compute("mamba", P, U, grads=True)
    ref = forward.bundle(forward.resolve_options("mamba", grads=grads), P, U,
                         forward.compute("mamba", P, U, grads=grads))
    onp.savez(tmp_path / "O.npz", **ref)
    onp.savez(tmp_path / "C.npz", y=out["y"], grad_x_proj_weight=out["grad_x_proj.weight"])
    return ["--reference", str(tmp_path / "O.npz"), "--candidate", str(tmp_path / "C.npz")]


def test_typo_gets_the_nearest_key(tmp_path):
    for cmd in ("verify", "diagnose"):
        res = CliRunner().invoke(main, [cmd, *_files(tmp_path, grads=True)])
        assert res.exit_code == 2, res.output
        assert "did you mean 'grad_x_proj.weight'?" in res.output, res.output
        assert "--grads" not in res.output and "Traceback" not in res.output


def test_reference_without_gradients_still_says_rerun_with_grads(tmp_path):
    P = mamba.random_params(m=4, n=3, seed=1)
    U = {"u": onp.ones((1, 6, 4))}
    out = forward.compute("mamba", P, U, grads=True)
    onp.savez(tmp_path / "O.npz", **forward.bundle(forward.resolve_options("mamba"), P, U,
                                                   forward.compute("mamba", P, U)))
    onp.savez(tmp_path / "C.npz", y=out["y"], grad_u=out["grad_u"])
    res = CliRunner().invoke(main, ["verify", "--reference", str(tmp_path / "O.npz"),
                                    "--candidate", str(tmp_path / "C.npz")])
    assert "rerun forward with --grads" in res.output, res.output
