"""Property tests: random mutations of valid inputs are either read as valid data or refused
with one InputError naming the file; no reader lets another exception escape."""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapeprior.errors import InputError
from shapeprior.fit.contours import group_planes
from shapeprior.io import images, markups, points
from shapeprior.io.images import read_image, read_mask
from shapeprior.io.markups import read_closed_curves, read_point_list
from shapeprior.io.points import read_point_cloud
from shapeprior.models.bundle import read_header

# Modest and derandomised: the whole file runs in well under a minute on two shared cores.
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Values a hostile or careless file may hold where a number belongs.
ODD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e5, 1e5 + 1, -2e5, 1e300, 10**400, -(10**30)]),
    st.integers(),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), ODD_NUMBERS, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def refused_or_valid(read: Callable, path: Path, check: Callable) -> object:
    """``read(path)`` checked by ``check``, or None when it raised an InputError naming ``path`` in one line."""
    try:
        result = read(path)
    except InputError as error:
        assert error.path == str(path) and "\n" not in str(error), str(error)
        return None
    check(result)
    return result


def check_points(array: np.ndarray) -> None:
    assert array.dtype == np.float64 and array.ndim == 2 and array.shape[1] == 3 and len(array) >= 1
    assert np.isfinite(array).all() and np.abs(array).max() <= markups.MAX_COORDINATE_MM


def check_curves(curves: list[np.ndarray]) -> None:
    assert curves
    for curve in curves:
        check_points(curve)
        assert 3 <= len(curve) <= markups.MAX_CURVE_POINTS


def check_image(image: sitk.Image) -> None:
    assert image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1
    assert np.all(np.array(image.GetSpacing()) > 0) and np.isfinite(image.GetOrigin()).all()


def check_mask(mask: sitk.Image) -> None:
    check_image(mask)
    values = sitk.GetArrayViewFromImage(mask)
    assert values.dtype == np.uint8 and values.max() == 1


def check_header(header) -> None:
    assert isinstance(header.kind, str) and isinstance(header.metadata, dict) and isinstance(header.tensors, dict)


# ------------------------------------------------------------------ markups


def valid_markups() -> dict:
    """Three closed curves on orthogonal planes and a point list, as Slicer writes them."""
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], axis=1)
    curves = [ring * [80, 60, 0] + [4, -9, 30], ring[:, [0, 2, 1]] * [80, 0, 50] + [4, -9, 30],
              ring[:, [2, 0, 1]] * [0, 60, 50] + [4, -9, 30]]
    kinds = ["ClosedCurve"] * 3 + ["Fiducial"]
    return {"@schema": markups.SCHEMA, "markups": [
        {"type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm", "name": f"M{n}",
         "controlPoints": [{"id": str(i), "label": f"M{n}-{i}", "position": [float(v) for v in p],
                            "orientation": [-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0], "positionStatus": "defined"}
                           for i, p in enumerate(points)]}
        for n, (kind, points) in enumerate(zip(kinds, curves + [curves[0][:5]]))]}


def _nodes(value, trail=()):
    """Every (container, key) path in a JSON document."""
    yield trail
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in children:
        yield from _nodes(child, trail + (key,))


def _replace(document, trail, new):
    if not trail:
        return new
    parent = document
    for key in trail[:-1]:
        parent = parent[key]
    parent[trail[-1]] = new
    return document


