"""Shared fixtures: synthetic masks and meshes with known geometry, and small slices of the shared data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import SimpleITK as sitk
import trimesh
from scipy.spatial.transform import Rotation

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT.parent / "shared" / "data"


def rotation(degrees: float, axis=(1.0, 2.0, 3.0)) -> np.ndarray:
    """Proper 3x3 rotation by ``degrees`` about ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    return Rotation.from_rotvec(np.deg2rad(degrees) * axis / np.linalg.norm(axis)).as_matrix()


def ellipsoid_array(
    radii,
    spacing=(1.0, 1.0, 1.0),
    direction=np.eye(3),
    centre=(0.0, 0.0, 0.0),
    axes=np.eye(3),
    size=None,
    label: int = 1,
    margin: int = 6,
):
    """Voxel grid holding a solid ellipsoid defined in physical (LPS) space.

    The ellipsoid has semi-axes ``radii`` along the columns of ``axes`` and centre
    ``centre`` (mm); the grid (``spacing``, ``direction``) is centred on it.
    Returns ``(array (k, j, i) of uint8, spacing, origin, direction)``.
    """
    radii = np.asarray(radii, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    centre = np.asarray(centre, dtype=np.float64)
    if size is None:
        size = np.ceil(2 * radii.max() / spacing).astype(int) + margin
    size = np.asarray(size, dtype=int)
    origin = centre - direction @ (spacing * (size - 1) / 2)
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)
    physical = origin + (index * spacing) @ direction.T
    local = (physical - centre) @ np.asarray(axes, dtype=np.float64)
    inside = ((local / radii) ** 2).sum(-1) <= 1.0
    return (inside * label).astype(np.uint8), spacing, origin, direction


