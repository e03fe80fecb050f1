"""``benchmark web``: the page as a reader meets it. ``shapeprior serve`` starts as its own process, headless
Chromium opens the page; measured: the time from the server's start until the page shows its four views,
three contours clicked into the sample CT's views, the time from pressing Fit until the page says done
against the fit's own time, the same for a refit at the suggested plane, and the server's memory.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np

from .browser import Browser, Page, find_chromium

VIEWS = ("Red", "ThreeD", "Yellow", "Green")  # the page's views in document order (the Four-Up layout)
CLICKS = 12  # points per contour, as a reader places them


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PeakMemory(threading.Thread):
    """The largest resident set (MB) of a process, sampled every 50 ms until :meth:`stop`."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.path, self.peak_mb, self._done = Path(f"/proc/{pid}/status"), 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            try:
                found = re.search(r"VmRSS:\s+(\d+) kB", self.path.read_text())
            except OSError:  # the process has ended
                return
            if found:
                self.peak_mb = max(self.peak_mb, int(found.group(1)) / 1024)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_mb


async def _page_ready(page: Page, url: str, began: float, timeout: float = 60) -> float:
    """Seconds from ``began`` until the server answers and the page shows four rendered views."""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
            if time.perf_counter() - began > timeout:
                raise TimeoutError(f"{url} did not answer within {timeout} s")
    await page.send("Page.navigate", url=url)
    await page.wait_for("[...document.querySelectorAll('img.image-display-area')].filter(i => i.src).length === 4"
                        " && document.querySelector('#phase').textContent.trim() === 'idle'", timeout, poll=0.05)
    return time.perf_counter() - began


async def _draw(page: Page, view: str, scale: float = 0.18) -> None:
    """Click a contour into a view: an ellipse around the view's centre, each point once the page
    shows the one before it, then a right click to close it."""
    await page.wait_for(f"document.body.innerText.includes('({view}): 0 points')")  # placing, on the server
    rect = await page.rect("img.image-display-area", VIEWS.index(view))
    cx, cy = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
    for count, t in enumerate(np.linspace(0, 2 * np.pi, CLICKS, endpoint=False), 1):
        await page.click(cx + scale * rect["width"] * np.cos(t), cy + scale * rect["height"] * np.sin(t))
        await page.wait_for(f"document.body.innerText.includes('({view}): {count} points')")
    await page.click(cx, cy, button="right")
    await page.wait_for(f"document.body.innerText.includes('({view}): {CLICKS} points')"
                        " && !document.body.innerText.includes('drawing')")


async def _fit(page: Page, button: str) -> dict:
    """Press Fit (or Refit) and wait until the page shows the result: the seconds until then and the fit's own."""
    frame = "document.querySelectorAll('img.image-display-area')[%d].src" % VIEWS.index("ThreeD")
    before = await page.evaluate(frame)
    pressed = time.perf_counter()
    await page.click_selector(button)
    await page.wait_for("document.querySelector('#phase').textContent.trim() === 'fitting'", 30, poll=0.02)
    # Shown: the page reads done and the 3D view has received a new frame (the one with the surface).
    await page.wait_for(f"document.querySelector('#phase').textContent.trim() === 'done' && {frame} !== '{before}'",
                        300, poll=0.02)
    shown = time.perf_counter() - pressed
    fitted = float(re.search(r"Fitted \w+ in ([\d.]+) s", await page.text("#message")).group(1))
    return {"shown_s": shown, "fit_s": fitted, "overhead_s": shown - fitted}


async def _session(chromium: str) -> dict:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="shapeprior-bench-web-") as data:
        return await _drive(chromium, port, data)


async def _drive(chromium: str, port: int, data: str) -> dict:
    async with Browser(chromium) as page:
        began = time.perf_counter()
        command = [sys.executable, "-m", "shapeprior.cli", "serve", "--port", str(port), "--data", data]
        server = subprocess.Popen(command,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        memory = PeakMemory(server.pid)
        memory.start()
        try:
            ready = await _page_ready(page, f"http://127.0.0.1:{port}/", began)
            await page.click_selector("#sample")
            await page.wait_for("document.querySelector('#message').textContent.includes('loaded')")
            for view in ("Red", "Yellow", "Green"):
                await page.click_selector(f"#draw_{view}")
                await _draw(page, view)
            fit = await _fit(page, "#fit")
            await page.click_selector("#suggest")
            message = await page.wait_for("(t => t.includes('suggested contour') && t)"
                                          "(document.querySelector('#message').textContent)")
            view = re.search(r"in the (\w+) view", message).group(1).capitalize()
            await _draw(page, view, scale=0.12)
            refit = await _fit(page, "#refit")
        finally:
            peak = memory.stop()
            server.send_signal(signal.SIGINT)  # Ctrl-C, as a reader stops it
            try:
                _, errors = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                _, errors = server.communicate()
    return {"page_ready_s": ready, "fit": fit, "refit": {**refit, "view": view}, "peak_rss_mb": peak,
            "server_exit": server.returncode, "server_traceback": "Traceback" in errors}


def run_benchmark(runs: int = 3, progress: bool = True) -> dict:
    chromium = find_chromium()
    if chromium is None:
        from ..errors import InputError

        raise InputError(None, "benchmark web needs Chromium (apt-get install chromium)")
    sessions = []
    for index in range(runs):
        sessions.append(asyncio.run(_session(chromium)))
        if progress:
            s = sessions[-1]
            print(f"session {index + 1}/{runs}: page ready {s['page_ready_s']:.1f} s, fit {s['fit']['fit_s']:.1f} s "
                  f"shown after {s['fit']['shown_s']:.1f} s, peak {s['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return {"runs": runs, "sessions": sessions}


def summarise(result: dict) -> str:
    sessions = result["sessions"]

    def median(values) -> float:
        return float(np.median(list(values)))

    rows = [
        ("page ready after `shapeprior serve` starts (s)", median(s["page_ready_s"] for s in sessions), "<= 10"),
        ("fit from three clicked contours: the fit's own time (s)", median(s["fit"]["fit_s"] for s in sessions), ""),
        ("Fit pressed -> done and the surface's frame in the page (s)",
         median(s["fit"]["shown_s"] for s in sessions), ""),
        ("  of which beyond the fit (s)", median(s["fit"]["overhead_s"] for s in sessions), "<= 2"),
        ("refit at the suggested plane: its own time (s)", median(s["refit"]["fit_s"] for s in sessions), ""),
        ("  Refit pressed -> done, beyond the refit (s)", median(s["refit"]["overhead_s"] for s in sessions), "<= 2"),
        ("server's peak memory over the session (MB)", max(s["peak_rss_mb"] for s in sessions), "<= 2048"),
    ]
    lines = [f"Browser face, {len(sessions)} sessions in headless Chromium (medians; memory: the largest)", "",
             "| measure | value | target |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f} | {target} |" for name, value, target in rows]
    clean = all(s["server_exit"] in (0, 130) and not s["server_traceback"] for s in sessions)
    lines += ["", f"Ctrl-C stopped the server cleanly in {'every' if clean else 'not every'} session."]
    return "\n".join(lines)
