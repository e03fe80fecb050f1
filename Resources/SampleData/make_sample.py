"""Reproduce the sample case: three orthogonal contours of an AMOS 2022 liver.

Source: ../shared/data/liver-meshes/Amos-033.obj (AMOS 2022, CC BY 4.0, Ji et al.,
NeurIPS 2022). Writes ``liver-contours.mrk.json`` (three ClosedCurve markups, LPS)
and ``liver-painted.nii.gz`` (the same three slices painted on a 1.5 mm grid, which
also serves as the reference grid of the demo's segmentation).

    python Resources/SampleData/make_sample.py ../shared/data/liver-meshes/Amos-033.obj
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from shapeprior.bench.contours import cut_curves
from shapeprior.io import read_mesh
from shapeprior.io.labelmaps import mesh_to_labelmap
from shapeprior.io.markups import write_closed_curves
from shapeprior.prep.surface import repair_mesh

here = Path(__file__).parent
truth, _ = repair_mesh(read_mesh(sys.argv[1], frame="RAS"))
curves = cut_curves(truth, 3)
# Keep every 4th point: about what a user places when drawing a curve by hand.
write_closed_curves([c[::4] for c in curves], here / "liver-contours.mrk.json",
                    names=[f"liver contour {i + 1}" for i in range(len(curves))])

spacing = 1.5
lo, hi = truth.bounds[0] - 15, truth.bounds[1] + 15
size = np.ceil((hi - lo) / spacing).astype(int)
grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
grid.SetSpacing([spacing] * 3)
grid.SetOrigin(lo.tolist())
full = sitk.GetArrayFromImage(mesh_to_labelmap(truth, grid))  # (k, j, i)
painted = np.zeros_like(full)
centre = np.round(((truth.bounds[0] + truth.bounds[1]) / 2 - lo) / spacing).astype(int)
painted[centre[2], :, :] = full[centre[2], :, :]
painted[:, centre[1], :] = full[:, centre[1], :]
painted[:, :, centre[0]] = full[:, :, centre[0]]
image = sitk.GetImageFromArray(painted)
image.CopyInformation(grid)
sitk.WriteImage(image, str(here / "liver-painted.nii.gz"), useCompression=True)
print(f"{len(curves)} curves, painted grid {size.tolist()}")
