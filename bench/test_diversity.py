"""Smoke run of the diversity benchmark on the tiny random Flux and SD3 pipelines of tests/pipelines.py.

pytest bench/test_diversity.py (CI runs it): 2 digits, B=2, one seed, 2 sampler steps, 16 text tokens;
the numbers of random pipelines mean nothing, the outputs, their schema and the pairing with base do.
"""

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pipelines  # noqa: E402
from diversity import main  # noqa: E402

LOADERS = {"flux": pipelines.flux, "sd3": pipelines.sd3}
SWEEPS = {"contextual": [0.0, 1e3], "cads": [0.25], "particle": [1.0]}
GROUP_SIZE = 2


@pytest.mark.usefixtures("one_thread")
def test_diversity_writes_every_output_with_paired_sane_rows(tmp_path: Path) -> None:
    sweeps = [arg for method, scales in SWEEPS.items() for arg in (f"--{method}-scales", *map(str, scales))]
    argv = ["--models", "flux", "sd3", "--group-sizes", str(GROUP_SIZE), "--seeds", "1", "--digits", "3", "7"]
    argv += ["--inference-steps", "2", "--size", str(pipelines.HEIGHT), "--max-sequence-length", "16"]
    argv += [*sweeps, "--out-dir", str(tmp_path)]
    assert main(argv, loader=lambda name: LOADERS[name]()) == 0

    expected = [("base", "")] + [(method, str(scale)) for method, scales in SWEEPS.items() for scale in scales]
    with (tmp_path / "diversity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["model"], row["method"], row["scale"]) for row in rows] == [
        (model, method, scale) for model in LOADERS for method, scale in expected
    ]
    records = json.loads((tmp_path / "diversity.json").read_text())
    assert records["settings"]["digits"] == [3, 7] and len(records["rows"]) == len(rows)
    for record in records["rows"]:
        assert not record["diverged"] and record["groups"] == 2 and len(record["group_vendi"]) == 2
        assert 0.0 <= record["fidelity_pct"] <= 100.0
        assert all(1.0 - 1e-9 <= vendi <= GROUP_SIZE + 1e-9 for vendi in record["group_vendi"])
        assert record["seconds_per_group"] > 0 and math.isfinite(record["kid"]) and record["fid"] is None
    requested = torch.tensor([3, 7]).view(1, 2, 1)
    for model in LOADERS:
        base, scale_zero = (
            next(r for r in records["rows"] if r["model"] == model and r["method"] == method and r["scale"] == scale)
            for method, scale in [("base", None), ("contextual", 0.0)]
        )
        assert not base["meets_target"]
        metrics = ["group_vendi", "labels", "kid", "pairwise_distance"]
        assert [scale_zero[name] for name in metrics] == [base[name] for name in metrics]  # bit for bit
        for record in (r for r in records["rows"] if r["model"] == model):  # each row against base's same groups
            gain = 100 * (sum(record["group_vendi"]) / sum(base["group_vendi"]) - 1)
            assert record["vendi_gain_pct"] == pytest.approx(gain, abs=1e-9)
            assert record["vendi_gain_low_pct"] <= record["vendi_gain_pct"] <= record["vendi_gain_high_pct"]
            share = 100 * (torch.tensor(record["labels"]) == requested).double().mean().item()
            assert record["fidelity_pct"] == pytest.approx(share)
            assert record["fidelity_delta"] == pytest.approx(share - base["fidelity_pct"])

    table = (tmp_path / "diversity.md").read_text()
    assert table.count("\n| flux |") == table.count("\n| sd3 |") == len(expected)
    for name in ["pareto-vendi-fidelity.png", "pareto-vendi-kid.png", "grid-flux-b2.png", "grid-sd3-b2.png"]:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
