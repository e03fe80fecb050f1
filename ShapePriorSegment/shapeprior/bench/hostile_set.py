"""The hostile set of ``shapeprior benchmark hostile`` (:mod:`.hostile`): :func:`write_set` writes bad inputs
and options, as a careless or hostile user gives them (issue 20 and section 6 of the product-shape issue), and a
few valid ones into a folder; :func:`hostile_cases` lists the command lines on them."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

# Small fit settings: valid cases check that the input is accepted, not the fit's quality.
SMALL_FIT = ["--level", "2", "--global-steps", "5", "--vertex-steps", "2"]
# The liver-sized ellipsoid every curve, point and mask file outlines (semi-axes, mm; centre LPS mm).
RADII, CENTRE = np.array([90.0, 70.0, 60.0]), np.array([5.0, -10.0, 20.0])


@dataclass
class Case:
    """One command line (after ``shapeprior``); ``expect``: a fragment of the error line (None: valid input)."""

    name: str
    argv: list[str]
    expect: str | None

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def valid(self) -> bool:
        return self.expect is None


# --------------------------------------------------------------------------- inputs


def ellipse(axes: tuple[int, int], count: int = 48, scale: float = 1.0) -> np.ndarray:
    """The ellipsoid's outline (count, 3) on the central plane spanned by ``axes``."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    points = np.tile(CENTRE, (count, 1))
    points[:, axes[0]] += RADII[axes[0]] * np.cos(t)
    points[:, axes[1]] += RADII[axes[1]] * np.sin(t)
    return points * scale


def three_curves(scale: float = 1.0) -> list[np.ndarray]:
    """The outlines on the three central planes."""
    return [ellipse((0, 1), scale=scale), ellipse((0, 2), scale=scale), ellipse((1, 2), scale=scale)]


def write_markups(path: Path, curves: list[np.ndarray], kind: str = "ClosedCurve") -> Path:
    """Curves as LPS markups of ``kind``, compact: 0.1 um is precision enough, and 600,000 points stay 24 MB."""
    markups = [{"type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm",
                "controlPoints": [{"position": p} for p in np.round(curve, 4).tolist()]} for curve in curves]
    path.write_text(json.dumps({"markups": markups}, separators=(",", ":")))
    return path


