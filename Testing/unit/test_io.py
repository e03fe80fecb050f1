"""shapeprior.io: mesh formats and frames, atomic writes, image and label-mask reading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
import vtk
from vtk.util import numpy_support

from shapeprior.errors import InputError
from shapeprior.io import atomic_output, check_same_grid, read_image, read_mask, read_mesh, write_json, write_mesh
from shapeprior.io.images import parse_labels

FORMATS = [".obj", ".stl", ".ply", ".vtk", ".vtp", ".off"]
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


@pytest.fixture
def mesh(helpers) -> trimesh.Trimesh:
    """A closed, outward ellipsoid away from the origin, with non-round coordinates."""
    return helpers.ellipsoid_mesh([31.7, 18.3, 12.9], centre=(-41.3, 17.9, 102.6), axes=helpers.rotation(33), subdivisions=2)


def _polydata(vertices: np.ndarray, faces: np.ndarray) -> vtk.vtkPolyData:
    """Built with plain VTK calls, independent of shapeprior's converters."""
    points = vtk.vtkPoints()
    for v in vertices:
        points.InsertNextPoint(*map(float, v))
    cells = vtk.vtkCellArray()
    for f in faces:
        cells.InsertNextCell(3)
        for i in f:
            cells.InsertCellPoint(int(i))
    poly = vtk.vtkPolyData()
    poly.SetPoints(points)
    poly.SetPolys(cells)
    return poly


def _write_legacy_vtk(path: Path, vertices: np.ndarray, faces: np.ndarray, header: str) -> None:
    writer = vtk.vtkPolyDataWriter()
    writer.SetHeader(header)
    writer.SetFileName(str(path))
    writer.SetInputData(_polydata(vertices, faces))
    assert writer.Write() == 1


def _read_point_array(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    reader = vtk.vtkXMLPolyDataReader() if path.suffix == ".vtp" else vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    if path.suffix == ".vtk":
        reader.ReadAllScalarsOn()
        reader.ReadAllFieldsOn()
    reader.Update()
    poly = reader.GetOutput()
    array = poly.GetPointData().GetArray(name)
    assert array is not None, f"point array {name!r} missing from {path.name}"
    return numpy_support.vtk_to_numpy(poly.GetPoints().GetData()), numpy_support.vtk_to_numpy(array)


# ---------------------------------------------------------------- mesh formats


@pytest.mark.parametrize("suffix", FORMATS)
def test_mesh_round_trip(tmp_path, mesh, helpers, suffix):
    path = tmp_path / f"shape{suffix}"
    write_mesh(mesh, path)
    back = read_mesh(path)
    assert (len(back.vertices), len(back.faces)) == (len(mesh.vertices), len(mesh.faces))
    # Same triangles with the same winding (up to vertex/face order; STL holds float32).
    np.testing.assert_allclose(helpers.canonical_triangles(back), helpers.canonical_triangles(mesh), atol=1e-4)
    assert back.is_watertight
    assert back.volume == pytest.approx(mesh.volume, rel=1e-5)
    assert helpers.temp_files(tmp_path) == []


def test_vtk_is_written_with_lps_header(tmp_path, mesh):
    path = tmp_path / "shape.vtk"
    write_mesh(mesh, path)
    assert "SPACE=LPS" in path.read_bytes()[:200].decode("ascii", "replace").splitlines()[1]
    np.testing.assert_allclose(read_mesh(path).bounds, mesh.bounds, atol=1e-9)  # read back as is


@pytest.mark.parametrize(
    "header, ras",
    [("3D Slicer output. SPACE=RAS", True), ("3D Slicer output. SPACE=LPS", False), ("vtk output", False)],
)
def test_legacy_vtk_space_header(tmp_path, helpers, header, ras):
    # An outward-oriented surface in the file's own frame, as Slicer writes it.
    in_file = helpers.ellipsoid_mesh([30, 20, 10], centre=(25.0, -40.0, 60.0), axes=helpers.rotation(25), subdivisions=2)
    path = tmp_path / "slicer.vtk"
    _write_legacy_vtk(path, in_file.vertices, in_file.faces, header)

    back = read_mesh(path)

    if ras:  # x and y negated: a half-turn about z (det +1), so the same faces stay outward
        expected = trimesh.Trimesh(in_file.vertices * RAS_TO_LPS, in_file.faces, process=False)
    else:
        expected = in_file
    np.testing.assert_allclose(helpers.canonical_triangles(back), helpers.canonical_triangles(expected), atol=1e-4)
    assert back.volume > 0 and back.volume == pytest.approx(in_file.volume, rel=1e-4)
    np.testing.assert_allclose(back.center_mass, expected.center_mass, atol=1e-3)


@pytest.mark.parametrize("suffix", [".vtp", ".vtk"])
def test_point_data_is_kept(tmp_path, mesh, suffix):
    values = np.linspace(-2.5, 7.25, len(mesh.vertices))
    path = tmp_path / f"scalars{suffix}"
    write_mesh(mesh, path, point_data={"thickness": values})
    points, stored = _read_point_array(path, "thickness")
    np.testing.assert_allclose(points, mesh.vertices, atol=1e-9)  # written in vertex order
    np.testing.assert_allclose(stored, values, rtol=1e-5)  # kept as float32 (legacy ASCII: 6 digits)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
        ("v 0 0 0\nv nan 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\n", "NaN"),
    ],
)
def test_read_mesh_rejects_bad_obj(tmp_path, content, problem):
    path = tmp_path / "bad.obj"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as err:
        read_mesh(path)
    assert err.value.path == str(path)


