"""A minimal client of the Chrome DevTools protocol for headless Chromium (aiohttp, which trame brings):
the browser test and ``benchmark web`` drive the page as a reader would."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import signal
import shutil
import subprocess
import tempfile
import threading

import aiohttp


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Browser:
    """Headless Chromium with one page; ``async with Browser(path) as page``."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900):
        self.executable, self.size = executable, (width, height)

    async def __aenter__(self) -> "Page":
        self.profile = tempfile.TemporaryDirectory(prefix="shapeprior-chromium-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile.name}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        port = await asyncio.to_thread(self._devtools_port)
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        self.page = Page(await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
        return self.page

    def _devtools_port(self) -> int:
        for line in self.process.stderr:
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:  # the rest of its chatter is drained, or a full pipe would stall it
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return int(found.group(1))
        raise RuntimeError("chromium exited before opening its DevTools port")

    async def __aexit__(self, *exc) -> None:
        await self.page.ws.close()
        await self.http.close()
        os.killpg(self.process.pid, signal.SIGKILL)  # chromium and its helper processes
        self.process.wait()
        self.profile.cleanup()


class Page:
    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def send(self, method: str, **params) -> dict:
        number = next(self.ids)
        await self.ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, poll: float = 0.1):
        """Wait until the expression is truthy; return its value."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(poll)
        raise TimeoutError(f"still false after {timeout} s: {expression}")

    async def click(self, x: float, y: float, button: str = "left") -> None:
        """A mouse click at page pixel (x, y) from the top left, as a user's."""
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, clickCount=1)

    async def click_selector(self, selector: str) -> None:
        """Scroll the element into view, as a reader would, and click its centre."""
        box = await self.wait_for(f"(e => e && (e.scrollIntoView({{block: 'center'}}), (r => [r.x + r.width / 2, "
                                  f"r.y + r.height / 2])(e.getBoundingClientRect())))"
                                  f"(document.querySelector({json.dumps(selector)}))")
        await self.click(*box)

    async def rect(self, selector: str, index: int = 0) -> dict:
        """The page rectangle (x, y, width, height; CSS px from the top left) of a matching element."""
        return await self.wait_for(f"(e => e && (r => ({{x: r.x, y: r.y, width: r.width, height: r.height}}))"
                                   f"(e.getBoundingClientRect()))(document.querySelectorAll({json.dumps(selector)})[{index}])")

    async def text(self, selector: str) -> str:
        element = f"document.querySelector({json.dumps(selector)})"
        return await self.evaluate(f"(e => e ? e.textContent.trim() : '')({element})")

    async def choose_file(self, selector: str, path: str, index: int = 0) -> None:
        """Choose ``path`` in a file input, as a reader does in the file dialog (the page gets its change event)."""
        root = (await self.send("DOM.getDocument"))["root"]["nodeId"]
        nodes = (await self.send("DOM.querySelectorAll", nodeId=root, selector=selector))["nodeIds"]
        await self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=nodes[index])

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