def mutated_markups(data: st.DataObject) -> str:
    """The valid document's text, changed by one drawn mutation."""
    document = valid_markups()
    kind = data.draw(st.sampled_from(["truncate", "number", "subtree", "scale", "points", "dimension", "field"]))
    if kind == "truncate":
        text = json.dumps(document)
        return text[: data.draw(st.integers(0, len(text) - 1))]
    markup = document["markups"][data.draw(st.integers(0, 3))]
    controls = markup["controlPoints"]
    if kind == "number":
        position = controls[data.draw(st.integers(0, len(controls) - 1))]["position"]
        position[data.draw(st.integers(0, 2))] = data.draw(ODD_NUMBERS)
    elif kind == "subtree":
        trail = data.draw(st.sampled_from(list(_nodes(document))))
        document = _replace(document, trail, data.draw(JSON_VALUES))
    elif kind == "scale":
        factor = data.draw(st.sampled_from([1e3, 1e6, -1.0, 1e-9]))
        for point in controls:
            point["position"] = [v * factor for v in point["position"]]
    elif kind == "points":
        keep = data.draw(st.lists(st.integers(0, len(controls) - 1), max_size=3 * len(controls)))
        markup["controlPoints"] = [copy.deepcopy(controls[i]) for i in keep]  # dropped, duplicated, reordered
    elif kind == "dimension":
        point = controls[data.draw(st.integers(0, len(controls) - 1))]
        point["position"] = point["position"][: data.draw(st.integers(0, 2))] or point["position"] * 2
    else:
        field = data.draw(st.sampled_from(["type", "coordinateSystem", "coordinateUnits", "positionStatus"]))
        target = controls[0] if field == "positionStatus" else markup
        target[field] = data.draw(st.one_of(JSON_VALUES, st.sampled_from(["RAS", "um", "Curve", "undefined"])))
    return json.dumps(document)


@FUZZ
@given(data=st.data())
def test_mutated_markups(tmp_path, data):
    path = tmp_path / "curves.mrk.json"
    path.write_text(mutated_markups(data))
    curves = refused_or_valid(read_closed_curves, path, check_curves)
    if curves is not None:
        refused_or_valid(lambda p: group_planes(curves, str(p)), path, lambda planes: None)
    refused_or_valid(read_point_list, path, check_points)


def test_the_unmutated_markups_are_read(tmp_path):
    path = tmp_path / "curves.mrk.json"
    path.write_text(json.dumps(valid_markups()))
    assert len(group_planes(read_closed_curves(path), str(path))) == 3
    assert read_point_list(path).shape == (5, 3)


# ------------------------------------------------------------------ images


LABELS = np.zeros((6, 7, 8), np.int16)
LABELS[2:, 3:, 4:] = 3  # up to the last voxel: a file cut anywhere in its data loses some of the label


def valid_image(path: Path) -> bytes:
    """:data:`LABELS` (one label) written to ``path`` on an anisotropic grid; the file's bytes."""
    image = sitk.GetImageFromArray(LABELS)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-30.0, 12.0, 5.5))
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith((".gz", ".mha", ".seg.nrrd")))
    return path.read_bytes()


def _header_field_edit(data: st.DataObject, content: bytes) -> bytes:
    """A text header (NRRD, MHA) with one number on one of its lines replaced."""
    header, _, body = content.partition(b"\n\n") if content.startswith(b"NRRD") else (content, b"", b"")
    lines = header.split(b"\n")
    numbered = [i for i, line in enumerate(lines) if re.search(rb"\d", line)]
    line = data.draw(st.sampled_from(numbered))
    number = data.draw(st.sampled_from([b"0", b"-1", b"-0.5", b"nan", b"1e308", b"99999", b"4", b"2"]))
    lines[line] = re.sub(rb"-?\d+(\.\d+)?(e-?\d+)?", number, lines[line], count=data.draw(st.integers(1, 3)))
    return b"\n".join(lines) + (b"\n\n" + body if body else b"")


def mutated_image(data: st.DataObject, content: bytes, text_header: bool) -> tuple[bytes, bool]:
    """The file's bytes changed by one drawn mutation; whether it was a truncation."""
    kind = data.draw(st.sampled_from(["truncate", "bytes", "field"] if text_header else ["truncate", "bytes"]))
    if kind == "truncate":
        return content[: data.draw(st.integers(1, len(content) - 1))], True
    if kind == "field":
        return _header_field_edit(data, content), False
    compressed = content[:2] == b"\x1f\x8b"
    plain = bytearray(gzip.decompress(content) if compressed else content)
    for _ in range(data.draw(st.integers(1, 4))):
        plain[data.draw(st.integers(0, min(len(plain), 400) - 1))] = data.draw(st.integers(0, 255))
    return gzip.compress(bytes(plain)) if compressed else bytes(plain), False


