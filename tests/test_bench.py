"""`rssm-ref bench --quick` runs, is marked as a smoke run, and writes valid JSON (timings
are not asserted)."""
import json

import pytest

from click.testing import CliRunner

from cli import main
from rssm_ref.app.bench import FIGURES
from rssm_ref.util.version import VERSION


def test_bench_quick_writes_schema(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "--quick", "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["note"].startswith("SMOKE RUN")
    assert [r["figure"] for r in doc["rows"]] == list(FIGURES)
    for r in doc["rows"]:
        assert set(r) == {"figure", "value", "unit", "baseline", "target", "pass", "detail"}
        assert r["value"] > 0 or r["figure"] == "scaling"
        assert r["pass"] in (True, False, None)
        if r["unit"] == "ratio":
            assert r["detail"]["fast_s"] > 0 and r["detail"]["baseline_s"] > 0
        # every target is a ratio to a baseline timed in this run, never an absolute time
        assert r["target"].startswith("report") or (r["unit"] == "ratio"
                                                     and r["target"].endswith("x"))
        # every timed workload states its arithmetic and its distance to the floor
        if r["figure"] not in ("scaling", "backend_forward"):
            d = r["detail"]
            assert d["flops"] > 0 and d["floor_s"] > 0
            assert d["x_floor"] == pytest.approx(d["fast_s"] / d["floor_s"])
            rates = d["machine_flops_per_s"]
            assert d["floor_s"] == pytest.approx(d["flops"] / rates[d.get("floor_kind", "matmul")])
    assert res.stdout.splitlines()[1].startswith("machine: float64 matmul")
    assert res.stdout.splitlines()[0].startswith("SMOKE RUN (--quick)")
    assert "PASS (smoke)" in res.stdout or "MISS (smoke)" in res.stdout
    assert "[bench (smoke run)] done: " in res.stderr


def test_bench_json_to_stdout_and_bad_json_out(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["bench", "--quick", "--only", "lti_recurrent", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rssm_ref_version"] == VERSION
    assert doc["quick"] is True and [row["figure"] for row in doc["rows"]] == ["lti_recurrent"]
    # --json-out into a missing folder: refused before any timing, JSON error on stdout
    res = r.invoke(main, ["bench", "--quick", "--json", "--json-out", str(tmp_path / "no" / "b.json")])
    assert res.exit_code == 2
    err = json.loads(res.stdout)
    assert err["exit_code"] == 2 and "--json-out" in err["error"]
