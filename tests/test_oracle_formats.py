"""The file format: what it accepts, what it computes from shapes, how it round-trips."""
import json
import os

import numpy as onp
import pytest

from rssm_ref.oracle import formats, sample


@pytest.mark.parametrize("model,form", [("lti", "tf"), ("lti", "ss"), ("residual", "tf"),
                                        ("residual", "ss"), ("selective", None)])
def test_init_params_are_accepted_and_sizes_inferred(model, form):
    P = sample.init_params(model, seed=3, form=form, m=2)
    checked, sizes = formats.check_params(model, P)
    assert set(checked) == set(P)
    assert all(v.dtype == onp.float64 for v in checked.values())
    assert sizes["m"] == 2
    block_forms = set(formats.param_form(model, checked).values())
    assert len(block_forms) == 1


def test_sizes_bind_across_params_and_inputs():
    P = {"A": -onp.ones((3, 4)), "W_delta": onp.zeros((3, 3)), "W_B": onp.zeros((4, 3)),
         "W_C": onp.zeros((4, 3))}
    _, sizes = formats.check_params("selective", P)
    assert (sizes["m"], sizes["n"]) == (3, 4)
    _, sizes = formats.check_inputs("selective", {"u": onp.zeros((5, 7, 3)),
                                                  "dy": onp.zeros((5, 7, 3))}, sizes)
    assert (sizes["batch"], sizes["L"]) == (5, 7)
    shapes = formats.output_shapes("selective", sizes)
    assert shapes == {"y": (5, 7, 3), "delta": (5, 7, 3), "h": (5, 7, 3, 4),
                      "last_state": (5, 3, 4)}


def test_inconsistent_size_names_both_sources():
    P = {"A": onp.eye(2) * 0.5, "B": onp.ones((3, 1)), "C": onp.ones((1, 2)), "D": onp.ones((1, 1))}
    with pytest.raises(ValueError) as e:
        formats.check_params("lti", P, where="P.npz")
    msg = str(e.value)
    assert "P.npz: key 'B'" in msg and "n = 3" in msg and "key 'A' gives n = 2" in msg


def test_inputs_m_mismatch_names_params_file():
    P, sizes = formats.check_params("lti", sample.init_params("lti", seed=0, m=2))
    with pytest.raises(ValueError, match=r"U.npz: key 'u'.*m = 3, but P.npz gives m = 2"):
        formats.check_inputs("lti", {"u": onp.zeros((1, 4, 3))}, sizes, where="U.npz",
                             params_where="P.npz")


def test_float32_is_refused_not_silently_cast():
    P = sample.init_params("lti", seed=0)
    P["num"] = P["num"].astype(onp.float32)
    with pytest.raises(TypeError, match="key 'num': dtype float32 .expected float64"):
        formats.check_params("lti", P)


def test_stability_checks_and_override():
    P = {"num": onp.ones((1, 1, 2)), "den": onp.array([[1.0, -1.0]])}     # pole at 1
    with pytest.raises(ValueError, match="modulus 1"):
        formats.check_params("lti", P)
    formats.check_params("lti", P, allow_unstable=True)
    A = onp.array([[0.0, 1.01], [-1.01, 0.0]])                              # |λ| = 1.01
    P = {"A": A, "B": onp.ones((2, 1)), "C": onp.ones((1, 2)), "D": onp.zeros((1, 1))}
    with pytest.raises(ValueError, match="eigenvalue of modulus 1.01"):
        formats.check_params("lti", P)
    formats.check_params("lti", P, allow_unstable=True)


def test_zero_leading_den_refused_even_when_unstable_allowed():
    P = {"num": onp.ones((1, 1, 2)), "den": onp.array([[0.0, 1.0]])}
    with pytest.raises(ValueError, match="zero leading coefficient"):
        formats.check_params("lti", P, allow_unstable=True)


def test_save_load_round_trip_is_exact(tmp_path):
    P = sample.init_params("residual", seed=1, form="ss", vocab=4)
    path = tmp_path / "P.npz"
    formats.save_npz_atomic(path, P)
    Q = formats.load_npz(path)
    assert sorted(Q) == sorted(P)
    assert all(onp.array_equal(P[k], Q[k]) and Q[k].dtype == P[k].dtype for k in P)
    assert os.listdir(tmp_path) == ["P.npz"]          # no temporary left behind


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(fh, **arrays):
        fh.write(b"PK\x03\x04partial")
        raise OSError("disk full")
    monkeypatch.setattr(formats.onp, "savez", boom)
    with pytest.raises(OSError):
        formats.save_npz_atomic(tmp_path / "O.npz", {"y": onp.zeros(3)})
    assert os.listdir(tmp_path) == []


def test_options_json_loads_without_pickle(tmp_path):
    opts = {"model": "residual", "gate": "zoh", "grads": True}
    path = tmp_path / "o.npz"
    onp.savez(path, options_json=formats.encode_options(opts))
    with onp.load(path, allow_pickle=False) as z:
        arr = z["options_json"]
    assert arr.dtype == onp.uint8
    assert json.loads(arr.tobytes().decode()) == opts
    assert formats.decode_options(arr, "o.npz") == opts


def test_check_reference_splits_and_checks_shapes():
    P = sample.init_params("lti", seed=0, m=2, p=3)
    U = sample.init_inputs("lti", P, seed=1, batch=2, L=6)
    arrays = {"y": onp.zeros((2, 6, 3)), "grad_num": onp.zeros(P["num"].shape),
              "options_json": formats.encode_options({"model": "lti"})}
    arrays.update({"param__" + k: v for k, v in P.items()})
    arrays.update({"input__" + k: v for k, v in U.items()})
    opts, params, inputs, outs = formats.check_reference(arrays, "O.npz")
    assert opts["model"] == "lti" and sorted(outs) == ["grad_num", "y"]
    arrays["y"] = onp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"O.npz: key 'y': shape \(2, 5, 3\) \(expected \(2, 6, 3\)"):
        formats.check_reference(arrays, "O.npz")


def test_allowed_output_keys_cover_every_param():
    P = sample.init_params("selective", seed=0)
    keys = formats.allowed_output_keys("selective", P)
    assert {"y", "delta", "h", "grad_u"} <= keys
    assert {f"grad_{k}" for k in P} <= keys
