"""The Logic's part for the next contour: the last fit's suggested plane, shown in its slice view."""

import slicer
import vtk

try:  # inside Slicer
    from slicer.i18n import tr as _
except ImportError:  # slicer-core: no translation layer
    def _(text: str) -> str:
        return text

# The slice view that shows each plane orientation in Slicer's default layouts.
PLANE_VIEWS = {"axial": "Red", "sagittal": "Yellow", "coronal": "Green"}


class NextContour:
    """Mixed into the Logic: needs ``self.scene`` and ``self.lastReport`` (the last fit's report)."""

    def suggestedPlane(self):
        """The last fit's suggested next contour plane (the report's ``suggested_plane``: LPS mm
        ``origin`` and ``normal``, ``axis``), or None."""
        return (self.lastReport or {}).get("suggested_plane")

    def suggestionText(self, report=None) -> str:
        """One line on the next contour of ``report`` (default: the last fit's), or ""."""
        report = self.lastReport if report is None else report
        if not report or "suggested_plane" not in report:  # not a contour fit, or suggestions off
            return ""
        plane = report["suggested_plane"]
        if plane is None:
            spread = report.get("uncertainty_mm") or {}
            if spread and spread["max"] <= spread["tolerance"]:
                return _("No further contour needed: the uncertainty is at most {mm:.1f} mm, under the tolerance "
                         "everywhere.").format(mm=spread["max"])
            return ""
        from shapeprior.fit.uncertainty import describe_plane

        gain = plane["expected_gain"]
        return _("Suggested next contour: {plane} (expected to lower the RMS uncertainty from {before:.1f} to "
                 "{after:.1f} mm).").format(plane=describe_plane(plane), before=gain["rms_uncertainty_before_mm"],
                                            after=gain["rms_uncertainty_before_mm"] - gain["rms_uncertainty_mm"])

    def resultText(self, result: dict) -> str:
        """The panel's status line for a written fit: its summary, then the suggested next contour."""
        from .results import resultSummary

        return " ".join(filter(None, [resultSummary(result), self.suggestionText(result["report"])]))

    @staticmethod
    def planeView(plane: dict) -> str:
        """The slice view (Red, Yellow, Green) for a plane: by its axis, an oblique one by the
        patient axis nearest its normal."""
        if plane["axis"] in PLANE_VIEWS:
            return PLANE_VIEWS[plane["axis"]]
        nearest = max(range(3), key=lambda axis: abs(plane["normal"][axis]))
        return PLANE_VIEWS[("sagittal", "coronal", "axial")[nearest]]

    @staticmethod
    def showPlaneInSliceView(sliceNode, plane: dict) -> None:
        """Make the slice node show ``plane`` (LPS mm, the report's ``suggested_plane``): an axis
        plane in that orientation, offset through the plane's origin; an oblique one reformatted."""
        origin = [-plane["origin"][0], -plane["origin"][1], plane["origin"][2]]  # LPS -> RAS
        if plane["axis"] != "oblique":
            name = plane["axis"].capitalize()
            if not sliceNode.HasSliceOrientationPreset(name):  # a slice node made outside a layout
                matrix = vtk.vtkMatrix3x3()
                getattr(slicer.vtkMRMLSliceNode, f"Get{name}SliceToRASMatrix")(matrix, True)
                sliceNode.AddSliceOrientationPreset(name, matrix)
            sliceNode.SetOrientation(name)
            sliceNode.JumpSliceByOffsetting(*origin)
            return
        normal = [-plane["normal"][0], -plane["normal"][1], plane["normal"][2]]
        # Screen x along patient right -> left where the plane allows, as in the axial and coronal views.
        across = [-1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0]
        dot = sum(a * n for a, n in zip(across, normal))
        across = [a - dot * n for a, n in zip(across, normal)]
        length = sum(a * a for a in across) ** 0.5
        sliceNode.SetSliceToRASByNTP(*normal, *[a / length for a in across], *origin, 0)

    def showSuggestedPlane(self, plane=None) -> str:
        """Show ``plane`` (default: the last fit's suggestion) in its slice view (:meth:`planeView`);
        return the view's name, e.g. to place the next contour there."""
        plane = plane or self.suggestedPlane()
        if not plane:
            raise ValueError(_("The last fit suggests no further contour."))
        view = self.planeView(plane)
        sliceNode = self.scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        if sliceNode is None:
            raise ValueError(_("The layout has no {view} slice view.").format(view=view))
        self.showPlaneInSliceView(sliceNode, plane)
        return view