def test_read_mesh_rejects_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_mesh(tmp_path / "absent.obj")
    other = tmp_path / "mesh.xyz"
    other.write_text("0 0 0\n")
    with pytest.raises(InputError, match="unsupported mesh format"):
        read_mesh(other)


def test_write_mesh_failure_leaves_existing_target(tmp_path, mesh, monkeypatch):
    target = tmp_path / "shape.ply"
    target.write_bytes(b"previous contents")
    before = target.stat().st_mtime_ns

    def broken_export(self, file_obj=None, file_type=None, **kwargs):
        Path(file_obj).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(trimesh.Trimesh, "export", broken_export)
    with pytest.raises(OSError, match="disk full"):
        write_mesh(mesh, target)
    assert target.read_bytes() == b"previous contents" and target.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shape.ply"]


def test_write_mesh_rejects_unknown_suffix(tmp_path, mesh):
    with pytest.raises(InputError, match="unsupported mesh format"):
        write_mesh(mesh, tmp_path / "shape.xyz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- atomic writes


def test_atomic_output_success(tmp_path):
    target = tmp_path / "sub" / "volume.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        assert not target.exists()
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["volume.nii.gz"]


def test_atomic_output_exception_leaves_nothing(tmp_path, helpers):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [] and helpers.temp_files(tmp_path) == []


def test_atomic_output_exception_before_writing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_output(tmp_path / "out.txt"):
            raise KeyError("nothing written yet")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_text("new but broken")
            raise ValueError("bad data")
    assert target.read_text() == "old" and target.stat().st_mtime_ns == 1_000_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_write_json_replaces_atomically(tmp_path, helpers):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    write_json({"a": [1, 2], "b": "x"}, target)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": "x"}
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is renamed
        write_json({"a": object()}, target)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": "x"}
    assert helpers.temp_files(tmp_path) == []


# ---------------------------------------------------------------- images and masks

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.0, 30.5, 7.25)


@pytest.fixture
def two_label_mask(tmp_path, helpers) -> Path:
    """Labels 1 and 2 in separate blocks, on a rotated, anisotropic grid."""
    array = np.zeros((10, 12, 14), dtype=np.uint8)
    array[2:5, 3:8, 2:6] = 1  # 60 voxels
    array[6:9, 3:8, 8:12] = 2  # 60 voxels
    array[6, 5, 8] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(helpers.rotation(40).ravel().tolist())
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _check_geometry(mask: sitk.Image, helpers) -> None:
    np.testing.assert_allclose(mask.GetSpacing(), SPACING, rtol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(np.reshape(mask.GetDirection(), (3, 3)), helpers.rotation(40), atol=1e-6)


def test_read_mask_several_labels_needs_choice(two_label_mask):
    with pytest.raises(InputError) as err:
        read_mask(two_label_mask)
    assert err.value.path == str(two_label_mask)
    assert "--label" in str(err.value) and "1, 2" in str(err.value)
    assert str(err.value).startswith(f"{two_label_mask}: ")


@pytest.mark.parametrize("labels, count", [([1], 60), ([2], 60), ([1, 2], 120), ([2, 1], 120), ([1, 5], 60)])
def test_read_mask_selects_and_merges(two_label_mask, helpers, labels, count):
    mask = read_mask(two_label_mask, labels)
    array = sitk.GetArrayFromImage(mask)
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(two_label_mask)))
    assert array.dtype == np.uint8 and set(np.unique(array)) <= {0, 1}
    assert array.sum() == count
    np.testing.assert_array_equal(array, np.isin(source, labels))
    _check_geometry(mask, helpers)


