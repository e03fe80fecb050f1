"""Fixtures of the browser face's tests: the page's app on a trame server in this process (its scene
is inspected directly), events injected as the browser sends them, and headless Chromium.

Skipped without the ``[web]`` extra; the browser test also without Chromium.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed: pip install -e '.[web]'")
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen views without X

# The sample CT's liver (LPS mm): the mean of the CNN liver mask of its top 30 slices (TotalSegmentator's
# example_seg.nii.gz, label 5), a little lower since the liver is cut at the top; the semi-axes (mm) of
# the ellipses drawn around it on each view.
LIVER_CENTRE_LPS = np.array([-64.0, -185.0, 385.0])
SEMI_AXES = {"Red": (85.0, 75.0), "Yellow": (75.0, 38.0), "Green": (85.0, 38.0)}
# The in-plane LPS axes of each view's ellipse.
PLANE_AXES = {"Red": (0, 1), "Yellow": (1, 2), "Green": (0, 2)}


class Served:
    """The app on a running server, both on the caller's event loop (the main thread's: VTK's
    offscreen windows must be used and destroyed by the thread that made them)."""

    def __init__(self, data_dir, token: str | None = None):
        from trame.app import get_server

        from shapeprior.web.access import guard
        from shapeprior.web.app import ShapePriorWebApp

        self.server = get_server(f"test-{uuid.uuid4().hex}", client_type="vue3")
        guard(self.server, token)
        self.app = ShapePriorWebApp(self.server, data_dir)
        self.state = self.app.state

    async def start(self) -> "Served":
        self.server.start(port=0, thread=True, exec_mode="task", open_browser=False, timeout=0)
        await self.server.ready
        self.url = f"http://127.0.0.1:{self.server.port}/"
        return self

    async def wait_phase(self, *phases: str, timeout: float = 180) -> str:
        """Wait (letting the server run) until the page's phase is one of ``phases``."""
        async def reached():
            while self.state.phase not in phases:
                await asyncio.sleep(0.05)
            return self.state.phase

        return await asyncio.wait_for(reached(), timeout)

    async def close(self) -> None:
        self.app.session.close()
        await self.server.stop()


def run_served(data_dir, body, token: str | None = None) -> None:
    """Run ``await body(served)`` with a started server on a new event loop in this thread."""
    async def main():
        served = await Served(data_dir, token).start()
        try:
            await body(served)
        finally:
            await served.close()

    asyncio.run(main())


def ellipse_lps(view: str, count: int = 12, scale: float = 1.0, centre=LIVER_CENTRE_LPS) -> np.ndarray:
    """(count, 3) LPS mm: an ellipse around the liver on the view's plane through ``centre``."""
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    points = np.repeat(np.asarray(centre, float)[None], count, axis=0)
    (a, b), (ra, rb) = PLANE_AXES[view], SEMI_AXES[view]
    points[:, a] += scale * ra * np.cos(t)
    points[:, b] += scale * rb * np.sin(t)
    return points


def show_plane(app, view: str, centre_lps) -> None:
    """Scroll the view's slice through ``centre_lps``, as a reader moves the slider (loop thread)."""
    ras = [-centre_lps[0], -centre_lps[1], centre_lps[2]]
    app.scene.GetNodeByID(f"vtkMRMLSliceNode{view}").JumpSliceByOffsetting(*ras)


def view_pixels(app, view: str, points_lps) -> np.ndarray:
    """(N, 2) pixels of LPS points in a slice view: x from the left, y from the bottom (VTK's)."""
    from slicer.util import arrayFromVTKMatrix

    slice_node = app.scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
    ras_to_xy = np.linalg.inv(arrayFromVTKMatrix(slice_node.GetXYToRAS()))
    ras = np.c_[-points_lps[:, 0], -points_lps[:, 1], points_lps[:, 2], np.ones(len(points_lps))]
    return (ras @ ras_to_xy.T)[:, :2]


def view_adapter(app, view: str):
    """The view's remote-controlled-area adapter: what the browser's events reach first."""
    factory = next(f for f in app.slicer.view_manager._factories if f.has_view(view))
    return factory.get_factory_view(view).view_adapter


def inject_click(adapter, x: float, y: float, size, button: str = "Left") -> None:
    """A click as the page sends it (``trame.rca.event``): move, press, release at VTK pixels."""
    base = dict(x=x, y=y, w=size[0], h=size[1], buttonLeft=0, buttonMiddle=0, buttonRight=0,
                shiftKey=0, altKey=0, ctrlKey=0, metaKey=0)
    adapter.on_interaction("region", {**base, "type": "MouseMove", "action": "move"})
    adapter.on_interaction("region", {**base, "type": f"{button}ButtonPress", "action": "down", f"button{button}": 1})
    adapter.on_interaction("region", {**base, "type": f"{button}ButtonRelease", "action": "up"})


def draw_contour(app, view: str, points_lps, size=(400, 300)) -> None:
    """Press "Draw <view>", click the points into the view as the browser would, right-click to end."""
    adapter = view_adapter(app, view)
    adapter.update_size("test", {"w": size[0], "h": size[1], "p": 1})
    app.draw(view)
    for x, y in view_pixels(app, view, points_lps):
        inject_click(adapter, x, y, size)
    inject_click(adapter, size[0] / 2, size[1] / 2, size, "Right")
