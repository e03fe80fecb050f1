"""Hostile inputs to the readers: each bad file gives one InputError naming the file, never another exception."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh

from shapeprior.bench.hostile_set import negate_first_spacing, write_malicious_models
from shapeprior.errors import InputError
from shapeprior.fit import contours
from shapeprior.fit.contours import first_crossing, group_planes, resample_closed_curve
from shapeprior.io import files, labelmaps, markups, points
from shapeprior.io.images import read_image, read_mask, segment_names
from shapeprior.io.labelmaps import painted_slice_contours
from shapeprior.io.markups import read_closed_curves, read_point_list
from shapeprior.io.points import read_point_cloud
from shapeprior.models.bundle import load_bundle, read_header


def loop(centre, u, v, a: float, b: float, count: int = 24) -> np.ndarray:
    """Closed curve (count, 3) ``centre + a cos t u + b sin t v``; the first point is not repeated."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    return np.asarray(centre, float) + np.outer(a * np.cos(t), u) + np.outer(b * np.sin(t), v)


X, Y, Z = np.eye(3)


def three_planes(count: int = 24) -> list[np.ndarray]:
    """Outlines of an ellipsoid (semi-axes 90, 70, 60 mm) on its three central planes."""
    return [loop([5, -10, 20], X, Y, 90, 70, count), loop([5, -10, 20], X, Z, 90, 60), loop([5, -10, 20], Y, Z, 70, 60)]


def markups_file(path: Path, curves, kind: str = "ClosedCurve") -> Path:
    """A .mrk.json with one markup of ``kind`` per curve (LPS), as Slicer writes them."""
    path.write_text(json.dumps({"@schema": markups.SCHEMA, "markups": [
        {"type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm",
         "controlPoints": [{"id": str(i), "position": [float(v) for v in p], "positionStatus": "defined"}
                           for i, p in enumerate(curve)]}
        for curve in curves]}))
    return path


def raises_for(path, problem: str):
    """pytest.raises for an InputError about ``path`` whose message matches ``problem``."""
    return pytest.raises(InputError, match=f"^{path}: .*{problem}")


# ------------------------------------------------------------------ any file


@pytest.mark.parametrize("read, name", [(read_closed_curves, "c.mrk.json"), (read_point_list, "p.mrk.json"),
                                        (read_point_cloud, "p.xyz"), (read_point_cloud, "p.ply"),
                                        (read_image, "i.nii.gz"), (read_mask, "m.seg.nrrd")])
def test_directory_empty_unreadable_and_special_files(tmp_path, monkeypatch, read, name):
    folder = tmp_path / name
    folder.mkdir()
    with raises_for(folder, "is a directory"):
        read(folder)
    empty = tmp_path / "empty" / name
    empty.parent.mkdir()
    empty.touch()
    with raises_for(empty, "is empty"):
        read(empty)
    fifo = tmp_path / "fifo" / name  # reading a pipe would block for ever
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with raises_for(fifo, "not a regular file"):
        read(fifo)
    locked = tmp_path / "locked" / name
    locked.parent.mkdir()
    locked.write_bytes(b"x" * 100)

    def refuse(*args, **kwargs):  # chmod 000 does not stop root, who runs these tests on CI
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "open", refuse, raising=False)
    with raises_for(locked, "permission denied"):
        read(locked)


def test_file_size_limit(tmp_path, monkeypatch):
    path = markups_file(tmp_path / "big.mrk.json", three_planes())
    monkeypatch.setattr(markups, "MAX_FILE_BYTES", 1000)
    with raises_for(path, r"is 0 MiB; at most 0 MiB is read"):
        read_closed_curves(path)


# ------------------------------------------------------------------ markups content