def test_read_mask_missing_label(two_label_mask):
    with pytest.raises(InputError, match=r"label 3 not present") as err:
        read_mask(two_label_mask, [3])
    assert err.value.path == str(two_label_mask)


def test_read_mask_single_label_any_value(tmp_path, helpers):
    image = helpers.ellipsoid_image([5, 4, 3], label=7)
    path = tmp_path / "one.nrrd"
    sitk.WriteImage(image, str(path))
    mask = read_mask(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(image) == 7)


def test_read_mask_empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(path))
    with pytest.raises(InputError, match="empty mask"):
        read_mask(path)


def test_read_image_rejections(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")
    text = tmp_path / "text.nii.gz"
    text.write_text("not an image\n")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(text)
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(flat))
    with pytest.raises(InputError, match="2D image"):
        read_image(flat)
    nan = tmp_path / "nan.mha"  # (ITK's NIfTI IO turns NaN into 0)
    array = np.zeros((4, 4, 4), np.float32)
    array[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(nan))
    with pytest.raises(InputError, match="NaN"):
        read_image(nan)


def test_parse_labels():
    assert parse_labels(None) is None
    assert parse_labels("1,2") == [1, 2]
    assert parse_labels(" 3 , 4 ,") == [3, 4]
    for bad in ("a", "0", "-1,2", ""):
        with pytest.raises(InputError, match="--label"):
            parse_labels(bad)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda im: im.SetDirection(np.diag([-1.0, -1.0, 1.0]).ravel().tolist()), "direction"),
        (lambda im: im.SetSpacing((1.0, 1.0, 2.0)), "spacing"),
        (lambda im: im.SetOrigin((0.0, 0.0, 5.0)), "origin"),
    ],
)
def test_check_same_grid(change, problem):
    image = sitk.Image(6, 7, 8, sitk.sitkInt16)
    mask = sitk.Image(6, 7, 8, sitk.sitkUInt8)
    check_same_grid(image, mask, "img.nii.gz", "mask.nii.gz")  # identical grids pass
    change(mask)
    with pytest.raises(InputError, match=problem) as err:
        check_same_grid(image, mask, "img.nii.gz", "mask.nii.gz")
    assert err.value.path == "mask.nii.gz" and "img.nii.gz" in str(err.value)
    with pytest.raises(InputError, match="size"):
        check_same_grid(image, sitk.Image(6, 7, 9, sitk.sitkUInt8), "img.nii.gz", "mask.nii.gz")


def test_meshes_without_a_frame_are_read_in_the_frame_given(tmp_path, mesh):
    """OBJ, STL and PLY say no frame: surfaces exported in RAS (NIfTI world coordinates, as the
    shared liver meshes are) are turned into LPS on reading; VTK files keep their header's frame."""
    write_mesh(mesh, tmp_path / "shape.obj")
    lps = read_mesh(tmp_path / "shape.obj")
    ras = read_mesh(tmp_path / "shape.obj", frame="RAS")
    np.testing.assert_allclose(ras.vertices, lps.vertices * RAS_TO_LPS, atol=1e-12)
    assert ras.volume == pytest.approx(lps.volume)  # a half-turn: the faces keep their winding
    write_mesh(mesh, tmp_path / "shape.vtk")
    np.testing.assert_allclose(read_mesh(tmp_path / "shape.vtk", frame="RAS").vertices, mesh.vertices, atol=1e-6)


@pytest.mark.parametrize(("name", "stem"), [("liver.seg.nrrd", "liver"), ("case.v2.nii.gz", "case.v2"),
                                            ("CT.NII.GZ", "CT"), ("shape.vtk", "shape"), ("notes.txt", "notes")])
def test_file_stem_strips_one_whole_suffix(name, stem):
    from shapeprior.io.formats import file_stem

    assert file_stem(Path(name)) == stem
