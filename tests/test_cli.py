"""`fastrepulse generate` end to end on a tiny Flux pipeline saved to disk and on the embedded testbeds."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pipelines
import pytest
import torch
from PIL import Image

from fastrepulse import cli
from fastrepulse.cli import GAP, LABEL_WIDTH, MIN_CELL, TITLE_HEIGHT, main
from fastrepulse.config import PRESETS
from fastrepulse.testbed import scene_attributes, scene_prompts
from fastrepulse.testbed.scenes import satisfies


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-flux")
    pipelines.flux().save_pretrained(folder)
    return folder


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models the command asks to load; loading stops there (the command then exits with status 2)."""
    loaded: list[str] = []

    def stop(model: str, device: str, dtype: str | None) -> None:
        loaded.append(model)
        raise OSError("loading stopped by the test")

    monkeypatch.setattr(cli, "load_pipeline", stop)
    return loaded


def _arguments(folder: Path, out: Path) -> list[str]:
    size = ["--height", str(pipelines.HEIGHT), "--width", str(pipelines.WIDTH)]
    return ["generate", "--model", str(folder), "--prompt", "a red cat", "--images", "3", *size, "--out", str(out)]


def _exit_status(arguments: list[str]) -> int:
    """What the command exits with, whether `main` returns it or argparse raises SystemExit with it."""
    try:
        return main(arguments)
    except SystemExit as stop:
        return stop.code


def _rows(path: Path, images: int, cell: int = MIN_CELL) -> tuple[np.ndarray, np.ndarray]:
    """The base row and the repulsion row of a grid of `images` columns of `cell`-pixel images, labels cut off."""
    grid = np.asarray(Image.open(path))
    step = cell + GAP
    assert grid.shape == (TITLE_HEIGHT + 2 * step, LABEL_WIDTH + images * step, 3)
    cells = grid[TITLE_HEIGHT:, LABEL_WIDTH:]
    return cells[:cell], cells[step : step + cell]


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_generate_writes_a_base_and_a_repulsion_row(flux_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    arguments = [*_arguments(flux_folder, out), "--scale", "1000", "--steps", "4", "--num-inference-steps", "4"]
    assert main(arguments) == 0
    base, repelled = _rows(out, 3)
    assert not np.array_equal(base, repelled)
    assert main([*arguments, "--scale", "0", "--out", str(tmp_path / "same.png")]) == 0
    base_again, unchanged = _rows(tmp_path / "same.png", 3)
    assert np.array_equal(base, base_again) and np.array_equal(base, unchanged)


def test_an_option_overrides_one_field_of_the_default_preset(tmp_path: Path) -> None:
    """Each of --scale, --steps, --iterations given with the default (scenes) preset's own value gives the preset's
    grid, bit for bit: the option replaced that field and the preset stayed. --steps 1 shows the comparison can
    tell."""
    scenes = PRESETS["scenes"]
    runs = {
        "preset": [],
        "scale": ["--scale", str(scenes.scale)],
        "steps": ["--steps", str(scenes.steps)],
        "iterations": ["--iterations", str(scenes.iterations)],
        "one step": ["--steps", "1"],
    }
    grids = {}
    for name, options in runs.items():
        out = tmp_path / f"{name}.png"
        assert (
            _exit_status(["generate", "--images", "2", "--num-inference-steps", "8", *options, "--out", str(out)]) == 0
        )
        grids[name] = np.asarray(Image.open(out))
    for name in ("scale", "steps", "iterations"):
        assert np.array_equal(grids[name], grids["preset"]), f"--{name} dropped the scenes preset"
    assert not np.array_equal(grids["one step"], grids["preset"])


BAD_OPTIONS = {
    "scale": (["--scale", "-1"], "scale must be a finite number >= 0"),
    "steps-0": (["--steps", "0"], 'steps must be an int >= 1 or "all"'),
    "steps-word": (["--steps", "some"], 'must be an int >= 1 or "all"'),
    "iterations": (["--iterations", "0"], "iterations must be an int >= 1"),
    "method": (["--method", "energy"], "invalid choice"),
    "preset-of-another-method": (["--preset", "flux-dev", "--method", "cads"], "drop the preset"),
    "images": (["--images", "0"], "--images must be at least 2"),
    "height": (["--height", "0"], "--height: must be an int >= 1"),
    "width": (["--width", "-8"], "--width: must be an int >= 1"),
    "num-inference-steps": (["--num-inference-steps", "0"], "--num-inference-steps: must be an int >= 1"),
    "out-without-extension": (["--out", "{tmp}/grid"], "has no extension"),
    "out-a-folder": (["--out", "{tmp}"], "is a directory"),
    "out-unknown-extension": (["--out", "{tmp}/grid.xyz"], "PIL cannot write .xyz images"),
    "out-in-a-missing-folder": (["--out", "{tmp}/missing/grid.png"], "does not exist"),
    "out-under-a-file": (["--out", "{tmp}/notes.txt/grid.png"], "cannot write in"),
    "device": (["--device", "gpu0"], "--device must be a torch device"),
    "image": (["--image", "{tmp}/missing.png"], "--image"),
}


@pytest.mark.parametrize("model", ["testbed", "folder"])
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS.values(), ids=BAD_OPTIONS)
def test_a_bad_option_fails_in_one_line_before_the_model_loads(
    model: str, options: list[str], message: str, tmp_path: Path, loads: list[str], capsys
) -> None:
    """Exit status 2, one line on stderr, no model loaded and no file written, for the testbed (whose preset is known
    before it loads) and for a pipeline folder (whose preset is not)."""
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    before = _files(tmp_path)
    model_options = [] if model == "testbed" else ["--model", str(tmp_path / "tiny-flux")]
    out = ["--out", str(tmp_path / "grid.png")]
    arguments = ["generate", *model_options, *out, *(option.format(tmp=tmp_path) for option in options)]
    assert _exit_status(arguments) == 2
    error = capsys.readouterr().err
    assert loads == [], "the model loaded before the options were checked"
    assert error.count("\n") == 1 and message in error, error
    assert _files(tmp_path) == before


