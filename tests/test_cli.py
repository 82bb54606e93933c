"""`fastrepulse generate` end to end on a tiny Flux pipeline saved to disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pipelines
import pytest
from PIL import Image

from fastrepulse.cli import GAP, LABEL_WIDTH, MIN_CELL, TITLE_HEIGHT, main


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-flux")
    pipelines.flux().save_pretrained(folder)
    return folder


def _arguments(folder: Path, out: Path) -> list[str]:
    size = ["--height", str(pipelines.HEIGHT), "--width", str(pipelines.WIDTH)]
    return ["generate", "--model", str(folder), "--prompt", "a red cat", "--images", "3", *size, "--out", str(out)]


def _rows(path: Path, images: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.asarray(Image.open(path))
    step = MIN_CELL + GAP
    assert grid.shape == (TITLE_HEIGHT + 2 * step, LABEL_WIDTH + images * step, 3)
    cells = grid[TITLE_HEIGHT:, LABEL_WIDTH:]
    return cells[:MIN_CELL], cells[step : step + MIN_CELL]


def test_generate_writes_a_base_and_a_repulsion_row(flux_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    arguments = [*_arguments(flux_folder, out), "--scale", "1000", "--steps", "4", "--num-inference-steps", "4"]
    assert main(arguments) == 0
    base, repelled = _rows(out, 3)
    assert not np.array_equal(base, repelled)
    assert main([*arguments, "--scale", "0", "--out", str(tmp_path / "same.png")]) == 0
    base_again, unchanged = _rows(tmp_path / "same.png", 3)
    assert np.array_equal(base, base_again) and np.array_equal(base, unchanged)


def test_generate_reports_bad_options_clearly(flux_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    assert main([*_arguments(flux_folder, out), "--scale", "-1", "--num-inference-steps", "1"]) == 2
    assert "scale must be a finite number >= 0" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([*_arguments(flux_folder, out), "--images", "1"])


def test_the_command_without_a_model_runs_the_embedded_testbed(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    command = [sys.executable, "-m", "fastrepulse", "generate", "--images", "2", "--num-inference-steps", "4"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    base, repelled = _rows(out, 2)
    assert not np.array_equal(base, repelled), "the testbed preset changed nothing"
    assert (base[:, MIN_CELL : MIN_CELL + GAP] == 255).all(), "no white gap between the images of a row"


def test_an_unknown_model_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "missing" in capsys.readouterr().err
