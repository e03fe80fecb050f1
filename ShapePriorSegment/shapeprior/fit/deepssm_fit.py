"""DeepSSM: an image -> its shape's PCA loadings and corresponding points in one network pass.

The image is registered rigidly onto the model's reference crop (translation, then rotation), resampled
on the 64^3 network grid, and the network's loadings are turned into points by the point distribution
model (reference-crop mm), which the registration carries back into the image's LPS mm. The points share
the model's triangles, so they are also the fitted surface.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import trimesh

from ..errors import InputError
from ..io.labelmaps import mesh_to_labelmap
from ..models.deepssm import DeepSSMModel
from ..models.registry import Model, as_loaded, load_model
from ..prep.crops import intensity_warning
from ..prep.registration import network_input, register_rigid
from ..transform import Similarity
from .dals_fit import FitCancelled
from .outcome import Outcome

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle
    from ..models.pose_agent import PoseState

# An input crop's extent (mm, per axis) may be this many times smaller or larger than the reference crop's:
# smaller leaves the organ partly outside the image, larger leaves the registration without a start.
CROP_EXTENT_RANGE = (0.5, 3.0)


def extent_mm(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """(3,) physical size of ``image`` along its own axes, mm."""
    return np.array(image.GetSize()) * np.array(image.GetSpacing())


def check_crop(image: sitk.Image | sitk.ImageFileReader, reference: sitk.Image, organ: str, source: str) -> None:
    """An :class:`InputError` unless ``image`` (or an image file's header) is a crop of about the reference
    crop's size."""
    expected = extent_mm(reference)
    ratio = extent_mm(image) / expected
    lo, hi = CROP_EXTENT_RANGE
    if ratio.min() < lo or ratio.max() > hi:
        size = " x ".join(f"{v:.0f}" for v in extent_mm(image))
        wanted = " x ".join(f"{v:.0f}" for v in expected)
        problem = "much smaller than" if ratio.min() < lo else "far larger than"
        raise InputError(source, f"the image is {size} mm, {problem} this model's input: a crop around the {organ} "
                         f"of about {wanted} mm (i x j x k)")


@torch.no_grad()
def predict(model: DeepSSMModel, image: sitk.Image, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Similarity, dict]:
    """(whitened loadings (K,), corresponding points (P, 3) LPS mm, the rigid map reference-crop mm -> image
    mm, seconds per step) of ``image``."""
    began = time.perf_counter()
    to_image = register_rigid(image, model.reference, seed)
    registered = time.perf_counter()
    volume = torch.tensor(network_input(image, model.reference, to_image))[None, None]
    loadings = model.net(volume)[0].double().numpy()
    done = time.perf_counter()
    points = to_image.apply(model.pdm.points(loadings))
    return loadings, points, to_image, {"registration": registered - began, "network": done - registered}


def fit_image_deepssm(
    image: sitk.Image, model: Model = "hippocampus-deepssm", source: str = "image",
    progress: Callable[[float, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Surface, segmentation on the image grid and corresponding points (``Outcome.points``, LPS mm) of a
    ``deepssm`` model's prediction; the report holds the loadings and their Mahalanobis distance."""
    bundle, model = as_loaded(model, "deepssm")
    check_crop(image, model.reference, bundle.organ, source)
    warnings = [w for w in [intensity_warning(model.metadata["intensity_spread_range"], image, source)] if w]
    began = time.perf_counter()
    loadings, points, to_image, seconds = predict(model, image)
    if should_stop is not None and should_stop():
        raise FitCancelled("fit cancelled")
    if progress is not None:
        progress(0.8, "network")
    mesh = model.pdm.mesh(points)
    labelmap = mesh_to_labelmap(mesh, image)
    seconds["total"] = time.perf_counter() - began
    mahalanobis = float(model.pdm.mahalanobis(loadings))
    report = {"input": str(source), "model": str(bundle.path), "organ": bundle.organ, "frame": "LPS mm",
              "method": "deepssm", "loadings": loadings.tolist(), "mahalanobis": mahalanobis,
              "modes": model.pdm.size, "points": len(points), "to_image": to_image.to_dict(),
              "to_image_convention": "reference-crop LPS mm -> image LPS mm", "volume_ml": float(mesh.volume) / 1000,
              "seconds": seconds["total"], "seconds_per_step": seconds, "warnings": warnings}
    if mesh.volume <= 0:  # a few training shapes' correspondences fold over, and their masks lose the fold
        warnings.append(f"{source}: the predicted surface folds over itself (negative volume); check it")
    if mahalanobis > unusual_mahalanobis(model.pdm.size):
        warnings.append(f"{source}: the predicted shape is unusual for the training population (Mahalanobis "
                        f"distance {mahalanobis:.1f} over {model.pdm.size} modes); check it")
    summary = (f"predicted {bundle.organ} shape of {source} in {seconds['total']:.2f} s: volume "
               f"{report['volume_ml'] * 1000:.0f} mm3, Mahalanobis distance {mahalanobis:.2f} ({model.pdm.size} modes)")
    return Outcome(mesh, bundle.organ, report, labelmap=labelmap, summary=summary, points=points,
                   detail={"loadings": loadings, "to_image": to_image})


def load_image_model(model: Model) -> tuple:
    """(bundle, model) of a ``dissm`` or ``deepssm`` model (name, path or loaded pair); an
    :class:`InputError` for any other kind."""
    bundle, loaded = model if isinstance(model, tuple) else load_model(model)
    if bundle.kind not in ("dissm", "deepssm"):
        raise InputError(bundle.path, f"a {bundle.kind!r} model: fitting an image needs a dissm or deepssm model")
    return bundle, loaded


def fit_image_by_kind(
    image: sitk.Image, model: Model, stages: Sequence[str] | None = None, source: str = "image",
    progress: Callable[[float, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
    steps: int | None = None, start_from: Model | None = None,
) -> Outcome:
    """:func:`~shapeprior.fit.image_fit.fit_image` with a ``dissm`` model (``stages``, ``steps``: as there;
    ``start_from``: a ``deepssm`` model whose prediction places the mean shape, after which only the last
    stage, the refinement, runs by default), :func:`fit_image_deepssm` with a ``deepssm`` one (which has
    none of them)."""
    bundle, loaded = load_image_model(model)
    if bundle.kind == "dissm":
        return _fit_dissm(image, (bundle, loaded), stages, steps, source, progress, should_stop, start_from)
    if stages is not None or steps is not None or start_from is not None:
        raise InputError(None, f"stages, steps and a start model are DISSM's; {bundle.path} is a deepssm model")
    return fit_image_deepssm(image, (bundle, loaded), source, progress, should_stop)


def _fit_dissm(image: sitk.Image, dissm: tuple, stages, steps, source, progress, should_stop, start_from) -> Outcome:
    """DISSM's fit, placed by its own agent or by the ``start_from`` model's prediction."""
    from .image_fit import fit_image  # the agent's modules (MONAI: 2 s) only where they are used

    if start_from is None:
        return fit_image(image, dissm, stages, steps, source, progress, should_stop)
    deepssm = as_loaded(start_from, "deepssm")
    began = time.perf_counter()
    start = predicted_start(image, dissm, deepssm, source)
    outcome = fit_image(image, dissm, stages, steps, source, progress, should_stop, start)
    seconds = time.perf_counter() - began
    outcome.report.update(seconds=seconds, start_model=str(deepssm[0].path))
    outcome.summary = (f"fitted {dissm[0].organ} to {source} from DeepSSM's prediction "
                       f"({', '.join(r['stage'] for r in outcome.detail[1:])}) in {seconds:.1f} s: "
                       f"volume {outcome.report['volume_ml'] * 1000:.0f} mm3")
    return outcome


def can_place(deepssm: ModelBundle, dissm: ModelBundle) -> bool:
    """Whether a ``deepssm`` model's prediction can place a ``dissm`` model (bundles or headers): the same
    organ and the same prepared shapes (the same held-out cases), so that their unit spheres are one frame."""
    held_out = sorted(dissm.metadata.get("sdf_training", {}).get("held_out", []))
    return (deepssm.kind, dissm.kind) == ("deepssm", "dissm") and deepssm.organ == dissm.organ and \
        bool(held_out) and sorted(deepssm.metadata.get("pdm", {}).get("held_out", [])) == held_out


def check_placing(deepssm: ModelBundle, dissm: ModelBundle) -> None:
    """An :class:`InputError` unless :func:`can_place`."""
    if not can_place(deepssm, dissm):
        raise InputError(deepssm.path, f"was not built on the same prepared shapes as {dissm.path}")


def predicted_start(image: sitk.Image, dissm: tuple, deepssm: tuple, source: str = "image") -> PoseState:
    """DISSM's start for ``image`` (``dissm``, ``deepssm``: loaded (bundle, model) pairs) from the DeepSSM
    model's predicted points (:func:`dissm_start`); an :class:`InputError` unless both models were built
    on the same organ's prepared shapes (their unit spheres must be one frame)."""
    (dissm_bundle, dissm_model), (bundle, model) = dissm, deepssm
    check_placing(bundle, dissm_bundle)
    check_crop(image, model.reference, bundle.organ, source)
    points = predict(model, image)[1]
    return dissm_start(points, model.pdm.template, dissm_model.space.basis.shape[0])


def unusual_mahalanobis(modes: int) -> float:
    """The Mahalanobis distance 99.9% of a Gaussian population stays below, for ``modes`` whitened modes."""
    from scipy.stats import chi2

    return float(np.sqrt(chi2.ppf(0.999, modes)))


def dissm_start(points_mm: np.ndarray, template: np.ndarray, loadings: int) -> PoseState:
    """A DISSM pose from corresponding points: the similarity that best carries the shape model's mean in
    its unit sphere (``template`` (P, 3)) onto ``points_mm`` (P, 3) LPS mm; loadings (``loadings`` of them)
    start at the mean shape."""
    from ..models.pose_agent import PoseState

    matrix = trimesh.registration.procrustes(template, points_mm, reflection=False, scale=True, return_cost=False)
    pose = Similarity.from_matrix(matrix)
    return PoseState(torch.tensor(pose.translation, dtype=torch.float32)[None],
                     torch.full((1, 3), pose.scale), torch.tensor(pose.rotation, dtype=torch.float32)[None],
                     torch.zeros(1, loadings))
