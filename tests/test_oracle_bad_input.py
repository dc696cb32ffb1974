"""Bad input never gets through: every case is a CliRunner run that must end with exit
code 2, exactly one line on stderr naming the file (and key) and what was expected, no
traceback, and no output file."""
import os
import shutil
import sys
from pathlib import Path

import numpy as onp
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from rssm_ref.oracle import formats, sample  # noqa: E402


def _save(path, **arrays):
    onp.savez(path, **arrays)
    return str(path)


def _lti(tmp, P=None, U=None, model="lti"):
    P = sample.init_params(model, seed=0, m=2) if P is None else P
    U = _U(model) if U is None else U
    return _save(tmp / "P.npz", **P), _save(tmp / "U.npz", **U)


def _fwd(tmp, P=None, U=None, model="lti", extra=()):
    p, u = _lti(tmp, P, U, model)
    return ["forward", "--model", model, "--params", p, "--inputs", u,
            "--out", str(tmp / "O.npz"), *extra]


def _P(model="lti", **kw):
    return sample.init_params(model, seed=0, m=2, **kw)


def _U(model="lti", P=None, **kw):
    P = _P(model) if P is None else P
    return sample.init_inputs(model, P, seed=1, batch=2, L=8, **kw)


def _with(d, **changes):
    d = dict(d)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


# --------------------------------------------------------------- forward cases
def c_params_missing(t):
    return ["forward", "--model", "lti", "--params", str(t / "nope.npz"), "--inputs",
            _lti(t)[1], "--out", str(t / "O.npz")], ["nope.npz", "no such file"]


def c_inputs_missing(t):
    return ["forward", "--model", "lti", "--params", _lti(t)[0], "--inputs",
            str(t / "nope.npz"), "--out", str(t / "O.npz")], ["nope.npz", "no such file"]