def _markup(**fields) -> dict:
    return {"type": "ClosedCurve", "controlPoints": [{"position": [float(i), 2.0 * (i % 2), 0.0]} for i in range(4)],
            **fields}


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{\"markups\": [", "invalid JSON"),
        ("\xff\xfe garbage", "invalid JSON"),
        ("[" * 100_000 + "]" * 100_000, "invalid JSON"),  # nesting deeper than Python's recursion limit
        ([1, 2, 3], r"not a Slicer markups file"),
        ({"markups": {"type": "ClosedCurve"}}, r"not a Slicer markups file"),
        ({"markups": [7]}, "markup 1 is malformed"),
        ({"markups": [{"type": "ClosedCurve", "controlPoints": "0 0 0"}]}, "markup 1 is malformed"),
        ({"markups": [_markup(controlPoints=[[0, 0, 0]] * 3)]}, "malformed control points"),
        ({"markups": [_markup(controlPoints=[{"position": "1 2 3"}] * 3)]}, "malformed control points"),
        ({"markups": [_markup(controlPoints=[{"position": [True, 0, 0]}] * 3)]}, "malformed control points"),
        ({"markups": [_markup(controlPoints=[{"position": {"x": 1}}] * 3)]}, "malformed control points"),
        ({"markups": [_markup(controlPoints=[{"position": [1, 2, 3, 4]}] * 3)]}, "malformed control points"),
        ({"markups": [_markup(controlPoints=[{"position": [1, 2]}] * 3)]}, "malformed control points"),
        ({"markups": [_markup(coordinateSystem=None)]}, "unknown coordinateSystem 'NONE'"),
        ({"markups": [_markup(coordinateUnits="um")]}, r"coordinateUnits 'um'; millimetres"),
        ('{"markups": [{"type": "ClosedCurve", "controlPoints": [{"position": [1e400, 0, 0]}]}]}', "NaN or infinite"),
        ({"markups": [_markup(controlPoints=[{"position": [10**400, 0, 0]}] * 3)]}, "beyond 100 m: not millimetres"),
        ({"markups": [_markup(controlPoints=[{"position": [2e5, 0, 0]}, {"position": [0, 1, 0]},
                                             {"position": [0, 0, 1]}])]}, "beyond 100 m: not millimetres"),
        ({"markups": [{"type": "ClosedCurve"}]}, "closed curve 1 has 0 points"),
        ({"markups": [_markup(controlPoints=[{"position": [0, 0, 0]}, {"position": [1, 0, 0]},
                                             {"positionStatus": "undefined"}])]}, "closed curve 1 has 2 points"),
    ],
    ids=["cut", "binary", "deep", "list", "markups-object", "markup-number", "points-string", "point-list",
         "position-string", "position-bool", "position-object", "position-4", "position-2", "system-null",
         "micrometres", "overflow-float", "overflow-int", "100-m", "no-points", "undefined-point"],
)
def test_bad_markups_content(tmp_path, content, problem):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with raises_for(path, problem):
        read_closed_curves(path)


def test_nan_literals_in_json(tmp_path):
    for literal in ("NaN", "Infinity", "-Infinity"):
        path = tmp_path / f"{literal}.mrk.json"
        path.write_text(json.dumps({"markups": [_markup()]}).replace("2.0", literal, 1))
        with raises_for(path, "markup 1 has NaN or infinite coordinates"):
            read_closed_curves(path)


def test_points_being_placed_are_skipped(tmp_path):
    curve = three_planes()[0]
    path = markups_file(tmp_path / "c.mrk.json", [curve])
    data = json.loads(path.read_text())
    data["markups"][0]["controlPoints"].append({"id": "x", "position": [0, 0, 0], "positionStatus": "preview"})
    path.write_text(json.dumps(data))
    np.testing.assert_array_equal(read_closed_curves(path)[0], curve)


