"""The page: trame-slicer's views (red, yellow, green, 3D) beside a drawer of controls wired to a
:class:`~.session.Session`. The page shows the server's state only: a contour's points are counted
when the server has them, a fit's progress and end are the server's.

A fit runs in the Logic's worker thread; a task on the event loop polls it and writes its result to
the scene there (MRML and rendering live on the loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

from trame.app import TrameApp, asynchronous
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from .access import cap_messages
from .session import COLOURINGS, MODES, SLICE_VIEWS, PageError, Session

logger = logging.getLogger(__name__)
POLL_S = 0.2  # how often the page's progress bar follows the fit
# Slicer's Four-Up layout: red and 3D above, yellow and green below (the page's views in this order).
FOUR_UP = Layout(LayoutDirection.Vertical, [
    Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.threed_view()]),
    Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.coronal_view()]),
])
VIEW_ORDER = ("Red", "ThreeD", "Yellow", "Green")


class ShapePriorWebApp(TrameApp):
    """The browser face of ShapePriorSegment on one trame server (one reader's session)."""

    def __init__(self, server=None, data_dir: str | Path = ".", max_upload_mb: int = 512):
        super().__init__(server)
        self.slicer = SlicerApp()
        self.scene = self.slicer.scene
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layouts = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layouts.register_layout("four-up", FOUR_UP)
        self.layouts.set_layout("four-up")
        self.session = Session(self.slicer, data_dir, max_upload_mb * 2**20)
        self.ctrl.on_server_bind.add(lambda wslink_server: cap_messages(wslink_server, self.session.max_upload_bytes))
        self.task = None  # the task following a running fit (kept: the event loop holds tasks weakly)
        self.state.update(
            mode="curves", modes=[{"title": t, "value": k} for k, t in MODES.items()], model=None, models=[],
            path="", mask_path="", phase="idle", progress=0, stage="", message="", error="", curves=[],
            placing="", residuals=[], colouring="distance", suggestion="", has_result=False, organ="result",
            data_dir=str(self.session.data_dir), max_upload=max_upload_mb * 2**20, start_model="", place_first=False,
        )
        self.state.change("mode")(self._on_mode)
        self.state.change("model")(self._on_model)
        self.state.change("colouring")(self._on_colouring)
        self._on_mode("curves")
        self.ctrl.on_client_exited.add(self._on_page_closed)
        interaction = self.session.logic.interactionNode()
        interaction.AddObserver(interaction.InteractionModeChangedEvent, self._on_interaction_mode)
        self._build_ui()

    # ---------------------------------------------------------------- state

    def _publish(self, **changes) -> None:
        """Push changes (and the drawn contours as the server has them) to the page now."""
        with self.state:
            self.state.update(changes)
            self.state.curves = self.session.curve_rows()
            placing = self.session.placing
            self.state.placing = placing.GetAttribute("ShapePriorSegment.View") if placing else ""

    def _guard(self, action, *args):
        """Run a page action; what it raises becomes the page's error line (:meth:`_report`)."""
        try:
            return action(*args)
        except Exception as exc:
            self._report(exc)
        return None

    def _report(self, exc: Exception, **changes) -> None:
        """Show an error in the page; one that is not a :class:`PageError` is a bug: the server stays
        up and its log keeps the traceback."""
        if isinstance(exc, PageError):
            self._publish(error=str(exc), message="", **changes)
            return
        logger.error("page action failed", exc_info=exc)
        self._publish(error=f"Unexpected error ({type(exc).__name__}: {exc}); the server log has the details.",
                      message="", **changes)

    def _on_mode(self, mode, **_) -> None:
        if mode not in MODES:
            return
        models = self.session.models(mode)
        self.state.models = models
        if self.state.model not in models:
            self.state.model = models[0] if models else None
        self._on_model(self.state.model)

    def _on_model(self, model, **_) -> None:
        self.state.start_model = self._guard(self.session.start_model, self.state.mode, model) or ""

    def _on_colouring(self, colouring, **_) -> None:
        if self.session.result is not None and colouring in COLOURINGS:
            shown = self._guard(self.session.colour, colouring)
            if colouring != "none" and shown is None:  # e.g. uncertainty of a mask's result: it has none
                self._publish(message=f"This result has no {colouring} to colour by.")

    def _on_interaction_mode(self, *_) -> None:
        # A right click in a view ends placing, as in Slicer: the curve is finished on the server.
        interaction = self.session.logic.interactionNode()
        if self.session.placing is not None and interaction.GetCurrentInteractionMode() != interaction.Place:
            self._publish(message=self.session.finish_curve())

    def _on_point_added(self, *_) -> None:
        self._publish()

    def _on_page_closed(self, *_) -> None:
        self.session.cancel()  # the fit stops at its next step; nothing is written

    # ---------------------------------------------------------------- actions

    def open_image(self, upload=None) -> None:
        if upload:
            self._guard(self._loaded, self.session.upload_image, upload[0])
        else:
            self._guard(self._loaded, self.session.open_image, self.state.path)

    def open_sample(self) -> None:
        self._guard(self._loaded, self.session.open_sample)

    def open_mask(self, upload=None) -> None:
        if upload:
            node = self._guard(self.session.upload_mask, upload[0])
        else:
            node = self._guard(self.session.open_mask, self.state.mask_path)
        if node is not None:
            self._publish(mode="mask", message=f"Mask {node.GetName()} loaded: press Fit to refine it.", error="")

    def _loaded(self, load, *args) -> None:
        node = load(*args)
        self._publish(message=f"Image {node.GetName()} loaded.", error="", has_result=False, residuals=[],
                      suggestion="", phase="idle")

    def upload_too_big(self, name: str, size: int) -> None:
        limit = self.session.max_upload_bytes / 2**20
        self._publish(error=f"{name}: {size / 2**20:.0f} MB; uploads are limited to {limit:.0f} MB")

    def draw(self, view: str) -> None:
        curve = self._guard(self.session.start_curve, view)
        if curve is not None:
            curve.AddObserver(curve.PointPositionDefinedEvent, self._on_point_added)
            self._publish(message=f"Click around the organ in the {view.lower()} ({SLICE_VIEWS[view]}) view; "
                                  "right-click or Finish to close the contour.", error="")

    def finish_curve(self) -> None:
        self._publish(message=self.session.finish_curve(), error="")

    def remove_curves(self) -> None:
        self.session.remove_curves()
        self._publish(message="Contours removed.", error="")

    def suggest(self) -> None:
        view = self._guard(self.session.suggest_next)
        if view is not None:
            self.session.placing.AddObserver(self.session.placing.PointPositionDefinedEvent, self._on_point_added)
            self._publish(message=f"Draw the suggested contour in the {view.lower()} view, then press Refit.", error="")

    def fit(self, refit: bool = False) -> None:
        """Start the fit (an error, e.g. too few contours or a fit already running, shows at once)
        and follow it from a task on the event loop."""
        start = self.state.start_model if self.state.place_first else None
        job = self._guard(self.session.start_fit, self.state.mode, self.state.model, refit, start)
        if job is None:
            return
        self._publish(phase="fitting", progress=0, stage="starting", error="", message="")
        self.task = asynchronous.create_task(self._follow(job))

    def cancel(self) -> None:
        if self.session.fitting:
            self.session.cancel()
            self._publish(stage="cancelling")

    async def _follow(self, job) -> None:
        while not job.done:
            fraction, stage = job.progress
            self._publish(progress=round(100 * fraction), stage=stage)
            await asyncio.sleep(POLL_S)
        try:
            result = self.session.finish_fit()
            if result is None:
                self._publish(phase="cancelled", message="Fit cancelled: nothing was added.", progress=0, stage="")
                return
            self.session.colour(self.state.colouring)
            self._publish(phase="done", progress=100, stage="", message=self.session.result_text(),
                          residuals=self.session.result_rows(), has_result=True, organ=result["report"]["organ"],
                          suggestion=self.session.logic.suggestionText())
        except Exception as exc:  # the page must not stay "fitting"
            self._report(exc, phase="error", progress=0, stage="")

    def download(self, kind: str):
        """The file's bytes for the page's download (None, and an error shown, if it cannot be made)."""
        path = self._guard(self.session.export, kind)
        if path is None:
            return None
        content = path.read_bytes()
        shutil.rmtree(path.parent, ignore_errors=True)
        return self.server.protocol.addAttachment(content)

    # ---------------------------------------------------------------- page

    def _build_ui(self) -> None:
        ctrl_name = self.server.controller.trigger_name
        with SinglePageWithDrawerLayout(self.server, full_height=True) as self.ui:
            self.ui.title.set_text("ShapePriorSegment")
            with self.ui.toolbar:
                v.VSpacer()
                html.Div("{{ phase }}", id="phase", classes="text-caption mr-4")
            with self.ui.drawer as drawer:
                drawer.width = 400
                with v.VContainer(classes="pa-2"):
                    self._inputs_ui(ctrl_name)
                    v.VSelect(label="Task", v_model=("mode",), items=("modes",), density="compact")
                    v.VSelect(label="Model", v_model=("model",), items=("models",), density="compact")
                    v.VCheckbox(v_model=("place_first",), v_if="mode === 'image' && start_model", density="compact",
                                label=("'Place by ' + start_model + ' first (faster)'",), hide_details=True,
                                id="place_first")
                    self._contours_ui()
                    self._fit_ui()
                    self._result_ui()
            with self.ui.content:
                with v.VContainer(fluid=True, classes="fill-height pa-0"):
                    self.layouts.initialize_layout_grid(self.ui)

    def _inputs_ui(self, trigger_name) -> None:
        upload = f"trigger('{trigger_name(self.upload_too_big)}', [f.name, f.size])"
        inputs = (("Image", "path", self.open_image), ("Mask (labelmap)", "mask_path", self.open_mask))
        for label, key, action in inputs:
            files = "$event.target.files"
            guard = (f"(f => f && (f.size > max_upload ? {upload} : trigger('{trigger_name(action)}', [{files}])))"
                     f"({files}[0])")
            with v.VRow(dense=True, align="center"):
                v.VTextField(label=(f"'{label}: a file in ' + data_dir",), v_model=(key,), density="compact",
                             hide_details=True, classes="flex-grow-1", id=f"{key}_field")
                v.VBtn("Open", click=action, size="small", id=f"open_{key}")
                v.VFileInput(change=guard, hide_input=True, density="compact", prepend_icon="mdi-upload",
                             classes="flex-grow-0")
        v.VBtn("Sample CT", click=self.open_sample, size="small", block=True, classes="my-2", id="sample")

    def _contours_ui(self) -> None:
        with html.Div(v_if="mode === 'curves'"):
            with v.VRow(dense=True):
                for view in SLICE_VIEWS:
                    v.VBtn(f"Draw {view}", click=(self.draw, f"['{view}']"), size="small", id=f"draw_{view}",
                           color=("placing === '%s' ? 'primary' : ''" % view,), classes="ma-1")
            with v.VRow(dense=True):
                v.VBtn("Finish contour", click=self.finish_curve, size="small", disabled=("!placing",), classes="ma-1",
                       id="finish")
                v.VBtn("Remove contours", click=self.remove_curves, size="small", classes="ma-1")
            html.Div("{{ c.name }} ({{ c.view }}): {{ c.points }} points{{ c.placing ? ', drawing' : '' }}",
                     v_for="c in curves", key="c.name", classes="text-caption")

    def _fit_ui(self) -> None:
        with v.VRow(dense=True, classes="my-2"):
            v.VBtn("Fit", click=self.fit, color="primary", disabled=("phase === 'fitting'",), classes="ma-1", id="fit")
            v.VBtn("Refit", click=(self.fit, "[true]"), disabled=("phase === 'fitting' || !has_result",),
                   v_if="mode === 'curves'", classes="ma-1", id="refit")
            v.VBtn("Cancel", click=self.cancel, disabled=("phase !== 'fitting'",), classes="ma-1", id="cancel")
        v.VProgressLinear(model_value=("progress",), height=6, v_show="phase === 'fitting'")
        html.Div("{{ stage }}", v_show="phase === 'fitting'", classes="text-caption")
        v.VAlert(text=("error",), v_if="error", type="error", density="compact", id="error")
        html.Div("{{ message }}", classes="text-body-2 my-1", style="white-space: pre-line", id="message")

    def _result_ui(self) -> None:
        with html.Div(v_if="has_result"):
            with v.VRadioGroup(v_model=("colouring",), inline=True, density="compact", hide_details=True):
                for colouring in COLOURINGS:
                    v.VRadio(label=colouring, value=colouring)
            with v.VTable(density="compact", v_if="residuals.length"):
                with html.Thead():
                    with html.Tr():
                        for head in ("contour", "plane", "mean mm", "max mm"):
                            html.Th(head)
                with html.Tbody():
                    with html.Tr(v_for="r in residuals", key="r.contour"):
                        for key in ("contour", "plane", "mean_mm", "max_mm"):
                            html.Td(f"{{{{ r.{key} }}}}")
            with html.Div(v_if="mode === 'curves' && suggestion"):
                html.Div("{{ suggestion }}", classes="text-caption")
                v.VBtn("Suggest next contour", click=self.suggest, size="small", classes="ma-1", id="suggest")
            with v.VRow(dense=True, classes="my-2"):
                for kind in ("vtk", "seg.nrrd", "mrb"):
                    trigger = self.server.controller.trigger_name(self.download)
                    v.VBtn(f".{kind}", size="small", classes="ma-1", prepend_icon="mdi-download",
                           click=f"trigger('{trigger}', ['{kind}']).then(data => data && "
                                 f"utils.download(organ + '.{kind}', data, 'application/octet-stream'))")


def serve(data_dir: str | Path, image: str | None = None, host: str = "127.0.0.1", port: int = 8080,
          max_upload_mb: int = 512, token: str | None = None, **start) -> None:
    """Start the page's server (blocks until it is stopped); ``image``: opened from the data folder
    first; ``token``: required of every request (:mod:`.access`)."""
    if not os.environ.get("DISPLAY"):  # a server without a screen: VTK renders through EGL, without X
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import vtk
    from trame.app import get_server

    from .access import guard, is_local

    vtk.vtkObject.GlobalWarningDisplayOff()  # VTK's and MRML's chatter; the page shows what went wrong
    server = get_server("shapeprior", client_type="vue3")
    guard(server, token, is_local(host))
    app = ShapePriorWebApp(server, data_dir, max_upload_mb)
    if image:
        app.state.path = image
        app.open_image()
    try:
        server.start(host=host, port=port, open_browser=False, timeout=0, **start)
    finally:
        app.session.close()
