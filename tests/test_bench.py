"""`python cli.py bench --quick` runs and writes valid JSON (timings are not asserted)."""
import json

from click.testing import CliRunner

from cli import main
from rssm_ref.bench import FIGURES


def test_bench_quick_writes_schema(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "--quick", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [r["figure"] for r in doc["rows"]] == list(FIGURES)
    for r in doc["rows"]:
        assert set(r) == {"figure", "value", "unit", "baseline", "target", "pass", "detail"}
        assert r["value"] > 0 or r["figure"] == "scaling"
        assert r["pass"] in (True, False, None)
        if r["unit"] == "ratio":
            assert r["detail"]["fast_s"] > 0 and r["detail"]["baseline_s"] > 0
    assert "PASS" in res.output or "MISS" in res.output