def test_control_point_limits(tmp_path):
    long_curve = loop([0, 0, 0], X, Y, 80, 60, markups.MAX_CURVE_POINTS + 1)
    path = markups_file(tmp_path / "long.mrk.json", [long_curve])
    with raises_for(path, f"closed curve 1 has {markups.MAX_CURVE_POINTS + 1} control points; at most"):
        read_closed_curves(path)
    just = markups_file(tmp_path / "just.mrk.json", [long_curve[:-1]])
    assert len(read_closed_curves(just)[0]) == markups.MAX_CURVE_POINTS
    path = tmp_path / "many.mrk.json"
    point = {"position": [0, 0, 0]}
    many = [point] * (markups.MAX_FILE_POINTS + 1)
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": many}]}))
    with raises_for(path, f"holds {markups.MAX_FILE_POINTS + 1} control points; at most"):
        read_point_list(path)


# ------------------------------------------------------------------ curve geometry


def test_figure_eight_is_refused(tmp_path):
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    eight = np.stack([60 * np.sin(t), 30 * np.sin(2 * t), np.zeros_like(t)], axis=1) + [5, -10, 20]
    curves = three_planes()
    curves[1] = eight @ np.array([X, Z, Y])  # drawn on the coronal plane (x, z)
    path = markups_file(tmp_path / "eight.mrk.json", curves)
    with raises_for(path, "curve 2 crosses itself"):
        group_planes(read_closed_curves(path), str(path))


def test_crossing_curves_on_one_plane_are_refused(tmp_path):
    curves = three_planes() + [loop([60, -10, 20], X, Y, 50, 20)]  # overlaps the axial outline's right end
    path = markups_file(tmp_path / "crossing.mrk.json", curves)
    with raises_for(path, "curves 1 and 4 cross each other"):
        group_planes(read_closed_curves(path), str(path))
    curves[3] = loop([0, -10, 20], X, Y, 40, 20)  # nested inside it (a hole): accepted
    assert sorted(len(p.curves) for p in group_planes(curves)) == [1, 1, 2]
    curves[3] = loop([5, -10, 60], X, Y, 40, 20)  # crossing it in space, on another plane: accepted
    assert len(group_planes(curves)) == 4


def test_collinear_curve_is_refused(tmp_path):
    curves = three_planes()
    curves[2] = np.array([[0, 0, 0], [10, 0, 0], [30, 0, 0], [20, 0, 0]], float) + [5, -10, 20]
    path = markups_file(tmp_path / "line.mrk.json", curves)
    with raises_for(path, "curve 3 encloses no area"):
        group_planes(read_closed_curves(path), str(path))
    curves[2] = loop([5, -10, 20], Y, Z, 70, 2)  # thin, but a region: accepted
    assert len(group_planes(curves)) == 3


def test_first_crossing():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float)
    assert first_crossing([square]) is None
    assert first_crossing([bowtie]) == (0, 0)
    assert first_crossing([square, square + 5]) == (0, 1)
    assert first_crossing([square, square + 10]) == (0, 1)  # through one corner
    assert first_crossing([square, square + [10.5, 0]]) is None
    assert first_crossing([square, square + [10, 3]]) is None  # edges touch along a line
    eight = np.array([[0, 0], [10, 5], [20, 0], [10, -5], [0, 0], [-10, 5], [-20, 0], [-10, -5]], float)
    assert first_crossing([eight]) == (0, 0)  # crossing at a corner it passes twice
    t = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    circle = np.stack([40 * np.cos(t), 40 * np.sin(t)], axis=1)
    overshot = np.vstack([circle, [[40.5, 5.0]]])  # the last point placed past the first, outside
    assert first_crossing([overshot]) is None  # a small twist, harmless
    assert first_crossing([np.vstack([circle, [[40.5, 5.0]], -circle[4:12]])]) == (0, 0)
    assert first_crossing([square, square * 0.5 + 2]) is None  # nested
    dense = loop([0, 0, 0], X, Y, 50, 30, 50_000)[:, :2]  # many edges in a few narrow chunks
    assert first_crossing([dense]) is None


