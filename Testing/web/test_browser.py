"""The page in headless Chromium, as a reader uses it: upload a text file (refused) and the sample CT,
click three contours into the red, yellow and green views, press Fit, wait for the server's "done",
look at the 3D view, download the surface, and close the page during a refit.

Set SHAPEPRIOR_WEB_SCREENSHOT=path.png to keep the screenshot (the README's is made so).
"""

from __future__ import annotations

import asyncio
import io
import os
import time

import numpy as np
import pytest
from conftest import LIVER_CENTRE_LPS, ellipse_lps, run_served, show_plane, view_pixels

from shapeprior.bench.browser import Browser, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium: apt-get install chromium")


def view_image(png: bytes, rect: dict) -> np.ndarray:
    """The screenshot's pixels (H, W, 3) inside a view's page rectangle."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
    x, y, w, h = (int(round(rect[k])) for k in ("x", "y", "width", "height"))
    return pixels[y + 2:y + h - 2, x + 2:x + w - 2]


def test_a_reader_draws_three_contours_and_fits_in_the_browser(tmp_path):
    from ShapePriorSegmentLib.logic import resourcePath

    from shapeprior.web.app import VIEW_ORDER
    from shapeprior.web.session import SAMPLE_IMAGE

    notes, downloads = tmp_path / "notes.txt", tmp_path / "downloads"
    notes.write_text("not an image")
    downloads.mkdir()

    async def body(served):
        app = served.app
        async with Browser(find_chromium()) as page:
            await page.send("Page.navigate", url=served.url)
            await page.wait_for("document.querySelectorAll('img.image-display-area').length === 4", 60)
            assert await page.text("#phase") == "idle"
            # Uploads through the image's file input: a text file is refused in the page, the CT is opened.
            await page.choose_file("input[type=file]", notes)
            await page.wait_for("document.querySelector('#error') && "
                                "document.querySelector('#error').textContent.includes('notes.txt')")
            await page.choose_file("input[type=file]", resourcePath(SAMPLE_IMAGE))
            await page.wait_for("document.querySelector('#message').textContent.includes('abdomen-ct')", 60)
            uploads = app.session.work_dir / "uploads"  # the session's own folder, not the data folder
            assert app.session.volume is not None and [p.name for p in uploads.iterdir()] == ["abdomen-ct.nii.gz"]
            before = view_image(await page.screenshot(), await page.rect("img.image-display-area", 1))

            for view in ("Red", "Yellow", "Green"):
                show_plane(app, view, LIVER_CENTRE_LPS)  # the slice slider moved to the liver, server-side
                await page.click_selector(f"#draw_{view}")
                await page.wait_for(f"document.body.innerText.includes('Contour {view} ({view}): 0 points')")
                rect = await page.rect("img.image-display-area", VIEW_ORDER.index(view))
                width, height, _ = app.scene.GetNodeByID(f"vtkMRMLSliceNode{view}").GetDimensions()
                points = ellipse_lps(view)
                for count, (x, y) in enumerate(view_pixels(app, view, points), 1):  # VTK px (from the bottom) -> page
                    await page.click(rect["x"] + x * rect["width"] / width,
                                     rect["y"] + (1 - y / height) * rect["height"])
                    # As a reader, click the next point once this one shows (the page shows the server's count).
                    await page.wait_for(f"document.body.innerText.includes('Contour {view} ({view}): {count} points')")
                centre = (rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2)
                await page.click(*centre, button="right")  # ends the contour
                await page.wait_for(f"document.body.innerText.includes('Contour {view} ({view}): {len(points)} points')"
                                    " && !document.body.innerText.includes('drawing')")

            pressed = time.perf_counter()
            await page.click_selector("#fit")
            await page.wait_for("document.querySelector('#phase').textContent.trim() === 'done'", 180)
            shown = time.perf_counter() - pressed
            show_plane(app, "Red", LIVER_CENTRE_LPS - [0, 0, 20])  # the surface's outline between the contours
            await asyncio.sleep(1.0)  # the views' next frames
            png = await page.screenshot()
            after = view_image(png, await page.rect("img.image-display-area", 1))

            # The .vtk button downloads the surface.
            await page.send("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
            await page.click_selector("button:has(.mdi-download)")
            for _ in range(100):
                if list(downloads.glob("*.vtk")):
                    break
                await asyncio.sleep(0.1)

            # Closing the page during a refit stops it; the scene keeps the last result.
            nodes, result = app.scene.GetNumberOfNodes(), app.session.result
            await page.click_selector("#refit")
            await page.wait_for("document.querySelector('#phase').textContent.trim() === 'fitting'")
            await page.send("Page.navigate", url="about:blank")
            assert await served.wait_phase("cancelled", "done", "error", timeout=60) == "cancelled"
            assert app.scene.GetNumberOfNodes() == nodes and app.session.result is result

        if os.environ.get("SHAPEPRIOR_WEB_SCREENSHOT"):  # before the checks: a failure can be looked at
            with open(os.environ["SHAPEPRIOR_WEB_SCREENSHOT"], "wb") as file:
                file.write(png)
        (model,) = [app.scene.GetNodeByID(app.session.result["model_node_id"])]
        assert model.GetPolyData().GetNumberOfPoints() > 1000
        fit_seconds = app.session.result["report"]["seconds"]
        print(f"fit {fit_seconds:.1f} s; Fit pressed -> 'done' in the page {shown:.1f} s")
        (download,) = downloads.glob("*.vtk")
        assert download.name == "liver.vtk" and download.read_bytes().startswith(b"# vtk DataFile")
        # The surface is in the 3D view: far more pixel variation than the empty background had.
        assert after.std() > 2 * before.std() + 5 and np.abs(after - before).mean() > 5

    run_served(tmp_path, body)