def ellipsoid_image(radii, **kwargs) -> sitk.Image:
    """:func:`ellipsoid_array` as a SimpleITK label image with its geometry set."""
    array, spacing, origin, direction = ellipsoid_array(radii, **kwargs)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def ellipsoid_mesh(radii, centre=(0.0, 0.0, 0.0), axes=np.eye(3), subdivisions: int = 4) -> trimesh.Trimesh:
    """Closed, outward-oriented triangulated ellipsoid (a scaled icosphere)."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    vertices = (sphere.vertices * np.asarray(radii, dtype=np.float64)) @ np.asarray(axes, dtype=np.float64).T
    return trimesh.Trimesh(vertices + np.asarray(centre, dtype=np.float64), sphere.faces.copy(), process=False)


def canonical_triangles(mesh: trimesh.Trimesh) -> np.ndarray:
    """(F, 9) triangle corners, independent of vertex and face order but not of orientation.

    Each face is cyclically rotated so its lexicographically smallest corner comes first
    (a rotation keeps the winding), then faces are sorted.
    """
    tri = np.asarray(mesh.triangles, dtype=np.float64)  # (F, 3, 3)
    first = np.array([min(range(3), key=lambda c: tuple(t[c])) for t in tri])
    rolled = np.stack([np.roll(t, -f, axis=0) for t, f in zip(tri, first)])
    flat = rolled.reshape(len(rolled), 9)
    return flat[np.lexsort(flat.T[::-1])]


def temp_files(folder: Path) -> list[Path]:
    """Temporary files left by atomic writes anywhere under ``folder``."""
    return sorted(p for p in Path(folder).rglob(".*.tmp*"))


def snapshot(folder: Path) -> dict:
    """{relative path: (size, mtime_ns, bytes)} for every file under ``folder``."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The module-level helpers above, for tests (conftest modules are not imported directly)."""
    return SimpleNamespace(
        **{fn.__name__: fn for fn in (rotation, ellipsoid_array, ellipsoid_image, ellipsoid_mesh,
                                      canonical_triangles, temp_files, snapshot)}
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of a randomly initialised DALS liver bundle small enough to fit in well under a second."""

    from shapeprior.models.bundle import save_bundle
    from shapeprior.models.dals import DALSConfig, DALSDecoder, bundle_tensors

    torch.manual_seed(0)
    config = DALSConfig(16, (32, 32))
    metadata = {
        "organ": "liver",
        "config": config.to_dict(),
        "normalisation": {"mm_per_unit_median": 100.0, "mm_per_unit_range": [80.0, 130.0], "anchor": "x"},
    }
    path = tmp_path_factory.mktemp("model") / "tiny-liver.pt"
    save_bundle(path, "dals", metadata, bundle_tensors(DALSDecoder(config), torch.randn(4, 16)))
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data folder {DATA_DIR} is absent")
    return DATA_DIR


@pytest.fixture(scope="session")
def liver_paths(data_dir) -> list[Path]:
    """Three liver surface meshes (OBJ, LPS mm; they have small holes)."""
    paths = sorted((data_dir / "liver-meshes").glob("*.obj"))[:3]
    if len(paths) < 3:
        pytest.skip(f"fewer than 3 liver meshes in {data_dir / 'liver-meshes'}")
    return paths


@pytest.fixture(scope="session")
def hippocampus_paths(data_dir) -> list[tuple[Path, Path]]:
    """Three (label, image) pairs of hippocampus volumes (labels 1 and 2, 1 mm voxels)."""
    labels = sorted((data_dir / "hippocampus" / "labels").glob("*.nii.gz"))[:3]
    pairs = [(p, data_dir / "hippocampus" / "images" / p.name) for p in labels]
    if len(pairs) < 3 or not all(img.is_file() for _, img in pairs):
        pytest.skip(f"fewer than 3 hippocampus label/image pairs in {data_dir / 'hippocampus'}")
    return pairs


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: on a 2-core machine with other jobs beside the
    tests, small networks run several times faster than with two contending threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_SDF = ["--organ", "blob", "--latent-dim", "8", "--width", "32", "--layers", "4", "--steps", "300", "--batch", "4",
            "--samples", "256", "--lr", "2e-3"]


TINY_TEMPLATE = ["--organ", "blob", "--alpha-dim", "4", "--beta-dim", "4", "--template-width", "32", "--template-layers", "2",
        "--deform-width", "16", "--deform-layers", "2", "--hyper-width", "16", "--batch", "4", "--surface-points", "64",
        "--sdf-points", "64", "--free-points", "32", "--lr", "1e-3", "--template-every", "10"]


@pytest.fixture(scope="session")
def tiny_template_args() -> list[str]:
    """``train-template`` options of a tiny model (seconds of training)."""
    return TINY_TEMPLATE


@pytest.fixture(scope="session")
def trained(image_dataset, tmp_path_factory):
    """A tiny template model trained on the image dataset, with two sub-regions (labels 1 and 2)."""
    from shapeprior.cli import main

    out = tmp_path_factory.mktemp("template") / "template.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["-q", "train-template", str(image_dataset["data"]), str(out), *TINY_TEMPLATE, "--steps", "150",
                 "--subregions", "1:right,2:left"]) == 0
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def image_dataset(tmp_path_factory, helpers):
    """A prepared dataset of 10 ellipsoid 'organs' in noisy images (two labels merged), and tiny models."""
    from shapeprior.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dissm")
    labels, images = root / "labels", root / "images"
    labels.mkdir()
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        radii = np.array([9.0, 6.0, 5.0]) * rng.uniform(0.85, 1.15, 3)
        centre = rng.uniform(-2, 2, 3)
        mask = helpers.ellipsoid_image(radii, centre=centre, axes=helpers.rotation(rng.uniform(-10, 10)),
                                       size=(30, 26, 24), direction=np.diag([-1.0, -1.0, 1.0]))
        array = sitk.GetArrayFromImage(mask).astype(np.uint8)
        array[:, :, : array.shape[2] // 2] *= 2  # a second label on half the organ
        labelled = sitk.GetImageFromArray(array)
        labelled.CopyInformation(mask)
        sitk.WriteImage(labelled, str(labels / f"case_{i:02d}.nii.gz"))
        image = sitk.GetImageFromArray((60.0 * (array > 0) + 20 + rng.normal(0, 5, array.shape)).astype(np.float32))
        image.CopyInformation(mask)
        sitk.WriteImage(image, str(images / f"case_{i:02d}.nii.gz"))
    data = root / "dataset"
    assert main(["-q", "prepare", str(labels), str(data), "--label", "1,2", "--images", str(images),
                 "--sdf-samples", "4000", "--target-vertices", "600"]) == 0
    sdf = root / "sdf.pt"
    assert main(["-q", "train-sdf", str(data), str(sdf), *TINY_SDF]) == 0
    dissm = root / "dissm.pt"
    assert main(["-q", "train-pose", str(sdf), str(data), str(dissm), "--steps", "2,2,2,2", "--batch", "2",
                 "--fit-steps", "2"]) == 0
    refined = root / "refined.pt"
    assert main(["-q", "train-refine", str(dissm), str(data), str(refined), "--steps", "2", "--batch", "2"]) == 0
    unet = root / "unet.pt"
    assert main(["-q", "train-unet", str(data), str(unet), "--steps", "2", "--batch", "2"]) == 0
    torch.set_num_threads(threads)
    return {"data": data, "sdf": sdf, "sdf_args": TINY_SDF, "dissm": dissm, "refined": refined, "unet": unet, "images": images,
            "root": root}


@pytest.fixture(scope="session")
def deepssm(image_dataset, tmp_path_factory):
    """(pdm.pt, deepssm.pt) trained in seconds on the image dataset's 8 training cases."""
    from shapeprior.cli import main

    root = tmp_path_factory.mktemp("deepssm")
    pdm, net = root / "pdm.pt", root / "deepssm.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(["-q", "train-pdm", str(image_dataset["data"]), str(pdm), "--organ", "blob", "--points", "64",
                 "--rounds", "1", "--workers", "1"]) == 0
    assert main(["-q", "train-deepssm", str(pdm), str(image_dataset["data"]), str(net), "--channels", "2,2,2,2,2",
                 "--augment", "4", "--steps", "2", "--batch", "2", "--validation-every", "0"]) == 0
    torch.set_num_threads(threads)
    return pdm, net