def test_long_curves_stay_small():
    curves = three_planes()
    curves[0] = loop([5, -10, 20], X, Y, 90, 70, 30_000)  # an exported contour: 30,000 points
    tracemalloc.start()
    try:
        planes = group_planes(curves)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"  # a full SVD would ask for 7 GB
    assert len(planes) == 3
    huge = loop([0, 0, 0], X, Y, 50_000, 40_000, 64)  # 280 m around, still within the coordinate bound
    assert len(resample_closed_curve(huge)) == contours.MAX_RESAMPLED_POINTS


def test_too_many_curves():
    curves = [loop([0, 0, z], X, Y, 50, 40) for z in np.linspace(0, 100, contours.MAX_CURVES + 1)]
    with pytest.raises(InputError, match=f"^many: {contours.MAX_CURVES + 1} curves; at most"):
        group_planes(curves, "many")


# ------------------------------------------------------------------ images


@pytest.fixture
def volume() -> sitk.Image:
    """Int16 ramp (20, 30, 40) voxels with anisotropic spacing."""
    image = sitk.GetImageFromArray((np.arange(24_000).reshape(20, 30, 40) % 251).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    return image


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.mha"])
@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_images_are_refused(tmp_path, capfd, volume, name, fraction):
    path = tmp_path / name
    sitk.WriteImage(volume, str(path), useCompression=name != "v.nii")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with raises_for(path, "truncated"):
        read_image(path)
    assert capfd.readouterr().err == ""  # ITK's own printout is not shown: the error stays one line


def test_gzip_with_short_or_corrupt_content(tmp_path, volume):
    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(volume, str(path), useCompression=True)
    content = gzip.decompress(path.read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(content[:-100]))  # a complete gzip stream, of a cut file
    with raises_for(short, r"truncated: the header describes 48352 bytes, the file holds 48252"):
        read_image(short)
    corrupt = tmp_path / "corrupt.nii.gz"
    data = bytearray(gzip.compress(content))
    data[-6] ^= 0xFF  # the CRC
    corrupt.write_bytes(bytes(data))
    with raises_for(corrupt, "corrupt gzip data"):
        read_image(corrupt)


def _nrrd_with(tmp_path, volume, old: bytes, new: bytes) -> Path:
    path = tmp_path / "edited.nrrd"
    sitk.WriteImage(volume, str(path))
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, problem",
    [
        (b"(0.69999999999999996,0,0)", b"(0,0,0)", "pixel spacing 0 x 0.8 x 2 mm in the header; it must be positive"),
        (b"(0,0.80000000000000004,0)", b"(0.5,0.8,0)", "direction matrix is not orthonormal"),
        (b"sizes: 40 30 20", b"sizes: 4000 3000 2000", "the header describes 24000000000 voxels"),
        (b"space origin: (-10,5,3)", b"space origin: (nan,5,3)", "not a readable image"),
        (b"dimension: 3", b"dimension: 2", "not a readable image"),
    ],
    ids=["zero-spacing", "skewed", "too-many-voxels", "nan-origin", "wrong-dimension"],
)
def test_bad_image_headers(tmp_path, volume, old, new, problem):
    path = _nrrd_with(tmp_path, volume, old, new)
    with raises_for(path, problem):
        read_image(path)


def test_nrrd_direction_pointing_back_is_a_flipped_axis(tmp_path, volume):
    """NRRD has no spacing sign: a space direction's sign is the axis's orientation, read alike everywhere."""
    path = _nrrd_with(tmp_path, volume, b"(0.69999999999999996,0,0)", b"(-0.7,0,0)")
    image = read_image(path)
    assert image.GetSpacing() == pytest.approx((0.7, 0.8, 2.0))
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((2, 0, 0)), (-11.4, 5.0, 3.0))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.mha"])
def test_negative_spacing_is_refused_where_readers_disagree(tmp_path, volume, name):
    """NIfTI pixdim or MetaImage ElementSpacing < 0: ITK (so Slicer) mirrors the axis about the origin,
    putting voxel (2, 0, 0) of this image at x = -11.4 mm where NiBabel (from the NIfTI's sform or
    qform) and VTK's MetaImage reader put it at -8.6 mm."""
    path = tmp_path / name
    sitk.WriteImage(volume, str(path), useCompression=name.endswith(".gz"))
    negate_first_spacing(path)
    assert sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint((2, 0, 0))[0] == pytest.approx(-11.4)
    with raises_for(path, "pixel spacing -0.7 x 0.8 x 2 mm in the header; tools disagree on where its voxels are"):
        read_image(path)
    with raises_for(path, "tools disagree"):
        read_mask(path)


