"""The page driven server-side: the buttons' handlers called as the page calls them, clicks injected
into the views as the browser sends them; the scene and the page's state checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import LIVER_CENTRE_LPS, draw_contour, ellipse_lps, run_served, show_plane

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
# A MetaImage header whose voxels would be read from any file the server can read.
DETACHED_MHA = (b"ObjectType = Image\nNDims = 3\nDimSize = 30 30 30\nElementSpacing = 1 1 1\n"
                b"ElementType = MET_UCHAR\nElementDataFile = /etc/passwd\n")


def model_nodes(app) -> list:
    scene = app.scene
    count = scene.GetNumberOfNodesByClass("vtkMRMLModelNode")
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLModelNode") for i in range(count)]
    return [n for n in nodes if n.GetName().endswith(" surface")]


def draw_three(app) -> None:
    app.open_sample()
    for view in ("Red", "Yellow", "Green"):
        show_plane(app, view, LIVER_CENTRE_LPS)
        draw_contour(app, view, ellipse_lps(view))


def test_contours_clicked_in_three_views_fit_refit_and_download(tmp_path):
    async def body(served):
        app, state = served.app, served.state
        draw_three(app)
        # Every click reached the server: 12 points per view, the curves finished by the right click.
        assert [(c["view"], c["points"], c["placing"]) for c in state.curves] == \
            [(v, 12, False) for v in ("Red", "Yellow", "Green")]
        app.fit()
        assert await served.wait_phase("done", "error") == "done", state.error
        (model,) = model_nodes(app)
        assert model.GetPolyData().GetNumberOfPoints() > 1000
        assert [r["contour"] for r in state.residuals] == ["Contour Red", "Contour Yellow", "Contour Green"]
        assert all(float(r["mean_mm"]) < 10 for r in state.residuals)
        assert "Suggested next contour" in state.suggestion
        for colouring, array in (("uncertainty", "Uncertainty_mm"), ("distance", "DistanceToAnnotation")):
            state.colouring = colouring
            state.flush()  # the page's change reaches the server
            display = model.GetDisplayNode()
            assert display.GetActiveScalarName() == array and display.GetScalarVisibility()
        state.colouring = "none"
        state.flush()
        assert not model.GetDisplayNode().GetScalarVisibility()

        # Suggest: the view moves to the plane and a curve starts there; draw it; refit from the last fit.
        app.suggest()
        view, plane = state.placing, app.session.logic.suggestedPlane()
        assert view in ("Red", "Yellow", "Green") and plane is not None
        draw_contour(app, view, ellipse_lps(view, scale=0.8, centre=plane["origin"]))
        assert len(state.curves) == 4
        app.fit(True)
        assert await served.wait_phase("done", "error") == "done", state.error
        assert model_nodes(app) == [model]  # replaced in place
        assert app.session.result["report"]["warm_start"]

        for kind in ("vtk", "seg.nrrd", "mrb"):
            path = app.session.export(kind)
            assert path.stat().st_size > 1000 and path.name == f"liver.{kind}"

    run_served(tmp_path, body)


def test_cancel_and_closing_the_page_leave_nothing(tmp_path):
    async def body(served):
        app = served.app
        draw_three(app)
        nodes = app.scene.GetNumberOfNodes()
        for stop in (app.cancel, app._on_page_closed):
            app.fit()
            stop()
            assert await served.wait_phase("cancelled", "done", "error") == "cancelled"
            assert app.scene.GetNumberOfNodes() == nodes and not model_nodes(app)

    run_served(tmp_path, body)


def test_bad_input_gets_a_message_and_the_server_stays_up(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    small = sitk.Image([8, 8, 8], sitk.sitkInt16)
    small[4, 4, 4] = 100
    sitk.WriteImage(small, str(tmp_path / "tiny.nii.gz"))
    (tmp_path / "link.nii.gz").symlink_to(Path(__file__).resolve())  # a link out of the data folder

    async def body(served):
        app, state = served.app, served.state
        cases = [
            (lambda: (state.update(path="../outside.nii.gz"), app.open_image()), "outside the data folder"),
            (lambda: (state.update(path="/etc/passwd"), app.open_image()), "outside the data folder"),
            (lambda: (state.update(path="notes.txt"), app.open_image()), "notes.txt"),
            (lambda: (state.update(path="tiny.nii.gz"), app.open_image()), "too small to hold an organ"),
            (lambda: app.open_image([{"name": "x.nii.gz", "size": 2**40, "content": b"1"}]), "uploads are limited"),
            (lambda: app.open_image([{"name": "scan.nii.gz", "size": 5, "content": b"hello"}]), "scan.nii.gz"),
            (lambda: app.upload_too_big("big.nii.gz", 2**40), "uploads are limited"),
            (lambda: app.open_image([{"name": "evil.mha", "size": 120, "content": DETACHED_MHA}]), "another file"),
            (lambda: app.open_image([{"name": "evil.mhd", "size": 120, "content": DETACHED_MHA}]), "single-file"),
            (lambda: (state.update(path="link.nii.gz"), app.open_image()), "outside the data folder"),
            (app.fit, "no closed curves"),
        ]
        for action, message in cases:
            action()
            assert message in state.error, (message, state.error)
        assert not list((app.session.work_dir / "uploads").iterdir())  # refused uploads are not kept

        app.open_sample()
        show_plane(app, "Red", LIVER_CENTRE_LPS)
        draw_contour(app, "Red", ellipse_lps("Red"))
        app.fit()
        assert "two non-parallel planes" in state.error
        draw_contour(app, "Red", ellipse_lps("Red")[:2])  # two clicks: not a contour
        assert "at least 3 points" in state.message and len(state.curves) == 1

        for view in ("Yellow", "Green"):
            show_plane(app, view, LIVER_CENTRE_LPS)
            draw_contour(app, view, ellipse_lps(view))
        app.fit()
        app.fit()  # a second press while the first fit runs
        assert "already running" in state.error
        assert await served.wait_phase("done", "error") == "done"
        assert len(model_nodes(app)) == 1

    run_served(tmp_path, body)


@pytest.mark.skipif(not (SHARED / "hippocampus").is_dir(), reason="../shared/data/hippocampus is not here")
def test_image_only_and_mask_modes(tmp_path):
    for name in ("images", "labels"):
        shutil.copy(SHARED / "hippocampus" / name / "hippocampus_001.nii.gz", tmp_path / f"{name}.nii.gz")

    async def body(served):
        app, state = served.app, served.state
        state.update(path="images.nii.gz", mode="image")
        app.open_image()
        assert state.models == ["hippocampus", "hippocampus-deepssm"] and state.model == "hippocampus"
        assert state.start_model == "hippocampus-deepssm"  # the page offers 'Place by hippocampus-deepssm first'
        state.place_first = True
        app.fit()
        assert await served.wait_phase("done", "error") == "done", state.error
        assert [s["stage"] for s in app.session.result["report"]["stages"]] == ["start", "refine"]
        from shapeprior.web.session import PageError

        with pytest.raises(PageError, match="cannot place"):  # the page's state is the client's to write
            app.session.start_fit("image", "hippocampus", False, "liver")
        state.model = "hippocampus-deepssm"
        state.flush()
        assert state.start_model == ""
        app.fit()
        assert await served.wait_phase("done", "error") == "done", state.error
        assert app.session.result["report"]["organ"] == "hippocampus"

        state.mask_path = "labels.nii.gz"
        app.open_mask()
        assert state.mode == "mask" and state.model in state.models
        app.fit()
        assert await served.wait_phase("done", "error") == "done", state.error
        assert len(model_nodes(app)) == 2
        on_image = app.session.logic.modelRefinesOnImage(state.model)  # the loaded image refines the fit too
        assert app.session.result["report"]["image"] == ("images" if on_image else None)

    run_served(tmp_path, body)


def test_a_failing_fit_shows_its_error_and_the_page_goes_on(tmp_path, monkeypatch):
    from shapeprior.jobs import BackgroundJob

    async def body(served):
        app, state = served.app, served.state
        draw_three(app)
        broken = lambda *args, **kwargs: BackgroundJob(lambda progress, stop: 1 / 0).start()  # noqa: E731
        monkeypatch.setattr(app.session.logic, "startFit", broken)
        app.fit()
        assert await served.wait_phase("error", "done") == "error"
        assert "Unexpected error (ZeroDivisionError" in state.error and not app.session.fitting
        monkeypatch.undo()
        app.fit()  # the page goes on
        assert await served.wait_phase("done", "error") == "done"

    run_served(tmp_path, body)
