"""golden: the suite round-trips in under 30 s, covers the required cases, and nothing
tampered with is ever trusted (one flipped byte in any file is caught)."""
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as onp
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli import main  # noqa: E402

from rssm_ref.oracle import golden  # noqa: E402


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden") / "suite"
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["golden", "--out", str(d)])
    t_write = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    t0 = time.perf_counter()
    res = CliRunner().invoke(main, ["golden", "--check", str(d)])
    t_check = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    return d, t_write, t_check, res.stdout


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_round_trip_under_30_seconds(suite):
    d, t_write, t_check, out = suite
    assert t_write + t_check < 30, (t_write, t_check)
    assert out.strip().splitlines()[-1].startswith("PASS")


def test_cases_cover_what_the_suite_promises(suite):
    m = json.loads((suite[0] / "manifest.json").read_text())
    cases = {c["case"]: c for c in m["cases"]}
    lti = [c for c in cases.values() if c["model"] == "lti"]
    assert {c["form"] for c in lti} == {"tf", "ss"}
    assert any(c["shapes"]["u"][1] == 4096 for c in lti)
    assert any(c["shapes"]["y"][2] > 1 for c in lti)                    # MIMO
    assert {(c["form"], c["options"]["gate"]) for c in cases.values()
            if c["model"] == "residual"} >= {("tf", "euler"), ("tf", "zoh"), ("ss", "euler"),
                                             ("ss", "zoh")}
    assert {(c["options"]["discretization"], c["options"]["output"]) for c in cases.values()
            if c["model"] == "selective"} == {("zoh", "before"), ("zoh", "after"),
                                              ("euler", "before"), ("euler", "after")}
    for c in cases.values():
        x = "hidden_states" if c["model"] in ("mamba-block", "mamba2-block") else "u"
        assert {"y", f"grad_{x}"} <= set(c["shapes"])
    # Mamba under its state_dict names: the scan alone and the whole layer, with and
    # without initial states (whose gradients are checked too)
    assert "grad_x_proj.weight" in cases["mamba_scan_dt_rank3"]["shapes"]
    blocks = [c for c in cases.values() if c["model"] == "mamba-block"]
    assert {c["shapes"]["grad_conv1d.weight"][2] for c in blocks} == {3, 4}
    assert any("grad_conv_state" in c["shapes"] and "ssm_state" in c["shapes"] for c in blocks)
    # the Mamba-2 layer: 2 groups (an option, the shapes give only g·n), no gated MLP
    # (in_proj's rows 2 d_ssm + 2 g n + h), the gated norm on, every state's gradient
    m2 = [c for c in cases.values() if c["model"] == "mamba2-block"]
    assert len(m2) == 1 and m2[0]["options"]["ngroups"] == 2
    sh = m2[0]["shapes"]
    d_ssm, (h, p, n) = sh["norm.weight"][0], sh["ssm_state"][1:]
    assert sh["in_proj.weight"][0] == 2 * d_ssm + 2 * 2 * n + h and d_ssm == h * p
    assert {"grad_norm.weight", "grad_conv_state", "grad_ssm_state", "y_norm"} <= set(sh)
    assert {"numpy", "scipy", "autograd", "rssm_ref", "python"} <= set(m["versions"])
    # poles at 0.999 and repeated poles are really there
    with onp.load(suite[0] / "lti_siso_tf_pole0999_L4096" / "params.npz") as z:
        assert onp.isclose(onp.max(onp.abs(onp.roots(z["den"][0]))), 0.999)
    with onp.load(suite[0] / "lti_mimo_tf_repeated_poles" / "params.npz") as z:
        r = onp.roots(z["den"][0])
        assert onp.sum(onp.abs(r - 0.95) < 1e-3) == 3


def _check_cli(d):
    return CliRunner().invoke(main, ["golden", "--check", str(d)])


def _assert_tamper_caught(res, needle):
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in res.output


def test_one_flipped_byte_in_any_file_is_caught(suite):
    d = suite[0]
    rng = onp.random.default_rng(0)
    for rel in _files(d):
        path = d / rel
        data = bytearray(path.read_bytes())
        i = int(rng.integers(len(data)))
        original = data[i]
        data[i] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        try:
            with pytest.raises(ValueError, match=os.path.basename(rel)):
                golden.read_manifest(d)
        finally:
            data[i] = original
            path.write_bytes(bytes(data))
    golden.read_manifest(d)          # restored: trusted again


def test_every_byte_of_the_manifest_is_protected(suite):
    d = suite[0]
    path = d / "manifest.json"
    raw = path.read_bytes()
    positions = sorted(set(onp.random.default_rng(1).integers(len(raw), size=150).tolist())
                       | {0, len(raw) - 1})
    try:
        for i in positions:
            for new in (raw[i] ^ 0x01, ord(" ") if raw[i] != ord(" ") else ord("\t")):
                path.write_bytes(raw[:i] + bytes([new]) + raw[i + 1:])
                with pytest.raises(ValueError, match="manifest.json"):
                    golden.read_manifest(d)
    finally:
        path.write_bytes(raw)


