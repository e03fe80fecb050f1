"""``shapeprior benchmark hostile``: bad inputs and options, as a careless or hostile user gives them, through
the real command line, one process each.

The set comes from :mod:`.hostile_set`; :func:`run_case` runs one as ``python -m
shapeprior.cli ...`` under an address-space cap and a time limit and says how it ended: a clear error (exit 2
and one line ``shapeprior: error: ...``), an unclear one (exit 2 with more output), a traceback, garbage
accepted (exit 0 where an error was due), a crash or timeout; a valid input (a float 0/1 mask, an output in a
missing folder) must be accepted. Every case must leave the folder as it was (an existing output
byte-identical, no temporary file) and the crafted model's code unrun.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .hostile_set import Case, hostile_cases, write_set

# Each case's address space: a command that needs more for a file of a few MB is a defect.
MEMORY_CAP = 3 * 2**30
ERROR_TIMEOUT_S = 60.0  # far beyond any error; a fit of the small settings below takes a few seconds
VALID_TIMEOUT_S = 300.0
TRACEBACK = "Traceback (most recent call last)"
COMMANDS = ("fit-contours", "fit-points", "fit-image", "refine-mask")
OUTCOMES = ("clear", "unclear", "traceback", "garbage", "crash", "accepted", "refused")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def state(folder: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file under ``folder`` but its ``valid`` outputs."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.relative_to(folder).parts[0] == "valid"}


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes (``.NAME.xxxxxxxx.tmp...``) and the malicious model's marker."""
    return [str(p) for p in folder.rglob(".*.tmp*")] + [str(p) for p in folder.glob("evil-ran")]


def run_command(argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """``python -m shapeprior.cli ARGV`` under :data:`MEMORY_CAP`: exit code (negative: a signal),
    stderr, seconds from start to exit, the child's peak resident memory (MB), whether it timed out."""
    with tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "shapeprior.cli", *argv], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_limit_memory, env=env)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage, unlike subprocess's wait
        seconds = time.perf_counter() - began
        timed_out = not timer.is_alive()
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return {"code": process.returncode, "stderr": stderr, "seconds": seconds, "peak_mb": usage.ru_maxrss / 1024,
            "timed_out": timed_out}


def classify(case: Case, run: dict) -> str:
    """How the case ended: one of :data:`OUTCOMES`."""
    if run["timed_out"] or run["code"] < 0:
        return "crash"
    if TRACEBACK in run["stderr"]:
        return "traceback"
    if case.valid:
        return "accepted" if run["code"] == 0 else "refused"
    if run["code"] == 0:
        return "garbage"
    lines = run["stderr"].splitlines()
    if run["code"] == 2 and len(lines) == 1 and lines[0].startswith("shapeprior: error: "):
        return "clear"
    return "unclear" if run["code"] == 2 else "crash"


def run_case(case: Case, folder: Path, env: dict | None = None) -> dict:
    """Run ``case`` on the set in ``folder``: the run (:func:`run_command`), its outcome, whether the error
    line says what ``case.expect`` does, and the files it changed, created or left behind."""
    before = state(folder)
    run = run_command(case.argv, VALID_TIMEOUT_S if case.valid else ERROR_TIMEOUT_S, env)
    after = state(folder)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    return {"case": case.name, "command": case.command, "argv": case.argv, "valid": case.valid, **run,
            "outcome": classify(case, run), "as_expected": case.valid or (case.expect or "") in run["stderr"],
            "side_effects": changed + leftovers(folder)}


def run_benchmark(progress: bool = True) -> dict:
    """Build the hostile set in a temporary folder and run every case (shipped liver and hippocampus models)."""
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="shapeprior-hostile-") as tmp:
        folder = Path(tmp) / "set"
        write_set(folder)
        cases = hostile_cases(folder)
        results = [run_case(case, folder) for case in tqdm(cases, desc="hostile", disable=not progress)]
    for result in results:
        result["argv"] = [a.replace(tmp, "TMP") for a in result["argv"]]
        result["stderr"] = result["stderr"].replace(tmp, "TMP")[-2000:]
    return {"memory_cap_gb": MEMORY_CAP / 2**30, "cases": results}


def _row(label: str, results: list[dict]) -> str:
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    errors = [r["seconds"] for r in results if not r["valid"] and r["outcome"] in ("clear", "unclear")]
    return (f"| {label} | {len(results)} | {counts['clear']} | {counts['unclear']} | {counts['traceback']} | "
            f"{counts['garbage']} | {counts['crash']} | {counts['accepted']} | {counts['refused']} | "
            f"{sum(bool(r['side_effects']) for r in results)} | {max(r['peak_mb'] for r in results):.0f} | "
            f"{max(errors, default=0.0):.2f} |")


def summarise(result: dict) -> str:
    """The counts per command and in all, and the slowest errors."""
    cases = result["cases"]
    lines = ["| command | cases | clear errors | unclear errors | tracebacks | garbage accepted | crashes / timeouts "
             "| valid accepted | valid refused | side effects | peak memory MB | slowest error s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(f"`{command}`", [r for r in cases if r["command"] == command]) for command in COMMANDS]
    lines.append(_row("**all**", cases))
    errors = sorted((r for r in cases if not r["valid"]), key=lambda r: -r["seconds"])
    slow = sum(r["seconds"] > 1.0 for r in errors)
    peak = {valid: max((r["peak_mb"] for r in cases if r["valid"] == valid), default=0.0) for valid in (False, True)}
    lines.append(f"\n{slow} of {len(errors)} errors took over 1 s from start to exit (median "
                 f"{np.median([r['seconds'] for r in errors]):.2f} s); the slowest: "
                 + ", ".join(f"{r['case']} {r['seconds']:.2f} s" for r in errors[:3])
                 + f". Peak memory: {peak[False]:.0f} MB for an error, {peak[True]:.0f} MB for a valid fit.")
    bad = [r for r in cases if r["outcome"] not in ("clear", "accepted") or r["side_effects"] or not r["as_expected"]]
    lines += [f"- {r['case']}: {r['outcome']}, exit {r['code']}, {r['stderr'].strip()[-300:]!r}" for r in bad]
    return "\n".join(lines)
