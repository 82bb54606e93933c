"""Smoke run of the end-to-end benchmark on CPU with the tiny stand-ins of both architectures.

pytest bench/test_bench_e2e.py (CI runs it; timings on a shared 2-core CPU mean nothing, the schema does)
"""

import json
import math
from pathlib import Path

from bench_e2e import main, variants_for


def test_e2e_records_every_variant_of_both_families(tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    models = ["--model", "tiny-flux", "--model", "tiny-sd3"]
    assert main([*models, "--device", "cpu", "--repeats", "1", "--out", str(out)]) == 0
    records = json.loads(out.read_text())["e2e"]
    assert [(r["model"], r["variant"]) for r in records] == [
        (model, variant) for model in ("tiny-flux", "tiny-sd3") for variant in variants_for("cpu")
    ]
    assert set(variants_for("cpu")) == {"base", "reference", "fastrepulse"}
    for record in records:
        assert record["seconds"] > 0 and math.isfinite(record["overhead_pct"])
        assert (record["scale"] is None) == (record["variant"] == "base")
