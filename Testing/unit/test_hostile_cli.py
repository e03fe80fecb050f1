"""Issue 20's hostile inputs end to end: every case of ``shapeprior benchmark hostile`` through the real command
line (``python -m shapeprior.cli``, its own process under a 3 GB address-space cap and a time limit).

A bad input or option ends in exit 2 and one line ``shapeprior: error: <file>: <problem>`` that says the
problem, before torch is imported (the model's header is read without it), under 2 GB, with the existing
output byte-identical and no temporary file left; a valid one (a float 0/1 mask, an output in a missing
folder) is accepted; Ctrl-C ends with ``shapeprior: interrupted`` alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shapeprior.bench.hostile import leftovers, run_case
from shapeprior.bench.hostile_set import hostile_cases, write_set

ERRORS = [case.name for case in hostile_cases(Path("set"), "tiny.pt") if not case.valid]
# Valid inputs that only this file fits (with the tiny model); test_cli_fit fits plain curves, points and
# images, test_hostile_io reads masks of every type.
VALID = ["fit-contours: output in a missing folder", "fit-contours: 15,000-point curve", "refine-mask: float 0/1 mask"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model) -> tuple[Path, dict]:
    """(folder, {name: case}): the hostile set, written once, with the tiny DALS model."""
    folder = tmp_path_factory.mktemp("hostile") / "set"
    write_set(folder, str(tiny_model))
    return folder, {case.name: case for case in hostile_cases(folder, str(tiny_model))}


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory) -> dict[str, str]:
    """An environment where ``import torch`` fails: an error that needs it comes too late (torch alone
    takes 2-3 s to import here; every error about a file or option is due within 1 s)."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "sitecustomize.py").write_text("import sys\n\nsys.modules['torch'] = None  # import torch fails\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_is_one_clear_line_before_torch(hostile, without_torch, name):
    folder, cases = hostile
    existing = (folder / "existing.json").read_bytes()

    result = run_case(cases[name], folder, without_torch)

    assert result["outcome"] == "clear", result["stderr"]
    assert cases[name].expect in result["stderr"]
    assert result["side_effects"] == []
    assert (folder / "existing.json").read_bytes() == existing
    assert result["peak_mb"] < 2048


@pytest.mark.parametrize("name", VALID)
def test_valid_input_is_accepted(hostile, name):
    folder, cases = hostile

    result = run_case(cases[name], folder)

    assert result["outcome"] == "accepted", result["stderr"]
    assert result["side_effects"] == [] and result["peak_mb"] < 2048


def _loading_torch(process: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Wait until the process maps torch's library (it is importing torch, past Python's own start-up,
    which a loaded machine can stretch past a second); False if it ended first."""
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if "libtorch" in maps.read_text():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("fitting", [False, True], ids=["while-importing", "while-fitting"])
def test_ctrl_c_ends_with_one_line_and_leaves_nothing(hostile, tiny_model, tmp_path, fitting):
    """Ctrl-C while the command imports torch and while it fits: exit 130 and one line, nothing to resume."""
    folder, _ = hostile
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "shapeprior.cli", "-q", "fit-contours", str(folder / "curves.mrk.json"),
            "--model", str(tiny_model), "--global-steps", "5000", "--vertex-steps", "5000", "--report", str(report)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert _loading_torch(process)
    time.sleep(3.0 if fitting else 0.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130
    assert stderr.decode().splitlines() == ["shapeprior: interrupted"]
    assert not report.exists() and leftovers(tmp_path) == []