def test_tampered_file_via_cli_exits_2_with_one_line(suite, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(suite[0], d)
    ref = d / "residual_tf_zoh" / "reference.npz"
    data = bytearray(ref.read_bytes())
    data[len(data) // 2] ^= 0x10
    ref.write_bytes(bytes(data))
    _assert_tamper_caught(_check_cli(d), "residual_tf_zoh/reference.npz")


def test_unlisted_files_are_reported_and_missing_ones_caught(suite, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(suite[0], d)
    # a suite kept in version control: a README, a .gitkeep, an empty folder
    (d / "README.md").write_text("golden suite of my project\n")
    (d / "selective_zoh_after" / ".gitkeep").write_bytes(b"")
    (d / "notes").mkdir()
    res = _check_cli(d)
    assert res.exit_code == 0, res.output
    assert "note: 3 file(s) not listed in the manifest, not checked: " in res.stdout
    assert "README.md" in res.stdout and "selective_zoh_after/.gitkeep" in res.stdout
    res = CliRunner().invoke(main, ["golden", "--check", str(d), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["unlisted"] == [
        "README.md", "notes", "selective_zoh_after/.gitkeep"]
    os.remove(d / "selective_zoh_after" / "inputs.npz")
    _assert_tamper_caught(_check_cli(d), "selective_zoh_after/inputs.npz")


def test_crlf_manifest_is_the_same_manifest(suite, tmp_path):
    d = tmp_path / "s"
    shutil.copytree(suite[0], d)
    raw = (d / "manifest.json").read_bytes()
    crlf = raw.replace(b"\n", b"\r\n")
    (d / "manifest.json").write_bytes(crlf)
    res = _check_cli(d)
    assert res.exit_code == 0, res.output
    # line endings aside, every byte still counts
    i = crlf.index(b'"seed": 0') + len(b'"seed": ')
    (d / "manifest.json").write_bytes(crlf[:i] + b"1" + crlf[i + 1:])
    _assert_tamper_caught(_check_cli(d), "manifest.json")


def _resign(d, case, fname):
    m = json.loads((d / "manifest.json").read_text())
    for c in m["cases"]:
        if c["case"] == case:
            c["sha256"][fname] = golden._sha256(d / case / fname)
    m.pop("manifest_sha256")
    m["manifest_sha256"] = hashlib.sha256(golden._canonical(m).encode()).hexdigest()
    (d / "manifest.json").write_text(golden._canonical(m))


def test_consistently_resigned_wrong_numbers_exit_1(suite, tmp_path):
    """A suite whose checksums were recomputed after editing a number (not corruption but
    a wrong value) is still caught by the recomputation: exit 1, numeric mismatch."""
    d = tmp_path / "s"
    shutil.copytree(suite[0], d)
    case = "lti_mimo_ss_jordan"
    ref = d / case / "reference.npz"
    with onp.load(ref, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["grad_A"] = arrays["grad_A"] * (1 + 1e-9)
    onp.savez(ref, **arrays)
    _resign(d, case, "reference.npz")
    res = _check_cli(d)
    assert res.exit_code == 1, res.output
    line = [ln for ln in res.stdout.splitlines() if ln.startswith(case)][0]
    assert "MISMATCH" in line and "grad_A" in line


def test_verify_a_whole_suite(suite, tmp_path):
    d = suite[0]
    cdir = tmp_path / "cands"
    cdir.mkdir()
    for case in ("selective_euler_after", "residual_ss_zoh"):
        with onp.load(d / case / "reference.npz") as z:
            onp.savez(cdir / f"{case}.npz", y=z["y"].astype(onp.float32),
                      grad_u=z["grad_u"].astype(onp.float32))
    run = lambda p: CliRunner().invoke(main, ["verify", "--golden", str(d), "--candidates",
                                              str(cdir), "--precision", p, "--json"])
    ok = run("float32")
    assert ok.exit_code == 0, ok.output
    rep = json.loads(ok.stdout)
    assert sorted(rep["cases"]) == ["residual_ss_zoh", "selective_euler_after"]
    assert len(rep["skipped"]) == len(golden.CASES) - 2
    assert run("float64").exit_code == 1         # float32 rounding is not float64
    (cdir / "nonsense.npz").write_bytes(b"")
    bad = run("float32")
    _assert_tamper_caught(bad, "nonsense.npz")


def test_a_suite_from_an_older_version_still_checks(suite, tmp_path):
    """A suite written before an output was added (last_state) still checks: every
    stored output is recomputed and compared, the newer output is simply not in it; a
    stored output that no longer exists would still be refused."""
    d = tmp_path / "older"
    shutil.copytree(suite[0], d)
    m = json.loads((d / "manifest.json").read_text())
    changed = 0
    for c in m["cases"]:
        ref = d / c["case"] / "reference.npz"
        with onp.load(ref, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if "last_state" not in arrays:
            continue
        del arrays["last_state"]
        onp.savez(ref, **arrays)
        c["sha256"]["reference.npz"] = golden._sha256(str(ref))
        changed += 1
    assert changed > 0
    m.pop("manifest_sha256")
    m["manifest_sha256"] = hashlib.sha256(golden._canonical(m).encode()).hexdigest()
    (d / "manifest.json").write_text(golden._canonical(m))
    res = CliRunner().invoke(main, ["golden", "--check", str(d)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1].startswith("PASS")