def _surface_points(count: int = 500) -> np.ndarray:
    """Points on the ellipsoid (LPS mm)."""
    directions = np.random.default_rng(0).normal(size=(count, 3))
    return CENTRE + RADII * directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _volume(array: np.ndarray, spacing: float) -> sitk.Image:
    """``array`` (k, j, i) centred on the ellipsoid's centre."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(tuple(CENTRE - spacing * (np.array(array.shape[::-1]) - 1) / 2))
    return image


def _ellipsoid_mask(radii: np.ndarray, spacing: float) -> np.ndarray:
    """Boolean (k, j, i) ellipsoid of ``radii`` mm in a grid with a margin of 4 voxels."""
    size = np.ceil(2 * radii / spacing).astype(int) + 8
    k, j, i = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in size[::-1]], indexing="ij")
    return (i / radii[0]) ** 2 + (j / radii[1]) ** 2 + (k / radii[2]) ** 2 <= 1.0


def negate_first_spacing(path: Path) -> None:
    """Make the first pixel spacing in an image file's header negative: NIfTI pixdim[1] (bytes 80-84 of
    the header, gzipped or not) or MetaImage ElementSpacing."""
    data = path.read_bytes()
    if path.suffix == ".mha":
        path.write_bytes(data.replace(b"ElementSpacing = ", b"ElementSpacing = -", 1))
        return
    zipped = path.suffix == ".gz"
    header = bytearray(gzip.decompress(data) if zipped else data)
    header[80:84] = struct.pack("<f", -struct.unpack("<f", header[80:84])[0])
    path.write_bytes(gzip.compress(bytes(header)) if zipped else bytes(header))


def _negative_spacing(image: sitk.Image, stem: Path) -> None:
    """``image`` as ``stem``.nii.gz and ``stem``.mha, each with negative spacing in its header."""
    for path in (stem.with_suffix(".nii.gz"), stem.with_suffix(".mha")):
        sitk.WriteImage(image, str(path), useCompression=True)
        negate_first_spacing(path)


class _Payload:
    """Unpickled, makes the folder ``marker``: a model file that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def write_malicious_models(folder: Path, marker: Path) -> None:
    """``evil.pt``: the payload as a torch zip (``archive/data.pkl``); ``evil-legacy.pt``: a bare pickle."""
    payload = pickle.dumps({"format": "shapeprior-model/1", "kind": "dals", "x": _Payload(marker)})
    with zipfile.ZipFile(folder / "evil.pt", "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    (folder / "evil-legacy.pt").write_bytes(payload)


def _write_curve_files(folder: Path) -> None:
    curves = three_curves()
    write_markups(folder / "curves.mrk.json", curves)
    text = (folder / "curves.mrk.json").read_text()
    (folder / "cut.mrk.json").write_text(text[: len(text) // 2])
    (folder / "binary.mrk.json").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.mrk.json").touch()
    write_markups(folder / "fiducials.mrk.json", [_surface_points(20)], kind="Fiducial")
    write_markups(folder / "two-points.mrk.json", [curves[0][:2], *curves[1:]])
    nan = [c.copy() for c in curves]
    nan[0][3, 1] = np.nan
    write_markups(folder / "nan.mrk.json", nan)
    for name, scale in (("micrometres", 1e3), ("micrometres-1e6", 1e6), ("all-1e28", 1e28)):
        write_markups(folder / f"{name}.mrk.json", three_curves(scale))
    one_huge = [c.copy() for c in curves]
    one_huge[1][5, 0] = 1e30
    write_markups(folder / "one-1e30.mrk.json", one_huge)
    one_far = [c.copy() for c in curves]
    one_far[1][5, 0] = 1e12
    write_markups(folder / "one-1e12.mrk.json", one_far)
    for count in (15_000, 30_000, 600_000):
        write_markups(folder / f"points-{count}.mrk.json", [ellipse((0, 1), count), *curves[1:]])
    t = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    eight = np.stack([CENTRE[0] + 80 * np.sin(t), np.full_like(t, CENTRE[1]), CENTRE[2] + 40 * np.sin(2 * t)], 1)
    write_markups(folder / "figure-8.mrk.json", [curves[0], eight, curves[2]])
    shifted = curves[0] * [0.5, 0.3, 1.0] + [60, -7, 0]  # on the axial plane, across the outline's right end
    write_markups(folder / "crossing.mrk.json", [*curves, shifted])
    line = CENTRE + np.outer([0, 10, 30, 20], [0, 1, 0])
    write_markups(folder / "collinear.mrk.json", [curves[0], curves[1], line])
    write_markups(folder / "one-plane.mrk.json", [curves[0], curves[0] * [0.8, 0.8, 1.0] + [0, 0, 1e-3]])
    write_markups(folder / "open.mrk.json", curves, kind="Curve")


def _write_point_files(folder: Path) -> None:
    points = _surface_points()
    np.savetxt(folder / "points.xyz", points)
    np.savetxt(folder / "points-five.xyz", points[:5])
    np.savetxt(folder / "points-micrometres.xyz", points * 1e3)
    np.savetxt(folder / "points-1e30.xyz", np.vstack([points, [1e30, 0, 0]]))
    (folder / "points-nan.xyz").write_text("1 2 3\nnan 4 5\n" * 20)
    (folder / "points-binary.xyz").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.xyz").touch()
    (folder / "points.txt").write_text("1 2 3\n")
    (folder / "huge-header.ply").write_text("ply\nformat ascii 1.0\nelement vertex 9999999999\nproperty float x\n"
                                            "property float y\nproperty float z\nend_header\n1 2 3\n")
    rows = "".join(f"{x} {y} {z}\n" for x, y, z in points)
    (folder / "cut.ply").write_text(f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\n"
                                    f"property float y\nproperty float z\nend_header\n{rows[: len(rows) // 2]}")


def _write_images(folder: Path) -> None:
    """A synthetic 'organ' image and masks of the liver-sized ellipsoid, and their broken variants."""
    blob = _ellipsoid_mask(np.array([21.0, 9.0, 8.0]), 1.0)
    image = _volume((200.0 + 300.0 * blob + np.random.default_rng(0).normal(0, 20, blob.shape)).astype(np.float32), 1.0)
    sitk.WriteImage(image, str(folder / "image.nii.gz"), useCompression=True)
    data = (folder / "image.nii.gz").read_bytes()
    (folder / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "garbage.nii.gz").write_bytes(bytes(range(256)) * 64)
    (folder / "empty.nii.gz").touch()
    _negative_spacing(image, folder / "negative-spacing")
    nan = sitk.GetArrayFromImage(image)
    nan[2, 2, 2] = np.nan
    sitk.WriteImage(_volume(nan, 1.0), str(folder / "nan.nrrd"), useCompression=True)  # ITK's NIfTI reads NaN as 0
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 10, 12, 14), np.float32), isVector=False),
                    str(folder / "series.nii.gz"), useCompression=True)
    liver = _ellipsoid_mask(RADII, 4.0)
    masks = {name: _volume(array, 4.0) for name, array in (
        ("mask-float01.nii.gz", liver.astype(np.float32)),
        ("mask-uint255.nii.gz", 255 * liver.astype(np.uint8)),
        ("mask-float255.nrrd", 255 * liver.astype(np.float64)),
        ("mask-empty.nii.gz", np.zeros_like(liver, np.uint8)),
        ("mask-labels.nii.gz", liver.astype(np.uint8) * (1 + (np.indices(liver.shape)[2] > 20))),
        ("mask-fraction.nii.gz", np.where(liver, 0.5, 0.0).astype(np.float32)))}
    for name, mask in masks.items():
        sitk.WriteImage(mask, str(folder / name), useCompression=True)
    data = (folder / "mask-uint255.nii.gz").read_bytes()
    (folder / "mask-cut.nii.gz").write_bytes(data[: len(data) // 2])
    _negative_spacing(masks["mask-uint255.nii.gz"], folder / "mask-negative-spacing")


def _write_models(folder: Path, dals_model: str) -> None:
    from ..models.bundle import resolve_model

    write_malicious_models(folder, folder / "evil-ran")
    data = resolve_model(dals_model).read_bytes()
    (folder / "cut-model.pt").write_bytes(data[: len(data) // 2])
    (folder / "garbage.pt").write_bytes(bytes(range(256)) * 16)


# --------------------------------------------------------------------------- cases


def _contour_cases(f: Callable[[str], str], dals: list[str], out: list[str]) -> list[Case]:
    fit = ["fit-contours", *dals, *SMALL_FIT]
    curves = f("curves.mrk.json")
    cases = [Case("missing file", [*fit, f("no-such.mrk.json"), *out], "no such file"),
             Case("empty file", [*fit, f("empty.mrk.json"), *out], "is empty"),
             Case("directory", [*fit, f("a-folder.mrk.json"), *out], "is a directory"),
             Case("truncated JSON", [*fit, f("cut.mrk.json"), *out], "invalid JSON"),
             Case("binary, not JSON", [*fit, f("binary.mrk.json"), *out], "invalid JSON"),
             Case("no curves", [*fit, f("fiducials.mrk.json"), *out], "holds no ClosedCurve markups"),
             Case("open curves", [*fit, f("open.mrk.json"), *out], "is an open curve"),
             Case("two points", [*fit, f("two-points.mrk.json"), *out], "has 2 points; at least 3"),
             Case("NaN", [*fit, f("nan.mrk.json"), *out], "NaN or infinite"),
             Case("one 1e12 coordinate", [*fit, f("one-1e12.mrk.json"), *out], "beyond 100 m"),
             Case("one 1e30 coordinate", [*fit, f("one-1e30.mrk.json"), *out], "beyond 100 m"),
             Case("all x1e28", [*fit, f("all-1e28.mrk.json"), *out], "beyond 100 m"),
             Case("micrometres x1000", [*fit, f("micrometres.mrk.json"), *out], "x the typical liver size"),
             Case("micrometres x1e6", [*fit, f("micrometres-1e6.mrk.json"), *out], "beyond 100 m"),
             Case("30,000-point curve", [*fit, f("points-30000.mrk.json"), *out], "30000 control points; at most"),
             Case("600,000-point curve", [*fit, f("points-600000.mrk.json"), *out], "control points; at most 200000"),
             Case("figure 8", [*fit, f("figure-8.mrk.json"), *out], "curve 2 crosses itself"),
             Case("crossing curves", [*fit, f("crossing.mrk.json"), *out], "curves 1 and 4 cross each other"),
             Case("collinear curve", [*fit, f("collinear.mrk.json"), *out], "curve 3 encloses no area"),
             Case("curves on one plane", [*fit, f("one-plane.mrk.json"), *out], "at least two non-parallel planes"),
             Case("--level 12", [*fit, curves, *out, "--level", "12"], "--level must be between 1 and 6"),
             Case("--global-steps -5", [*fit, curves, *out, "--global-steps", "-5"], "--global-steps must be between"),
             Case("--lambda-dir nan", [*fit, curves, *out, "--lambda-dir", "nan"], "--lambda-dir must be between"),
             Case("unknown option", [*fit, curves, *out, "--levle", "3"], "unrecognized arguments: --levle"),
             Case("--out-seg without a grid", [*fit, curves, "--out-seg", f("out/seg.nii.gz")], "needs a grid"),
             Case("truncated --reference", [*fit, curves, *out, "--reference", f("cut.nii.gz")], "truncated"),
             Case("model of another kind", ["fit-contours", curves, "--model", "hippocampus", *out],
                  "'dissm' model; this command needs a 'dals' model"),
             Case("malicious model (torch zip)", ["fit-contours", curves, "--model", f("evil.pt"), *out],
                  "not a readable shapeprior model"),
             Case("malicious model (bare pickle)", ["fit-contours", curves, "--model", f("evil-legacy.pt"), *out],
                  "not a readable shapeprior model"),
             Case("truncated model", ["fit-contours", curves, "--model", f("cut-model.pt"), *out],
                  "not a readable shapeprior model"),
             Case("garbage model", ["fit-contours", curves, "--model", f("garbage.pt"), *out],
                  "not a readable shapeprior model"),
             Case("unknown model name", ["fit-contours", curves, "--model", "spleen", *out], "unknown model 'spleen'"),
             Case("output: unknown extension", [*fit, curves, "--out-model", f("out/liver.xyz")],
                  "unsupported mesh format"),
             Case("output: a directory", [*fit, curves, "--report", f("a-folder.mrk.json")], "is a directory"),
             Case("output: through a file", [*fit, curves, "--report", f("curves.mrk.json/r.json")],
                  "cannot be written"),
             Case("output: unwritable folder", [*fit, curves, "--report", "/proc/shapeprior/r.json"],
                  "cannot be written"),
             Case("output exists, no --overwrite", [*fit, curves, "--report", f("existing.json")],
                  "exists; pass --overwrite"),
             Case("valid curves", [*fit, curves, "--report", f("valid/curves.json")], None),
             Case("output in a missing folder", [*fit, curves, "--out-model", f("valid/new/sub/liver.vtk")], None),
             Case("15,000-point curve", [*fit, f("points-15000.mrk.json"), "--report", f("valid/long.json")], None)]
    return cases


def _point_cases(f: Callable[[str], str], dals: list[str], out: list[str]) -> list[Case]:
    fit = ["fit-points", *dals, *SMALL_FIT]
    return [Case("missing file", [*fit, f("no-such.xyz"), *out], "no such file"),
            Case("empty file", [*fit, f("empty.xyz"), *out], "is empty"),
            Case("binary, not text", [*fit, f("points-binary.xyz"), *out], "not a readable .xyz"),
            Case("NaN", [*fit, f("points-nan.xyz"), *out], "NaN or infinite"),
            Case("five points", [*fit, f("points-five.xyz"), *out], "at least 10 points"),
            Case("one 1e30 coordinate", [*fit, f("points-1e30.xyz"), *out], "beyond 100 m"),
            Case("micrometres x1000", [*fit, f("points-micrometres.xyz"), *out], "x the typical liver size"),
            Case("PLY header of 1e10 points", [*fit, f("huge-header.ply"), *out], "declares 9999999999 points"),
            Case("truncated PLY", [*fit, f("cut.ply"), *out], "truncated"),
            Case("unknown extension", [*fit, f("points.txt"), *out], "unsupported point cloud format"),
            Case("--global-steps -5", [*fit, f("points.xyz"), *out, "--global-steps", "-5"], "--global-steps must"),
            Case("model of another kind", ["fit-points", f("points.xyz"), "--model", "hippocampus", *out],
                 "this command needs a 'dals' model"),
            Case("valid points", [*fit, f("points.xyz"), "--report", f("valid/points.json")], None)]


def _image_cases(f: Callable[[str], str], dissm: list[str], out: list[str]) -> list[Case]:
    fit = ["fit-image", *dissm]
    image = f("image.nii.gz")
    return [Case("missing file", [*fit, f("no-such.nii.gz"), *out], "no such file"),
            Case("empty file", [*fit, f("empty.nii.gz"), *out], "is empty"),
            Case("directory", [*fit, f("a-folder.mrk.json"), *out], "is a directory"),
            Case("not an image", [*fit, f("garbage.nii.gz"), *out], "not a readable image"),
            Case("truncated .nii.gz", [*fit, f("cut.nii.gz"), *out], "truncated"),
            Case("4D image", [*fit, f("series.nii.gz"), *out], "a 4D image"),
            Case("negative spacing (NIfTI)", [*fit, f("negative-spacing.nii.gz"), *out], "tools disagree"),
            Case("negative spacing (MetaImage)", [*fit, f("negative-spacing.mha"), *out], "tools disagree"),
            Case("NaN voxel", [*fit, f("nan.nrrd"), *out], "NaN or infinite values"),
            Case("--steps 0", [*fit, image, *out, "--steps", "0"], "--steps must be between 1 and 1000"),
            Case("--stages out of order", [*fit, image, *out, "--stages", "shape"], "--stages must be a leading part"),
            Case("model of another kind", ["fit-image", image, "--model", "liver", *out],
                 "'dals' model: fit-image needs a dissm or deepssm model"),
            Case("malicious model", ["fit-image", image, "--model", f("evil.pt"), *out],
                 "not a readable shapeprior model"),
            Case("output exists, no --overwrite", [*fit, image, "--report", f("existing.json")], "exists; pass"),
            Case("valid image", [*fit, image, "--stages", "translation", "--steps", "2",
                                 "--report", f("valid/image.json")], None)]


def _mask_cases(f: Callable[[str], str], dals: list[str], dissm: list[str], out: list[str]) -> list[Case]:
    fit = ["refine-mask", *dals]  # its DALS fit settings are the refinement's own
    mask = f("mask-uint255.nii.gz")
    return [Case("missing file", [*fit, f("no-such.nii.gz"), *out], "no such file"),
            Case("directory", [*fit, f("a-folder.mrk.json"), *out], "is a directory"),
            Case("truncated .nii.gz", [*fit, f("mask-cut.nii.gz"), *out], "truncated"),
            Case("4D image", [*fit, f("series.nii.gz"), *out], "a 4D image"),
            Case("negative spacing (NIfTI)", [*fit, f("mask-negative-spacing.nii.gz"), *out], "tools disagree"),
            Case("negative spacing (MetaImage)", [*fit, f("mask-negative-spacing.mha"), *out], "tools disagree"),
            Case("empty mask", [*fit, f("mask-empty.nii.gz"), *out], "empty mask"),
            Case("fractional values", [*fit, f("mask-fraction.nii.gz"), *out], "not a label image"),
            Case("two labels, no --label", [*fit, f("mask-labels.nii.gz"), *out], "several labels"),
            Case("--label 0", [*fit, mask, *out, "--label", "0"], "--label must list positive label values"),
            Case("--trust-voxels -1", [*fit, mask, *out, "--trust-voxels", "-1"], "--trust-voxels must be between"),
            Case("--lambda-dir nan", [*fit, mask, *out, "--lambda-dir", "nan"], "--lambda-dir must be between"),
            Case("DALS flags, implicit model",
                 ["refine-mask", mask, *dissm, *out, "--global-only", "--lambda-dir", "5"],
                 "--lambda-dir and --global-only only apply to DALS models"),
            Case("malicious model", ["refine-mask", mask, "--model", f("evil.pt"), *out],
                 "not a readable shapeprior model"),
            Case("--image truncated", [*fit, mask, *out, "--image", f("cut.nii.gz")], "truncated"),
            Case("output: unknown extension", [*fit, mask, "--out-seg", f("out/seg.png")],
                 "unsupported labelmap format"),
            Case("float 0/1 mask", [*fit, f("mask-float01.nii.gz"), "--report", f("valid/float01.json")], None),
            Case("0/255 mask", [*fit, mask, "--report", f("valid/uint255.json")], None),
            Case("float 0/255 mask (NRRD)", [*fit, f("mask-float255.nrrd"), "--report", f("valid/float255.json")],
                 None)]


def write_set(folder: Path, dals_model: str = "liver") -> None:
    """Write the hostile set's files into ``folder`` (new); ``dals_model`` is cut into a truncated model file."""
    for sub in ("out", "valid", "a-folder.mrk.json"):
        (folder / sub).mkdir(parents=True)
    (folder / "existing.json").write_text('{"an": "earlier report"}\n')
    _write_curve_files(folder)
    _write_point_files(folder)
    _write_images(folder)
    _write_models(folder, dals_model)


def hostile_cases(folder: Path, dals_model: str = "liver", dissm_model: str = "hippocampus") -> list[Case]:
    """The cases on the set in ``folder`` (:func:`write_set`), named ``command: defect``. Error cases write
    to ``folder/out``, which must stay empty; valid ones to ``folder/valid``."""

    def f(name: str) -> str:
        return str(folder / name)

    dals, dissm = ["--model", str(dals_model)], ["--model", str(dissm_model)]
    out = ["--report", f("out/report.json"), "--out-model", f("out/model.vtk")]
    cases = (_contour_cases(f, dals, out) + _point_cases(f, dals, out) + _image_cases(f, dissm, out)
             + _mask_cases(f, dals, dissm, out))
    for case in cases:
        case.name = f"{case.command}: {case.name}"
    return cases


# --------------------------------------------------------------------------- running
