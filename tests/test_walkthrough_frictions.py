"""What a new user's walk through docs/12 and docs/14 tripped on: a prefix short of a
layer's, the gradient of a state the reference was not given, --ngroups on the wrong model."""
import numpy as onp
from click.testing import CliRunner

from rssm_ref.app.cli import main
from rssm_ref.mamba_block import mamba_block_params
from rssm_ref.oracle.verify import missing_key_hint
from rssm_ref.util.safetensors import write


def _model(tmp_path):
    arrays = {}
    for i in range(2):
        P = mamba_block_params(d_model=4, d_state=2, seed=i)
        arrays.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in P.items()})
    path = tmp_path / "m.safetensors"
    write(str(path), arrays)
    onp.savez(tmp_path / "U.npz", hidden_states=onp.ones((1, 3, 4)))
    return str(path), str(tmp_path / "U.npz")


def test_a_prefix_short_of_a_layer_names_the_whole_prefix(tmp_path):
    model, U = _model(tmp_path)
    for short in ("backbone.layers.1.", "backbone.layers.1.mixer"):
        res = CliRunner().invoke(main, ["forward", "--model", "mamba-block", "--params", model,
                                        "--prefix", short, "--inputs", U,
                                        "--out", str(tmp_path / "o.npz")])
        assert res.exit_code == 2
        assert "'backbone.layers.1.mixer.'" in res.output and "stops short" in res.output
        assert not (tmp_path / "o.npz").exists()


def test_a_state_gradient_without_the_state_says_how_to_get_it():
    hint = missing_key_hint("grad_ssm_state", {"y": 0, "ssm_state": 0, "grad_D": 0}, set(), set())
    assert "initial ssm_state" in hint and "--grads" in hint


def test_ngroups_on_a_model_without_groups_names_both_uses(tmp_path):
    model, U = _model(tmp_path)
    res = CliRunner().invoke(main, ["forward", "--model", "mamba-block", "--params", model,
                                    "--prefix", "backbone.layers.0.mixer.", "--inputs", U,
                                    "--out", str(tmp_path / "o.npz"), "--ngroups", "2"])
    assert res.exit_code == 2 and "mamba2-block" in res.output and "heads-flat" in res.output