def test_4d_and_multicomponent_images(tmp_path):
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.uint8), isVector=False), str(series))
    with raises_for(series, r"a 4D image \(6 x 5 x 4 x 3: a time series or several volumes\)"):
        read_image(series)
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(rgb))
    with raises_for(rgb, r"multi-component image \(3 values per voxel\)"):
        read_image(rgb)


@pytest.mark.parametrize("dtype, on", [(np.float32, 1.0), (np.float64, 1.0), (np.uint8, 255), (np.float32, 255.0)])
def test_binary_masks_of_any_type(tmp_path, dtype, on):
    array = np.zeros((6, 7, 8), dtype)
    array[2:4, 2:5, 3:6] = on
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    mask = sitk.GetArrayFromImage(read_mask(path))
    assert mask.dtype == np.uint8 and mask.sum() == 18 and set(np.unique(mask)) == {0, 1}


def test_fractional_mask_is_refused(tmp_path):
    array = np.zeros((6, 7, 8), np.float32)
    array[2:4, 2:5, 3:6] = 1.0
    array[3, 3, 4] = 0.5  # resampled with linear interpolation
    path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with raises_for(path, "not a label image"):
        read_mask(path)


# ------------------------------------------------------------------ Segment Editor segmentations


TERMINOLOGY = ("TerminologyEntry:Segmentation category and type - 3D Slicer General Anatomy list"
               "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^|")


def write_segmentation(path: Path, layers: np.ndarray, segments: list[tuple[str, int, int]]) -> Path:
    """A .seg.nrrd as Slicer writes it: ``layers`` (L, k, j, i) as L components ("kinds: list
    domain domain domain" when L > 1) and SegmentN_* metadata for each (name, layer, label)."""
    image = sitk.GetImageFromArray(np.moveaxis(layers, 0, -1), isVector=True) if len(layers) > 1 \
        else sitk.GetImageFromArray(layers[0])
    image.SetSpacing((0.8, 0.8, 1.5))
    image.SetOrigin((-20.0, 10.0, 4.0))
    for n, (name, layer, label) in enumerate(segments):
        image.SetMetaData(f"Segment{n}_ID", f"Segment_{n + 1}")
        image.SetMetaData(f"Segment{n}_Name", name)
        image.SetMetaData(f"Segment{n}_NameAutoGenerated", "0")
        image.SetMetaData(f"Segment{n}_Color", "0.5 0.7 0.2")
        image.SetMetaData(f"Segment{n}_ColorAutoGenerated", "1")
        image.SetMetaData(f"Segment{n}_LabelValue", str(label))
        image.SetMetaData(f"Segment{n}_Layer", str(layer))
        image.SetMetaData(f"Segment{n}_Extent", "0 7 0 6 0 5")
        image.SetMetaData(f"Segment{n}_Tags", TERMINOLOGY)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|Closed surface|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    sitk.WriteImage(image, str(path), useCompression=True)
    path.write_bytes(path.read_bytes().replace(b"kinds: vector domain", b"kinds: list domain", 1))
    return path


@pytest.fixture
def organs() -> np.ndarray:
    """(2, 6, 7, 8) layers: liver (1) and kidney (2) in layer 0, a tumour (1) overlapping the liver in layer 1."""
    layers = np.zeros((2, 6, 7, 8), np.uint8)
    layers[0, 1:4, 1:5, 1:5] = 1  # 48 voxels
    layers[0, 1:4, 1:5, 6:8] = 2  # 24
    layers[1, 2:4, 2:4, 2:4] = 1  # 8
    return layers