def test_without_its_preset_the_testbed_needs_a_scale(loads: list[str], capsys) -> None:
    """--method particle drops the testbed's (contextual) preset rather than clashing with it, so there is no scale."""
    assert _exit_status(["generate", "--method", "particle"]) == 2
    assert loads == [] and "pass scale=" in capsys.readouterr().err


def test_cuda_without_cuda_says_to_use_the_cpu(
    tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _exit_status(["generate", "--device", "cuda", "--out", str(tmp_path / "grid.png")]) == 2
    error = capsys.readouterr().err
    assert loads == [] and error.count("\n") == 1
    assert "CUDA is not available" in error and "--device cpu" in error


def test_an_unwritable_out_folder_fails_before_the_model_loads(tmp_path: Path, loads: list[str], capsys) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("this user writes into read-only folders (root)")
    assert _exit_status(["generate", "--out", str(folder / "grid.png")]) == 2
    error = capsys.readouterr().err
    assert loads == [] and error.count("\n") == 1 and "cannot write in" in error
    assert not any(folder.iterdir())


class _FullDisk:
    """A grid whose save writes a few bytes and then fails, as on a full disk."""

    def save(self, file: str | os.PathLike | io.BufferedWriter, format: str | None = None) -> None:
        if isinstance(file, (str, os.PathLike)):  # a path or an open file, whichever the command passes
            Path(file).write_bytes(b"half a png")
        else:
            file.write(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_file(flux_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(cli, "grid", lambda rows, title: _FullDisk())
    out = tmp_path / "grid.png"
    assert main([*_arguments(flux_folder, out), "--scale", "1000", "--num-inference-steps", "1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a partial file was left behind"


def test_an_image_for_a_pipeline_that_takes_none_is_a_clear_error(flux_folder: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "input.png"
    Image.new("RGB", (pipelines.WIDTH, pipelines.HEIGHT)).save(image)
    out = tmp_path / "grid.png"
    assert main([*_arguments(flux_folder, out), "--scale", "1000", "--image", str(image)]) == 2
    assert "FluxPipeline takes no --image" in capsys.readouterr().err
    assert not out.exists()


def test_a_prompt_the_testbed_does_not_know_is_warned_about(tmp_path: Path, loads: list[str], capsys) -> None:
    """One warning line on stderr, then the model loads all the same; a digit prompt gets none."""
    out = ["--model", "testbed-flux", "--out", str(tmp_path / "grid.png")]
    assert _exit_status(["generate", "--prompt", "a red cat", *out]) == 2  # 2: the test stops the loading
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith("fastrepulse: warning:") and '"a handwritten <digit>"' in warning, warning
    assert loads == ["testbed-flux"]
    assert _exit_status(["generate", "--prompt", "a handwritten 3", *out]) == 2
    assert "warning" not in capsys.readouterr().err


def test_the_command_without_a_model_draws_red_circles_with_the_scenes_preset(tmp_path: Path) -> None:
    """The embedded default: the scenes model on "a red circle", its 48 x 48 images enlarged 6x so they can be seen,
    most of the base row red circles to the judge, the preset changing them; and nothing on stderr but the progress
    bars: no library noise."""
    out = tmp_path / "grid.png"
    command = [sys.executable, "-m", "fastrepulse", "generate", "--out", str(out)]
    # from tmp_path: in the repository root, kernels/ would shadow the PyPI `kernels` (see conftest.py)
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    zoom, size = 6, 48
    base, repelled = _rows(out, 4, cell=size * zoom)
    assert not np.array_equal(base, repelled), "the scenes preset changed nothing"
    step = size * zoom + GAP
    assert (base[:, size * zoom : step] == 255).all(), "no white gap between the images of a row"
    images = [
        Image.fromarray(np.ascontiguousarray(base[::zoom, column * step : column * step + size * zoom : zoom]))
        for column in range(4)
    ]
    red_circle = next(prompt for prompt in scene_prompts() if prompt.text == cli.DEFAULT_PROMPT)
    fitting = sum(satisfies(reading, red_circle) for reading in scene_attributes(images))
    assert fitting >= 2, f"{fitting} of 4 base images are red circles"  # 3 measured (11 of a group of 16)
    progress = re.compile(r"(base|repulsion): +\d+%\|")
    noise = [line for line in result.stderr.splitlines() if line.strip() and not progress.match(line)]
    assert noise == [], "\n".join(noise)


@pytest.mark.parametrize("model", ["scenes-sd3", "scenes-chroma"])
def test_every_embedded_scenes_model_runs_with_the_scenes_preset(model: str, tmp_path: Path, capsys) -> None:
    """The other scene models (the default test runs scenes-flux): the grid of their 48 x 48 images, the preset
    changing them."""
    out = tmp_path / "grid.png"
    options = ["--images", "2", "--num-inference-steps", "4", "--out", str(out)]
    assert main(["generate", "--model", model, *options]) == 0, capsys.readouterr().err
    base, repelled = _rows(out, 2, cell=48 * 6)
    assert not np.array_equal(base, repelled), f"the scenes preset changed nothing on {model}"


@pytest.mark.parametrize("model", ["scenes-flux", "scenes-sd3", "scenes-chroma"])
def test_a_saved_scenes_folder_runs_with_the_scenes_preset(model: str, tmp_path: Path, capsys) -> None:
    """A scenes model saved with save_pretrained loads as the testbed again, and `generate` starts from its preset,
    as for the embedded model (one grey level apart at most: float32 weights at other alignments)."""
    from fastrepulse.testbed import pipeline

    pipeline(model).save_pretrained(tmp_path / "saved")
    options = ["--images", "2", "--num-inference-steps", "2", "--out"]
    assert main(["generate", "--model", str(tmp_path / "saved"), *options, str(tmp_path / "saved.png")]) == 0, (
        capsys.readouterr().err
    )
    assert main(["generate", "--model", model, *options, str(tmp_path / "embedded.png")]) == 0
    saved, embedded = (
        np.asarray(Image.open(tmp_path / name), dtype=np.int16) for name in ("saved.png", "embedded.png")
    )
    assert np.abs(saved - embedded).max() <= 1


def test_an_unknown_model_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_saved_testbed_folder_runs_as_the_testbed(tmp_path: Path, capsys) -> None:
    """A folder from `save_pretrained` loads as the testbed again: its stored defaults, 8 x 8 images, its preset,
    its default prompt."""
    from fastrepulse.testbed import pipeline

    pipeline("flux").save_pretrained(tmp_path / "testbed")
    out = tmp_path / "grid.png"
    options = ["--images", "2", "--num-inference-steps", "2", "--out", str(out)]
    assert main(["generate", "--model", str(tmp_path / "testbed"), *options]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", "--model", "testbed-flux", *options[:-1], str(tmp_path / "embedded.png")]) == 0
    saved, embedded = (np.asarray(Image.open(path), dtype=np.int16) for path in (out, tmp_path / "embedded.png"))
    assert np.abs(saved - embedded).max() <= 1  # float32 weights at other alignments: one grey level at most


def test_a_word_the_scenes_model_does_not_know_is_warned_about(tmp_path: Path, loads: list[str], capsys) -> None:
    out = ["--out", str(tmp_path / "grid.png")]
    assert _exit_status(["generate", "--model", "scenes-flux", "--prompt", "a violet circle", *out]) == 2
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith("fastrepulse: warning:") and "'violet'" in warning and "'circle'" not in warning
    assert loads == ["scenes-flux"]