@FUZZ
@given(data=st.data(), name=st.sampled_from(["i.nii.gz", "i.nii", "i.nrrd", "i.mha", "i.seg.nrrd"]))
def test_mutated_images(tmp_path, data, name):
    path = tmp_path / name
    content, truncated = mutated_image(data, valid_image(path), text_header=not name.startswith("i.nii"))
    path.write_bytes(content)
    image = refused_or_valid(read_image, path, check_image)
    if image is not None and truncated:  # a cut file is refused, never read with voxels made up
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), LABELS)
    refused_or_valid(read_mask, path, check_mask)


# ------------------------------------------------------------------ point clouds


def valid_cloud() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(20, 3)) * [60, 40, 30] + [10, -20, 40]


@FUZZ
@given(data=st.data(), encoding=st.sampled_from(["ascii", "binary"]))
def test_mutated_ply(tmp_path, data, encoding):
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(valid_cloud()).export(path, encoding=encoding)
    content = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        content = content[: data.draw(st.integers(1, len(content) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(content))
    refused_or_valid(read_point_cloud, path, check_points)


@FUZZ
@given(data=st.data())
def test_mutated_xyz(tmp_path, data):
    rows = [" ".join(repr(float(v)) for v in p) for p in valid_cloud()]
    row = data.draw(st.integers(0, len(rows) - 1))
    kind = data.draw(st.sampled_from(["truncate", "token", "line", "scale"]))
    if kind == "token":
        tokens = rows[row].split()
        tokens[data.draw(st.integers(0, 2))] = data.draw(st.sampled_from(["nan", "inf", "-1e6", "1e400", "x", ""]))
        rows[row] = " ".join(tokens)
    elif kind == "line":
        rows.insert(row, data.draw(st.text(max_size=20).filter(lambda s: "\n" not in s and "\r" not in s)))
    elif kind == "scale":
        rows = [" ".join(repr(float(v) * 1e4) for v in r.split()) for r in rows]
    text = "\n".join(rows) + "\n"
    if kind == "truncate":
        text = text[: data.draw(st.integers(1, len(text) - 1))]
    path = tmp_path / "cloud.xyz"
    path.write_text(text, encoding="utf-8")
    refused_or_valid(read_point_cloud, path, check_points)


@pytest.mark.parametrize("suffix", [".ply", ".xyz", ".mrk.json"])
def test_the_unmutated_clouds_are_read(tmp_path, suffix):
    path = tmp_path / f"cloud{suffix}"
    if suffix == ".xyz":
        np.savetxt(path, valid_cloud())
    elif suffix == ".ply":
        trimesh.PointCloud(valid_cloud()).export(path)
    else:
        document = valid_markups()
        document["markups"][3]["controlPoints"] = [{"position": list(p)} for p in valid_cloud()]
        path.write_text(json.dumps(document))
    np.testing.assert_allclose(read_point_cloud(path), valid_cloud(), atol=1e-4)
    assert points.MAX_POINTS >= 20 and images.MAX_VOXELS >= 336


# ------------------------------------------------------------------ model files


def mutated_bundle(data: st.DataObject, bundle: bytes) -> bytes:
    """The bundle's bytes cut, or its pickle cut or changed and stored again (so the zip's CRC holds)."""
    if data.draw(st.booleans()):
        return bundle[: data.draw(st.integers(1, len(bundle) - 1))]
    source, target = zipfile.ZipFile(io.BytesIO(bundle)), io.BytesIO()
    with zipfile.ZipFile(target, "w") as archive:
        for entry in source.infolist():
            content = bytearray(source.read(entry))
            if entry.filename.endswith("/data.pkl"):
                if data.draw(st.booleans()):
                    content = content[: data.draw(st.integers(0, len(content) - 1))]
                for _ in range(data.draw(st.integers(0, 4))):
                    content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
            archive.writestr(entry.filename, bytes(content))
    return target.getvalue()


@FUZZ
@given(data=st.data())
def test_mutated_model_headers(tmp_path, tiny_model, data):
    path = tmp_path / "model.pt"
    path.write_bytes(mutated_bundle(data, tiny_model.read_bytes()))
    refused_or_valid(read_header, path, check_header)