def c_params_truncated(t):
    args = _fwd(t)
    data = Path(args[4]).read_bytes()
    Path(args[4]).write_bytes(data[:len(data) // 2])
    return args, ["P.npz", "truncated or corrupt"]


def c_params_random_bytes(t):
    args = _fwd(t)
    Path(args[4]).write_bytes(onp.random.default_rng(0).bytes(300))
    return args, ["P.npz", "not a .npz archive"]


def c_params_flipped_data_byte(t):
    args = _fwd(t)
    data = bytearray(Path(args[4]).read_bytes())
    i = data.index(b"\x93NUMPY") + 140          # inside the first array's data: CRC fails
    data[i] ^= 0x01
    Path(args[4]).write_bytes(bytes(data))
    return args, ["P.npz", "corrupt"]


def c_params_npy_not_npz(t):
    args = _fwd(t)
    with open(args[4], "wb") as fh:
        onp.save(fh, onp.ones(3))
    return args, ["P.npz", "not a .npz archive"]


def c_params_pickled_object(t):
    P = _P()
    P["num"] = onp.array([P["num"], "x"], dtype=object)
    return _fwd(t, P=P), ["P.npz", "key 'num'", "pickled", "allow_pickle=False"]


def c_params_empty_archive(t):
    args = _fwd(t)
    onp.savez(args[4])
    return args, ["P.npz", "empty archive"]


def _dtype_case(key, value, needle):
    def case(t):
        P = _with(_P(), **{key: value})
        return _fwd(t, P=P), ["P.npz", f"key '{key}'", needle]
    return case


c_params_int = _dtype_case("num", onp.ones((1, 2, 3), dtype=onp.int64), "int64")
c_params_complex = _dtype_case("num", onp.ones((1, 2, 3), dtype=complex), "complex")
c_params_string = _dtype_case("num", onp.array([["a", "b"]]), "dtype <U1")
c_params_bool = _dtype_case("num", onp.ones((1, 2, 3), dtype=bool), "bool")
c_params_float32 = _dtype_case("den", onp.array([[1.0, -0.5, 0.1]], onp.float32), "float32")


def c_params_nan(t):
    P = _P()
    P["num"][0, 0, 1] = onp.nan
    return _fwd(t, P=P), ["P.npz", "key 'num'", "NaN or inf"]


def c_params_inf(t):
    P = _P(form="ss")
    P["B"][0, 0] = onp.inf
    return _fwd(t, P=P), ["P.npz", "key 'B'", "NaN or inf"]


def c_inputs_nan(t):
    U = _U()
    U["u"][1, 3, 0] = onp.nan
    return _fwd(t, U=U), ["U.npz", "key 'u'", "NaN or inf"]


def c_inputs_dy_inf(t):
    U = _U()
    U["dy"][0, 0, 0] = -onp.inf
    return _fwd(t, U=U, extra=["--grads"]), ["U.npz", "key 'dy'", "NaN or inf"]


def c_params_missing_key(t):
    return _fwd(t, P=_with(_P(), den=None)), ["P.npz", "missing key 'den'"]


def c_params_no_system(t):
    P = {"gate_bias": onp.array(0.0)}
    return _fwd(t, P=P, U=_U("residual", _P("residual")), model="residual"), \
        ["P.npz", "missing key 'sigma_A'", "state-space", "transfer-function"]


def c_params_extra_key(t):
    return _fwd(t, P=_with(_P(), bias=onp.zeros(2))), ["P.npz", "unexpected key 'bias'"]


def c_params_both_forms(t):
    P = dict(_P(), **{k: v for k, v in _P(form="ss").items()})
    return _fwd(t, P=P), ["P.npz", "mixes forms"]


def c_params_partial_ss(t):
    return _fwd(t, P=_with(_P(form="ss"), D=None)), ["P.npz", "missing key 'D'"]


def c_params_wrong_ndim(t):
    P = _P()
    return _fwd(t, P=_with(P, den=P["den"][0])), ["P.npz", "key 'den'", "expected 2 dimensions"]


def c_params_inconsistent_k(t):
    P = _P()
    return _fwd(t, P=_with(P, num=P["num"][:, :, :2])), ["P.npz", "key 'den'", "k = 3",
                                                         "key 'num' gives k = 2"]


def c_params_inconsistent_p(t):
    P = _P()
    return _fwd(t, P=_with(P, den=onp.concatenate([P["den"]] * 2))), ["P.npz", "key 'den'",
                                                                       "p = 2"]


def c_residual_mixed_forms(t):
    Ptf, Pss = _P("residual"), _P("residual", form="ss")
    P = {k: v for k, v in Ptf.items() if k.startswith("sigma_")}
    P.update({k: v for k, v in Pss.items() if k.startswith("r_")})
    return _fwd(t, P=P, U=_U("residual", Ptf), model="residual"), \
        ["P.npz", "same form", "sigma in transfer-function form"]


def c_residual_r_two_outputs(t):
    P = _P("residual")
    P = _with(P, r_num=onp.concatenate([P["r_num"]] * 2), r_den=onp.concatenate([P["r_den"]] * 2))
    return _fwd(t, P=P, U=_U("residual", _P("residual")), model="residual"), \
        ["P.npz", "key 'r_num'", "must be 1"]


def c_residual_gate_bias_shape(t):
    P = _with(_P("residual"), gate_bias=onp.zeros(1))
    return _fwd(t, P=P, U=_U("residual"), model="residual"), \
        ["P.npz", "key 'gate_bias'", "expected 0 dimensions ()"]


def c_selective_A_positive(t):
    P = _P("selective")
    P["A"][1, 2] = 0.5
    return _fwd(t, P=P, U=_U("selective", P), model="selective"), \
        ["P.npz", "key 'A'", "entry (1, 2)", "not negative", "does not apply"]


def c_selective_D_shape(t):
    P = _with(_P("selective"), D=onp.ones(3))
    return _fwd(t, P=P, U=_U("selective", _P("selective")), model="selective"), \
        ["P.npz", "key 'D'", "m = 3"]


def c_lti_unstable_den(t):
    P = _P()
    P["den"] = onp.array([[1.0, -2.5, 1.0]])                 # roots 2 and 0.5
    return _fwd(t, P=P), ["P.npz", "key 'den'", "pole of modulus 2", "--allow-unstable"]


def c_lti_unstable_A(t):
    P = _P(form="ss")
    P["A"] = P["A"] * 3.0 / onp.max(onp.abs(onp.linalg.eigvals(P["A"])))
    return _fwd(t, P=P), ["P.npz", "key 'A'", "eigenvalue of modulus 3", "--allow-unstable"]


def c_residual_unstable_r(t):
    P = _P("residual")
    P["r_den"] = onp.array([[1.0, 0.0, -1.0, 0.0, 0.0]])      # poles on the unit circle
    return _fwd(t, P=P, U=_U("residual", P), model="residual"), \
        ["P.npz", "key 'r_den'", "modulus 1"]


def c_den_zero_leading(t):
    P = _P()
    P["den"][0, 0] = 0.0
    return _fwd(t, P=P, extra=["--allow-unstable"]), ["P.npz", "key 'den'", "zero leading"]


def c_fft_path_with_unstable_system(t):
    P = _P()
    P["den"] = onp.array([[1.0, -2.5, 1.0]])                 # roots 2 and 0.5
    return _fwd(t, P=P, extra=["--allow-unstable", "--path", "fft"]), \
        ["path: 'fft' needs a stable system", "key 'den'", "--path recurrent"]


def c_inputs_missing_u(t):
    return _fwd(t, U={"dy": _U()["dy"]}), ["U.npz", "missing key 'u'"]


def c_inputs_extra_key(t):
    return _fwd(t, U=_with(_U(), x=onp.zeros(1))), ["U.npz", "unexpected key 'x'"]


def c_inputs_u_and_tokens(t):
    return _fwd(t, U=_with(_U(), tokens=onp.zeros((2, 8), dtype=int))), \
        ["U.npz", "key 'tokens'", "exactly one"]


def c_inputs_u_wrong_ndim(t):
    return _fwd(t, U=_with(_U(), u=onp.zeros((8, 2)), dy=None)), \
        ["U.npz", "key 'u'", "expected 3 dimensions"]


def c_inputs_m_mismatch(t):
    return _fwd(t, U=_with(_U(), u=onp.zeros((2, 8, 5)))), \
        ["U.npz", "key 'u'", "m = 5", "P.npz gives m = 2"]


def c_inputs_L_zero(t):
    return _fwd(t, U={"u": onp.zeros((2, 0, 2))}), ["U.npz", "key 'u'",
                                                    "non-positive sequence length"]


def c_inputs_batch_zero(t):
    return _fwd(t, U={"u": onp.zeros((0, 8, 2))}), ["U.npz", "key 'u'", "empty dimension batch"]


def c_inputs_dy_batch_mismatch(t):
    return _fwd(t, U=_with(_U(), dy=onp.zeros((3, 8, 1)))), \
        ["U.npz", "key 'dy'", "batch = 3", "key 'u' gives batch = 2"]


def c_inputs_dy_L_mismatch(t):
    return _fwd(t, U=_with(_U(), dy=onp.zeros((2, 7, 1)))), ["U.npz", "key 'dy'", "L = 7"]


def c_inputs_dy_p_mismatch(t):
    return _fwd(t, U=_with(_U(), dy=onp.zeros((2, 8, 4)))), ["U.npz", "key 'dy'", "p = 4"]


def c_inputs_int_u(t):
    return _fwd(t, U={"u": onp.ones((2, 8, 2), dtype=onp.int32)}), ["U.npz", "key 'u'", "int32"]


def _tok(t, tokens, with_embedding=True):
    P = _P("residual", vocab=5) if with_embedding else _P("residual")
    return _fwd(t, P=P, U={"tokens": tokens}, model="residual")


def c_tokens_out_of_range(t):
    return _tok(t, onp.array([[0, 1, 5, 2]])), ["U.npz", "key 'tokens'", "id 5 out of range",
                                               "0 <= id < 5"]


def c_tokens_negative(t):
    return _tok(t, onp.array([[0, -1, 2]])), ["U.npz", "key 'tokens'", "id -1 out of range"]


def c_tokens_float(t):
    return _tok(t, onp.array([[0.0, 1.0]])), ["U.npz", "key 'tokens'", "integer token ids"]


def c_tokens_without_embedding(t):
    return _tok(t, onp.array([[0, 1]]), with_embedding=False), \
        ["U.npz", "key 'tokens'", "'embedding'"]


def c_option_gate_for_lti(t):
    return _fwd(t, extra=["--gate", "zoh"]), ["gate", "--model lti", "--model residual"]


def c_option_fft_for_selective(t):
    P = _P("selective")
    return _fwd(t, P=P, U=_U("selective", P), model="selective", extra=["--path", "fft"]), \
        ["path", "'fft'", "selective", "recurrent"]


def c_out_dir_missing(t):
    args = _fwd(t)
    args[-1] = str(t / "no_dir" / "O.npz")
    return args, ["no_dir", "does not exist"]


def c_params_is_directory(t):
    args = _fwd(t)
    os.remove(args[4])
    os.mkdir(args[4])
    return args, ["P.npz", "is a directory"]


# ----------------------------------------------------------------- verify cases
def _reference(t, grads=False):
    """A forward-format reference file (outputs are placeholders: checks fail first)."""
    P = _P()
    U = _U(P=P)
    arrays = {"y": onp.zeros((2, 8, 1)),
              "options_json": formats.encode_options({"model": "lti", "path": "recurrent"})}
    if grads:
        arrays["grad_u"] = onp.zeros((2, 8, 2))
    arrays.update({"param__" + k: v for k, v in P.items()})
    arrays.update({"input__" + k: v for k, v in U.items()})
    return _save(t / "REF.npz", **arrays)


def _ver(t, cand=None, ref=None):
    ref = ref or _reference(t)
    cpath = _save(t / "C.npz", **(cand or {"y": onp.zeros((2, 8, 1))}))
    return ["verify", "--reference", ref, "--candidate", cpath]


def c_verify_reference_missing(t):
    return ["verify", "--reference", str(t / "none.npz"), "--candidate",
            _save(t / "C.npz", y=onp.zeros(1))], ["none.npz", "no such file"]


def c_verify_reference_is_params(t):
    return _ver(t, ref=_lti(t)[0]), ["P.npz", "missing key 'options_json'"]


def c_verify_reference_options_corrupt(t):
    ref = _reference(t)
    arrays = formats.load_npz(ref)
    arrays["options_json"] = onp.frombuffer(b"{not json", dtype=onp.uint8)
    _save(t / "REF.npz", **arrays)
    return _ver(t, ref=ref), ["REF.npz", "key 'options_json'", "not valid UTF-8 JSON"]


def c_verify_reference_embedded_params_bad(t):
    ref = _reference(t)
    arrays = formats.load_npz(ref)
    arrays["param__den"] = onp.array([[1.0, -3.5, 1.5]])     # roots 3 and 0.5
    _save(t / "REF.npz", **arrays)
    return _ver(t, ref=ref), ["REF.npz", "key 'den'", "pole of modulus 3"]


def c_verify_candidate_missing(t):
    return ["verify", "--reference", _reference(t), "--candidate", str(t / "none.npz")], \
        ["none.npz", "no such file"]


def c_verify_candidate_wrong_shape(t):
    return _ver(t, {"y": onp.zeros((2, 7, 1))}), ["C.npz", "key 'y'", "(2, 8, 1)"]


def c_verify_candidate_int(t):
    return _ver(t, {"y": onp.zeros((2, 8, 1), dtype=int)}), ["C.npz", "key 'y'", "int64",
                                                             "floating-point"]


def c_verify_candidate_unknown_key(t):
    return _ver(t, {"y": onp.zeros((2, 8, 1)), "z": onp.zeros(1)}), \
        ["C.npz", "key 'z'", "not in the reference"]


def c_verify_candidate_grad_not_in_reference(t):
    # a grad the reference lacks is unchecked; with nothing else to compare,
    # the candidate is bad input that names the key and the rerun that adds it
    return _ver(t, {"grad_u": onp.zeros((2, 8, 2))}), ["C.npz", "no tensor to compare",
                                                        "grad_u"]


def c_verify_candidate_nothing_to_compare(t):
    return _ver(t, {"param__num": onp.zeros(1)}), ["C.npz", "no tensor to compare"]


def c_verify_candidate_pickled(t):
    return _ver(t, {"y": onp.array([None, 1], dtype=object)}), ["C.npz", "key 'y'", "pickled"]


def c_verify_no_mode(t):
    return ["verify", "--reference", _reference(t)], ["--reference with --candidate"]


def c_verify_golden_missing(t):
    os.mkdir(t / "cands")
    return ["verify", "--golden", str(t / "nogold"), "--candidates", str(t / "cands")], \
        ["nogold", "no such directory"]


# ----------------------------------------------------------------- golden cases
def c_golden_check_missing(t):
    return ["golden", "--check", str(t / "nogold")], ["nogold", "no such directory"]


def c_golden_check_no_manifest(t):
    os.mkdir(t / "g")
    return ["golden", "--check", str(t / "g")], ["manifest.json", "no such file"]


def c_golden_out_not_empty(t):
    os.mkdir(t / "g")
    (t / "g" / "keep.txt").write_text("x")
    return ["golden", "--out", str(t / "g")], ["g", "not an empty directory"]


def c_golden_no_mode(t):
    return ["golden"], ["exactly one of --out DIR or --check DIR"]


# ------------------------------------------------------------------- init cases
def c_init_bad_size(t):
    return ["init", "--model", "lti", "--m", "0", "--out", str(t / "O.npz")], \
        ["m: 0", "positive integer"]


def c_init_tokens_without_vocab(t):
    return ["init", "--model", "lti", "--out", str(t / "O.npz"), "--inputs-out",
            str(t / "U.npz"), "--tokens"], ["tokens", "--vocab"]


def c_init_p_for_residual(t):
    return ["init", "--model", "residual", "--p", "2", "--out", str(t / "O.npz")], \
        ["p: given for --model residual"]


def c_init_out_dir_missing(t):
    return ["init", "--model", "lti", "--out", str(t / "nodir" / "O.npz")], \
        ["nodir", "does not exist"]


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}
OUTPUTS = ("O.npz", "U2.npz")


def run_bad(tmp_path, case):
    args, needles = CASES[case](tmp_path)
    before = set(os.listdir(tmp_path))
    res = CliRunner().invoke(main, args)
    return res, needles, before


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_clear_line(tmp_path, case):
    res, needles, before = run_bad(tmp_path, case)
    err = res.stderr
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    # no output file, no temporary: the directory holds exactly what the case made
    after = set(os.listdir(tmp_path))
    assert after == before, after - before
    assert not (tmp_path / "O.npz").exists()


def test_bad_input_case_count():
    # the report quotes this number
    assert len(CASES) >= 70, len(CASES)
