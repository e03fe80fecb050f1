"""What the panel shows of a finished fit: its status line, its warnings and the residuals table."""

from .logic import _


def resultSummary(result: dict) -> str:
    """The status line: organ, time, segment, a template model's sub-regions and, with contours, their
    mean and largest residual."""
    report = result["report"]
    residuals = report.get("residuals", [])
    text = _("Fitted {organ} in {seconds:.1f} s: segment '{segment}'.").format(
        organ=report["organ"], seconds=report["seconds"], segment=result["segment_name"])
    if report.get("subregions"):
        text += " " + _("Sub-regions as segments: {names}.").format(names=", ".join(report["subregions"].values()))
    if residuals:
        text += " " + _("Contour residual mean {mean:.1f} mm, max {max:.1f} mm.").format(
            mean=sum(r["mean_mm"] for r in residuals) / len(residuals), max=max(r["max_mm"] for r in residuals))
    return text


def warningsText(warnings: list) -> str:
    """The warnings, one a line."""
    return "\n".join(_("Warning: {warning}").format(warning=w) for w in warnings)


def residualRows(residuals: list, curveNames: list) -> list:
    """The residuals table's rows of cells (contour, plane, mean mm, max mm); a contour is named
    after its curve node when the fit's curve names are known, else by its number."""
    rows = []
    for residual in residuals:
        index = residual["curve"] - 1
        name = curveNames[index] if index < len(curveNames) else str(residual["curve"])
        rows.append([name, str(residual["plane"]), f"{residual['mean_mm']:.2f}", f"{residual['max_mm']:.2f}"])
    return rows