def test_segment_by_name_in_one_layer(tmp_path, organs):
    path = write_segmentation(tmp_path / "organs.seg.nrrd", organs[:1], [("Liver", 0, 1), ("kidney", 0, 2)])
    assert segment_names(path) == {"Liver": (0, 1), "kidney": (0, 2)}
    for name, count in (("liver", 48), ("LIVER", 48), (" Kidney ", 24)):
        mask = read_mask(path, segment=name)
        assert sitk.GetArrayViewFromImage(mask).sum() == count
        assert mask.GetSpacing() == pytest.approx((0.8, 0.8, 1.5)) and mask.GetOrigin() == pytest.approx((-20, 10, 4))
    assert sitk.GetArrayViewFromImage(read_mask(path, [2])).sum() == 24
    with raises_for(path, r"holds several segments \('Liver', 'kidney'\); choose with --segment"):
        read_mask(path)
    with raises_for(path, r"no segment named 'spleen' \(segments: 'Liver', 'kidney'\)"):
        read_mask(path, segment="spleen")
    with raises_for(path, "choose a segment by name or by label values, not both"):
        read_mask(path, [1], segment="liver")


def test_segment_in_a_second_layer(tmp_path, organs):
    path = write_segmentation(tmp_path / "overlap.seg.nrrd", organs,
                              [("liver", 0, 1), ("kidney", 0, 2), ("tumour", 1, 1)])
    assert b"kinds: list domain domain domain" in path.read_bytes()[:1000]
    assert segment_names(path) == {"liver": (0, 1), "kidney": (0, 2), "tumour": (1, 1)}
    tumour = sitk.GetArrayFromImage(read_mask(path, segment="Tumour"))
    np.testing.assert_array_equal(tumour, organs[1])
    liver = sitk.GetArrayFromImage(read_mask(path, segment="liver"))
    np.testing.assert_array_equal(liver, organs[0] == 1)
    with raises_for(path, r"segments in 2 layers \('liver', 'kidney', 'tumour'\); choose one with --segment"):
        read_mask(path)
    with raises_for(path, "segments in 2 layers"):
        read_mask(path, [1])
    with raises_for(path, "a multi-component image"):
        read_image(path)


def test_legacy_segmentation_one_segment_per_layer(tmp_path, organs):
    path = write_segmentation(tmp_path / "legacy.seg.nrrd", organs, [("liver", 0, 1), ("tumour", 1, 1)])
    data = path.read_bytes()
    header, body = data.split(b"\n\n", 1)
    legacy = b"\n".join(line for line in header.split(b"\n") if b"_Layer" not in line and b"_LabelValue" not in line)
    path.write_bytes(legacy + b"\n\n" + body)
    assert segment_names(path) == {"liver": (0, 1), "tumour": (1, 1)}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_mask(path, segment="tumour")), organs[1])


@pytest.mark.parametrize(
    "segments, wanted, problem",
    [
        ([("liver", 0, 1), ("Liver", 0, 2)], "liver", "two segments are named 'Liver'"),
        ([("liver", 0, 3)], "liver", "segment 'liver' is empty"),
        ([("liver", 2, 1)], "liver", "segment 'liver' is in layer 2; the file has 1 layer$"),
        ([("liver", 0, 0)], "liver", "segment 'liver' has layer 0 and label 0"),
    ],
    ids=["duplicate-name", "empty", "missing-layer", "label-zero"],
)
def test_bad_segment_metadata(tmp_path, organs, segments, wanted, problem):
    path = write_segmentation(tmp_path / "bad.seg.nrrd", organs[:1], segments)
    with raises_for(path, problem):
        read_mask(path, segment=wanted)


