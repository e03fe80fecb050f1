"""The one result type every fit returns; each adapter has one writer for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import trimesh


@dataclass
class Outcome:
    """A fitted organ, whatever the input (contours, points, image, mask).

    - ``mesh``: the surface, LPS mm, faces outward.
    - ``organ``: the model's organ; names the model node, the segment and the files' segments.
    - ``report``: JSON-ready record (input, model, frame, seconds, ``warnings``, the method's details).
    - ``labelmap``: uint8 segmentation on the input image's grid, or None (a writer voxelises
      ``mesh`` on the grid it is given).
    - ``vertex_data``: per-vertex arrays (V,) by name, in mm; the first one colours the model.
    - ``curves``: the drawn curves (N_i, 3), LPS mm, to show beside the result.
    - ``summary``: one or more lines for a person (the command line prints them).
    - ``subregions``: uint8 sub-region labels on ``labelmap``'s grid (template models), or None;
      ``report["subregions"]`` names the values.
    - ``points``: corresponding points (P, 3), LPS mm, of a point distribution model's fit, or None.
    - ``detail``: the method's own result (e.g. the DALS ``FitResult``) for benchmarks and tests.
    """

    mesh: trimesh.Trimesh
    organ: str
    report: dict
    labelmap: sitk.Image | None = None
    vertex_data: dict[str, np.ndarray] = field(default_factory=dict)
    curves: list[np.ndarray] = field(default_factory=list)
    summary: str = ""
    subregions: sitk.Image | None = None
    points: np.ndarray | None = None
    detail: Any = None

    @property
    def warnings(self) -> list[str]:
        return self.report.setdefault("warnings", [])
