"""One reader's session of the browser face: the scene and views (trame-slicer's ``SlicerApp``), the
module's Logic over them, and the files the page may read (its data folder) or write (a private work
folder). No trame UI here: :mod:`.app` wires a page to it, and the tests drive it the same way.

Everything here runs on the server's event loop (MRML is touched there only); a fit runs in the
Logic's worker thread and is written to the scene by :meth:`Session.finish_fit` when it is done.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import threading
from pathlib import Path

from ShapePriorSegmentLib.logic import DEFAULT_MODEL, MODE_MODEL_KINDS, ShapePriorSegmentLogic
from ShapePriorSegmentLib.results import residualRows, resultSummary, warningsText

from ..errors import InputError
from ..io.formats import file_stem
from .files import check_image, confined, write_upload

SLICE_VIEWS = {"Red": "axial", "Yellow": "sagittal", "Green": "coronal"}
MODES = {"curves": "Draw contours", "mask": "Refine a mask", "image": "Image only"}
COLOURINGS = ("distance", "uncertainty", "none")
SAMPLE_IMAGE = "SampleData/abdomen-ct.nii.gz"


class PageError(Exception):
    """A problem the page shows in one line; the session stays usable."""


class Session:
    """The scene, the Logic and the files of one page; methods raise :class:`PageError` on bad input."""

    def __init__(self, slicer_app, data_dir: str | Path, max_upload_bytes: int = 512 * 2**20):
        self.slicer = slicer_app
        self.scene = slicer_app.scene
        self.logic = ShapePriorSegmentLogic(scene=self.scene)
        self.data_dir = Path(data_dir).resolve()
        self.max_upload_bytes = max_upload_bytes
        # Uploads and downloads of this session only (0700); removed by close().
        self.work_dir = Path(tempfile.mkdtemp(prefix="shapeprior-web-"))
        self.volume = self.mask = self.placing = self.job = self.result = None
        self.curves: list = []
        self._outputs: dict = {}
        self._models = {name: self._kind(path) for name, path in self.logic.shippedModels().items()}
        # The fitting code (torch) is imported while the reader loads an image: the first fit is not slower.
        threading.Thread(target=importlib.import_module, args=("shapeprior.fit.run",), daemon=True).start()

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---------------------------------------------------------------- models

    @staticmethod
    def _kind(path: str) -> str | None:
        from ..models.bundle import read_header

        try:
            return read_header(path).kind
        except InputError:
            return None

    def models(self, mode: str) -> list[str]:
        """The shipped models a mode can use, its default first."""
        kinds = MODE_MODEL_KINDS[mode]
        names = [name for name, kind in self._models.items() if kind in kinds]
        default = DEFAULT_MODEL.get(kinds[0])
        return sorted(names, key=lambda name: (name != default, name))

    # ---------------------------------------------------------------- inputs

    def open_image(self, text: str):
        """Load an image from the data folder (a path relative to it) as the background of the slice views."""
        return self._show_image(self._data_file(text))

    def open_sample(self):
        """Load the sample CT that ships with the extension."""
        from ShapePriorSegmentLib.logic import resourcePath

        return self._show_image(Path(resourcePath(SAMPLE_IMAGE)))

    def upload_image(self, upload: dict):
        """An image sent by the page (trame's file dict: name, size, content)."""
        return self._show_image(self._upload(upload))

    def open_mask(self, text: str):
        return self._show_mask(self._data_file(text))

    def upload_mask(self, upload: dict):
        return self._show_mask(self._upload(upload))

    def _data_file(self, text: str) -> Path:
        try:
            return confined(self.data_dir, text)
        except InputError as exc:
            raise PageError(str(exc)) from None

    def _upload(self, upload: dict) -> Path:
        try:
            return write_upload(upload, self.work_dir / "uploads", self.max_upload_bytes)
        except InputError as exc:
            raise PageError(str(exc)) from None

    def _check(self, path: Path, mask: bool = False) -> None:
        """:func:`check_image`; a refused upload is deleted at once."""
        try:
            check_image(path, mask)
        except InputError as exc:
            if path.is_relative_to(self.work_dir):
                path.unlink(missing_ok=True)
            raise PageError(str(exc)) from None

    def _show_image(self, path: Path):
        if self.job is not None:
            raise PageError("A fit is running: cancel it before opening another image.")
        self._check(path)
        volumes = self.slicer.io_manager.load_volumes(str(path))
        if not volumes:
            raise PageError(f"{path.name}: Slicer could not read this image")
        self.clear()
        if self.volume is not None:
            self.scene.RemoveNode(self.volume)
        self.volume = volumes[0]
        self.slicer.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer.display_manager.reset_views()
        return self.volume

    def _show_mask(self, path: Path):
        self._check(path, mask=True)
        mask = self.slicer.volumes_logic.AddArchetypeVolume(str(path), file_stem(path), 1)
        if mask is None:
            raise PageError(f"{path.name}: Slicer could not read this labelmap")
        if self.mask is not None:
            self.scene.RemoveNode(self.mask)
        self.mask = mask
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetLabelVolumeID(mask.GetID())
        if self.volume is None:
            self.slicer.display_manager.reset_views()
        return mask

    # ---------------------------------------------------------------- contours

    def start_curve(self, view: str):
        """A new closed curve on a slice view (Red, Yellow, Green); each click there adds a point."""
        if view not in SLICE_VIEWS:
            raise PageError(f"no slice view {view!r}")
        self.finish_curve()
        self.placing = self.logic.startPlacingContour(view)
        return self.placing

    def finish_curve(self) -> str:
        """End the curve being placed; one with fewer than 3 points is dropped (say so)."""
        curve, self.placing = self.placing, None
        interaction = self.logic.interactionNode()
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        if curve is None:
            return ""
        if curve.GetNumberOfDefinedControlPoints() < 3:
            self.scene.RemoveNode(curve)
            return "A contour needs at least 3 points: the unfinished one was removed."
        self.curves.append(curve)
        return ""

    def remove_curves(self) -> None:
        self.finish_curve()
        for curve in self.curves:
            self.scene.RemoveNode(curve)
        self.curves = []

    def curve_rows(self) -> list[dict]:
        """The drawn contours as the page lists them: name, view and points the server has."""
        drawn = self.curves + ([self.placing] if self.placing is not None else [])
        return [{"name": c.GetName(), "view": c.GetAttribute("ShapePriorSegment.View") or "",
                 "points": c.GetNumberOfDefinedControlPoints(), "placing": c is self.placing} for c in drawn]

    # ---------------------------------------------------------------- fitting

    @property
    def fitting(self) -> bool:
        return self.job is not None

    def start_model(self, mode: str, model: str | None) -> str:
        """The shipped DeepSSM model that can place an image fit's DISSM ``model`` first ('' if none)."""
        return (self.logic.startModelFor(model) or "") if mode == "image" and model in self.models(mode) else ""

    def start_fit(self, mode: str, model: str, refit: bool = False, start_from: str | None = None):
        """Start the mode's fit in a worker thread (one at a time); poll ``self.job`` and call
        :meth:`finish_fit` when it is done. A refit replaces the last result and starts from it;
        ``start_from``: a DeepSSM model that places an image fit's DISSM model (:meth:`start_model`)."""
        from ..settings import FitSettings

        if self.job is not None:
            raise PageError("A fit is already running: wait for it, or press Cancel.")
        if model not in self.models(mode):
            raise PageError(f"{model!r} is not a model for {MODES[mode].lower()}")
        # A refit replaces a contour fit (one with a fit state to start from), not a mask's or an image's.
        refit = refit and mode == "curves" and bool(self.result and self.result["report"].get("fit_state"))
        outputs = {"reference_volume_id": self.volume.GetID() if self.volume else None}
        if refit:
            keys = ("model_node_id", "segmentation_node_id", "segment_name")
            outputs.update({key: self.result[key] for key in keys}, replace=True)
        try:
            if mode == "curves":
                self.finish_curve()
                annotation = self.logic.readAnnotation("curves", curveNodes=self.curves)  # checks the curves
                warm = self.logic.warmStartReport(model) if refit else None
                job = self.logic.startFit(annotation, model, FitSettings(), warm)
            elif mode == "mask":
                if self.mask is None:
                    raise PageError("Load a mask (a labelmap of the organ) first.")
                # The loaded image goes into the fit too when the model can refine on it (DISSM).
                image = self.volume if self.volume is not None and self.logic.modelRefinesOnImage(model) else None
                job = self.logic.startMaskRefinement(self.mask, model=model, imageNode=image)
            else:
                if self.volume is None:
                    raise PageError("Load an image first.")
                if start_from and start_from != self.start_model(mode, model):
                    raise PageError(f"{start_from!r} cannot place {model!r}")
                job = self.logic.startImageFit(self.volume, model, start_from or None)
        except InputError as exc:
            raise PageError(str(exc)) from None
        self.job, self._outputs = job, outputs
        return job

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def finish_fit(self) -> dict | None:
        """Write the finished job's result to the scene (None if it was cancelled; the scene is then
        unchanged); a failed fit raises :class:`PageError` with its message."""
        job, self.job = self.job, None
        try:
            result = self.logic.finishFit(job, **self._outputs)
        except InputError as exc:
            raise PageError(str(exc)) from None
        if result is not None:
            self.result = result
            for view in self.slicer.view_manager.get_threed_views():
                view.reset_view()  # the camera on the new surface
        return result

    def result_rows(self) -> list[dict]:
        """The last fit's residuals table (contour, plane, mean mm, max mm)."""
        if self.result is None:
            return []
        names = [c.GetName() for c in self.curves]
        keys = ("contour", "plane", "mean_mm", "max_mm")
        return [dict(zip(keys, row)) for row in residualRows(self.result["report"].get("residuals", []), names)]

    def result_text(self) -> str:
        if self.result is None:
            return ""
        warnings = warningsText(self.result["report"].get("warnings", []))
        return "\n".join(filter(None, [resultSummary(self.result), warnings]))

    def model_node(self):
        return self.scene.GetNodeByID(self.result["model_node_id"]) if self.result else None

    def colour(self, by: str) -> str | None:
        """Colour the fitted surface by ``distance``, ``uncertainty`` or ``none``; the array shown."""
        return self.logic.setSurfaceColoring(self.model_node(), by == "distance", by == "uncertainty")

    def suggest_next(self) -> str:
        """Show the last fit's suggested plane in its view and start a curve there; the view's name."""
        try:
            view = self.logic.showSuggestedPlane()
        except ValueError as exc:
            raise PageError(str(exc)) from None
        self.start_curve(view)
        return view

    # ---------------------------------------------------------------- downloads

    def export(self, kind: str) -> Path:
        """The last result as a file in the work folder: ``vtk`` (the surface, LPS mm), ``seg.nrrd``
        (the segmentation) or ``mrb`` (the whole scene)."""
        if self.result is None:
            raise PageError("Nothing to download yet: fit first.")
        organ = self.result["report"]["organ"]
        folder = Path(tempfile.mkdtemp(dir=self.work_dir, prefix="download-"))
        path = folder / f"{organ}.{kind}"
        io = self.slicer.io_manager
        if kind == "vtk":
            io.write_model(self.model_node(), path)
        elif kind == "seg.nrrd":
            io.write_segmentation(self.scene.GetNodeByID(self.result["segmentation_node_id"]), path)
        elif kind == "mrb":
            io.write_scene(path)
        else:
            raise PageError(f"unknown download {kind!r}")
        if not path.is_file():
            raise PageError(f"Slicer could not write {path.name}")
        return path

    def clear(self) -> None:
        """Remove the contours, the result and the mask: a new image starts a new case."""
        self.remove_curves()
        nodes = [self.mask] + [self.scene.GetNodeByID(self.result[key]) for key in ("model_node_id",
                 "segmentation_node_id") if self.result]
        for node in filter(None, nodes):
            self.scene.RemoveNode(node)
        self.mask = self.result = self.logic.lastReport = None