def test_segment_needs_segment_metadata(tmp_path, organs):
    path = tmp_path / "plain.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(organs[0]), str(path))
    assert segment_names(path) == {}
    with raises_for(path, "holds no Segment Editor segments"):
        read_mask(path, segment="liver")
    path = write_segmentation(tmp_path / "odd.seg.nrrd", organs[:1], [("liver", 0, 1)])
    path.write_bytes(path.read_bytes().replace(b"Segment0_LabelValue:=1", b"Segment0_LabelValue:=one"))
    with raises_for(path, "segment 0 has a non-integer LabelValue 'one'"):
        read_mask(path, segment="liver")


# ------------------------------------------------------------------ painted labelmaps


def test_whole_segmentation_is_not_painted_slices(helpers):
    solid = helpers.ellipsoid_image([30.0, 22.0, 16.0], spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match=f"^solid.nii.gz: more than {labelmaps.MAX_PAINTED_SLICES} painted slices"):
        painted_slice_contours(solid, "solid.nii.gz")


# ------------------------------------------------------------------ point clouds


def test_point_cloud_content_checks(tmp_path, monkeypatch):
    cases = {
        "nan.xyz": ("1 2 3\nnan 0 0\n", "a point has NaN or infinite coordinates"),
        "huge.xyz": ("1 2 3\n1e6 0 0\n", "a point has coordinates beyond 100 m"),
        "comments.xyz": ("# only a comment\n", "holds no points"),
        "binary.xyz": (b"\x00\xff\xfe\x01", "not a readable .xyz point file"),
        "short.xyz": ("1 2 3\n4 5\n", "not a readable .xyz point file"),
        "text.ply": ("not a ply\n", "not a PLY file"),
        "none.ply": ("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n", "holds no points"),
        "many.ply": ("ply\nformat ascii 1.0\nelement vertex 9999999999\nproperty float x\nend_header\n",
                     "declares 9999999999 points; at most"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with raises_for(path, problem):
            read_point_cloud(path)
    monkeypatch.setattr(points, "MAX_POINTS", 5)
    path = tmp_path / "six.xyz"
    np.savetxt(path, np.arange(18.0).reshape(6, 3))
    with raises_for(path, "holds more than 5 points"):
        read_point_cloud(path)


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_truncated_ply(tmp_path, encoding):
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3)) * 30).export(path, encoding=encoding)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with raises_for(path, "truncated: the header declares 50 points|not a readable PLY"):
        read_point_cloud(path)


def test_point_list_and_ply_read_in_lps(tmp_path):
    cloud = np.random.default_rng(1).normal(size=(30, 3)) * 40
    np.testing.assert_allclose(read_point_cloud(markups_file(tmp_path / "p.mrk.json", [cloud], "Fiducial")), cloud)
    trimesh.PointCloud(cloud).export(tmp_path / "p.ply")
    np.testing.assert_allclose(read_point_cloud(tmp_path / "p.ply"), cloud, atol=1e-4)


# ------------------------------------------------------------------ model files


def test_model_header_is_read_without_torch(tiny_model):
    header = read_header(tiny_model, "dals")
    bundle = load_bundle(tiny_model, "dals")
    assert header.metadata == bundle.metadata and header.organ == "liver"
    assert set(header.tensors) == set(bundle.tensors) and set(header.tensors.values()) == {None}
    with raises_for(tiny_model, "a 'dals' model; this command needs a 'dissm' model"):
        read_header(tiny_model, "dissm")
    code = ("import sys; from shapeprior.models.bundle import read_header; "
            "print(read_header('hippocampus').kind, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["dissm", "False"], result.stderr


def test_crafted_model_files_never_run_code(tmp_path, tiny_model):
    marker = tmp_path / "ran"
    write_malicious_models(tmp_path, marker)
    data = Path(tiny_model).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name in ("evil.pt", "evil-legacy.pt", "cut.pt"):
        for read in (read_header, load_bundle):
            with raises_for(tmp_path / name, r"not a readable shapeprior model \((UnpicklingError|BadZipFile)\)"):
                read(tmp_path / name)
    assert not marker.exists()
