"""Smoke run of the scenes benchmark on the untrained scenes-flux pipeline (its architecture, seeded weights).

pytest bench/test_scenes_diversity.py (CI runs it): two prompts, B=4, one seed, 4 sampler steps; the numbers of an
untrained pipeline mean nothing, the outputs, their schema and the pairing with base do.
"""

import csv
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from scenes_diversity import main  # noqa: E402

from fastrepulse.testbed import pipeline  # noqa: E402


@pytest.mark.usefixtures("one_thread")
def test_scenes_diversity_writes_every_output_with_paired_rows(tmp_path: Path) -> None:
    argv = [
        "--quick",
        *("--contextual-scales", "0", "3e3", "--contextual-steps", "1", "all", "--contextual-blocks", "early"),
        *("--contextual-sites", "attention", "--cads-scales", "0.4", "--particle-scales", "10"),
        *("--out-dir", str(tmp_path)),
    ]
    assert main(argv, loader=lambda name: pipeline(name, trained=False)) == 0
    with (tmp_path / "scenes-diversity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["method"], row["steps"], row["scale"]) for row in rows] == [
        ("base", "", ""),
        ("contextual", "1", "0.0"),
        ("contextual", "1", "3000.0"),
        ("contextual", "all", "0.0"),
        ("contextual", "all", "3000.0"),
        ("cads", "", "0.4"),
        ("particle", "", "10.0"),
    ]
    result = json.loads((tmp_path / "scenes-diversity.json").read_text())
    base, *others = result["rows"]
    assert len(base["group_entropy"]) == len(base["group_vendi"]) == 2  # two prompts, one seed
    for row in others:
        if row["scale"] == 0.0:  # scale 0 leaves every image as base's: the pairing is exact
            for key in ("group_entropy", "group_vendi", "group_pixels", "fidelity_pct"):
                assert row[key] == base[key], key
            assert row["vendi_gain_pct"] == 0.0
            # untrained, no image fits a prompt: no entropy at base, its gain undefined
            assert math.isnan(row["entropy_gain_pct"]) and not any(base["group_entropy"])
        else:
            assert row["group_pixels"] != base["group_pixels"], row["method"]
    assert base["vendi_gain_pct"] == 0.0 and base["fidelity_delta"] == 0.0
    assert "Largest entropy gain" in (tmp_path / "scenes-diversity.md").read_text()
    assert (tmp_path / "scenes-pareto.png").stat().st_size > 0
    assert base["fidelity_pct"] == 0.0  # untrained: no image fits, so every row is within the tolerance of base
    assert (tmp_path / "scenes-grid-scenes-flux-b4.png").stat().st_size > 0
