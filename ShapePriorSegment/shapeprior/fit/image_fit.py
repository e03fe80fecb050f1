"""DISSM: fit the implicit shape model straight to an image with the learned pose agent.

The agent runs stage by stage (translation -> scale -> rotation -> shape), a fixed
number of steps each, from the training set's mean pose placed at the image centre;
an optional last stage refines the fitted SDF in a narrow band (``models.refiner``).
Outputs are in LPS mm: the zero level set of f(u, mean + W loadings) mapped by the
final pose (or of the refined SDF), and its voxelisation on the image grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import trimesh
from skimage.measure import marching_cubes

from ..errors import InputError
from ..io.labelmaps import mesh_to_labelmap
from ..models.bundle import ModelBundle
from ..models.pose_agent import (
    STAGES,
    CanonicalSDF,
    PoseAgent,
    PoseState,
    apply_correction,
    render_state,
)
from ..models.refiner import BAND_MM, build_refiner, refine_sdf
from ..models.sdf import SDFDecoder, ShapeSpace, decoder_from_bundle, extract_mesh
from ..prep.crops import FINE_GRID, GridSpec, agent_input, intensity_stats
from ..prep.surface import index_to_physical, largest_component
from .dals_fit import FitCancelled


@dataclass
class DISSMModel:
    """Everything a fit needs from a ``dissm`` bundle."""

    decoder: SDFDecoder
    space: ShapeSpace
    canonical: CanonicalSDF
    agents: dict[str, PoseAgent]
    grid: GridSpec
    median_scale: float
    mean_rotation: np.ndarray
    centre_offset: np.ndarray
    fit_steps: int
    metadata: dict
    refiner: torch.nn.Module | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages a fit can run, in order."""
        return tuple(self.agents) + (("refine",) if self.refiner is not None else ())

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> "DISSMModel":
        decoder, space = decoder_from_bundle(bundle)
        info = bundle.metadata["agent"]
        agents = {}
        for stage in info["stages"]:
            prefix = f"agent.{stage}."
            agent = PoseAgent(space.basis.shape[0])
            agent.load_state_dict({k[len(prefix):]: v for k, v in bundle.tensors.items() if k.startswith(prefix)})
            agents[stage] = agent.eval()
        refiner = None
        if any(k.startswith("refiner.") for k in bundle.tensors):
            refiner = build_refiner()
            refiner.load_state_dict({k[len("refiner."):]: v for k, v in bundle.tensors.items()
                                     if k.startswith("refiner.")})
            refiner.eval()
        return cls(
            decoder, space, CanonicalSDF(bundle.tensors["canonical_sdf"].float(), float(info["canonical_radius"])),
            agents, GridSpec.from_dict(info["grid"]), float(info["median_scale_mm"]),
            np.array(info["mean_rotation"]), np.array(info["centre_offset_mm"]), int(info["fit_steps"]),
            bundle.metadata, refiner,
        )


@dataclass
class ImageFit:
    mesh: trimesh.Trimesh  # LPS mm
    segmentation: sitk.Image  # uint8 on the image grid
    stages: list[dict]  # per stage: pose and loadings after it
    seconds: float
    warnings: list[str] = field(default_factory=list)


def fit_report(fit: "ImageFit", bundle: ModelBundle, source: str) -> dict:
    """The JSON report of a fit: pose and loadings per stage, time, warnings, volume."""
    return {"input": str(source), "model": str(bundle.path), "organ": bundle.organ, "frame": "LPS mm",
            "pose_convention": "x = t + R (s * u), u in the model unit sphere", "stages": fit.stages,
            "seconds": fit.seconds, "warnings": list(fit.warnings), "volume_ml": float(fit.mesh.volume) / 1000.0}


def initial_state(model: DISSMModel, grid_mm: torch.Tensor) -> PoseState:
    """The training set's median pose, placed relative to the image centre."""
    centre = grid_mm.reshape(-1, 3).mean(0)
    return PoseState(
        (centre + torch.tensor(model.centre_offset, dtype=torch.float32))[None],
        torch.full((1, 3), model.median_scale),
        torch.tensor(model.mean_rotation, dtype=torch.float32)[None],
        torch.zeros(1, model.space.basis.shape[0]),
    )


def state_record(stage: str, state: PoseState) -> dict:
    return {
        "stage": stage,
        "translation_mm": state.translation[0].tolist(),
        "scale_mm_per_unit": state.scale[0].tolist(),
        "rotation": state.rotation[0].tolist(),
        "loadings": state.loadings[0].tolist(),
    }


def state_from_record(record: dict) -> PoseState:
    return PoseState(*(torch.tensor([record[k]], dtype=torch.float32)
                       for k in ("translation_mm", "scale_mm_per_unit", "rotation", "loadings")))


def intensity_warning(model: DISSMModel, image: sitk.Image, source: str) -> str | None:
    """A message when the image's intensities lie far outside those of the training images."""
    median, spread = intensity_stats(image)
    lo, hi = model.metadata["agent"]["intensity_spread_range"]
    if not lo / 3 <= spread <= hi * 3:
        return (f"{source}: intensity spread {spread:.3g} is far from the training images' {lo:.3g}-{hi:.3g} "
                "(another modality?); fitting anyway")
    return None


@torch.no_grad()
def run_agent(
    model: DISSMModel, image: sitk.Image, stages: tuple[str, ...] = STAGES, steps: int | None = None,
    progress: Callable[[float, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Run the agent's stages on ``image``; the state after each stage (see :func:`state_record`)."""
    array, grid_mm, _ = agent_input(image, model.grid)
    volume = torch.tensor(array)[None]
    grid = torch.tensor(grid_mm)[None]
    state = initial_state(model, grid)
    steps = steps or model.fit_steps
    records = []
    stages = tuple(s for s in stages if s in model.agents)
    for index, stage in enumerate(stages):
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise FitCancelled("fit cancelled")
            state_img = render_state(model.canonical, state, grid, stage == "shape") / 10.0
            state, _ = apply_correction(state, model.agents[stage](volume, state_img), stage, model.median_scale)
            if progress is not None:
                progress((index * steps + step + 1) / (len(stages) * steps), stage)
        records.append(state_record(stage, state))
    return records


def state_mesh(model: DISSMModel, state: PoseState, resolution: int = 64) -> trimesh.Trimesh:
    """The shape of ``state`` as a surface in LPS mm."""
    latent = model.space.latent(state.loadings[0])
    unit = extract_mesh(model.decoder, latent, resolution=resolution)
    if len(unit.faces) == 0:
        return unit
    verts = state.from_unit(torch.tensor(unit.vertices, dtype=torch.float32)[None])[0].double().numpy()
    return trimesh.Trimesh(verts, unit.faces, process=False)


@torch.no_grad()
def shape_sdf(model: DISSMModel, state: PoseState, grid_mm: torch.Tensor) -> torch.Tensor:
    """SDF (mm) of the state's shape at ``grid_mm`` (..., 3): the decoder near the surface, the
    tabulated first-order shape elsewhere (only its sign matters there)."""
    points = grid_mm.reshape(1, -1, 3)
    unit = state.to_unit(points)
    mm_per_unit = state.mm_per_unit()[:, None]
    sdf = model.canonical(unit, state.loadings) * mm_per_unit
    near = (sdf.abs() < BAND_MM + 2.0)[0]
    if near.any():
        latent = model.space.latent(state.loadings)
        sdf[0, near] = model.decoder(unit[0, near], latent[0]) * mm_per_unit[0]
    return sdf.reshape(grid_mm.shape[:-1])


def level_set_mesh(sdf_mm: np.ndarray, reference: sitk.Image) -> trimesh.Trimesh:
    """Zero level set of a (K, J, I) SDF on ``reference``'s grid, in LPS mm, faces outward."""
    if sdf_mm.min() >= 0 or sdf_mm.max() <= 0:
        return trimesh.Trimesh()
    verts_kji, faces, _, _ = marching_cubes(sdf_mm, level=0.0)
    ijk1 = np.concatenate([verts_kji[:, ::-1], np.ones((len(verts_kji), 1))], 1)
    mesh = trimesh.Trimesh((ijk1 @ index_to_physical(reference).T)[:, :3], faces, process=False)
    if mesh.volume < 0:  # the (k, j, i) -> LPS map may flip handedness
        mesh.invert()
    return mesh


def refined_fit(model: DISSMModel, image: sitk.Image, state: PoseState) -> trimesh.Trimesh:
    """Refine the state's shape in a narrow band on the 1 mm fine grid; its surface (LPS mm).

    Only the largest connected piece of the refined level set is kept: one organ, no specks.
    """
    volume, grid_mm, reference = agent_input(image, FINE_GRID)
    fitted = shape_sdf(model, state, torch.tensor(grid_mm))[None]
    with torch.no_grad():
        refined = refine_sdf(model.refiner, torch.tensor(volume)[None], fitted)[0].numpy()
    mesh = level_set_mesh(refined, reference)
    return largest_component(mesh)[0] if len(mesh.faces) else mesh


def fit_image(
    model: DISSMModel, image: sitk.Image, stages: tuple[str, ...] | None = None, steps: int | None = None,
    source: str = "image", progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ImageFit:
    """Fit ``model`` to ``image`` (stopping after the last of ``stages``, default all); surface and segmentation."""
    stages = model.stages if stages is None else tuple(stages)
    if list(stages) != list(model.stages[: len(stages)]) or not stages:
        raise InputError(None, f"stages must be a leading part of {','.join(model.stages)}, got {','.join(stages)}")
    began = time.perf_counter()
    warnings = [w for w in [intensity_warning(model, image, source)] if w]
    records = run_agent(model, image, stages, steps, progress, should_stop)
    state = state_from_record(records[-1])
    if "refine" in stages:
        mesh = refined_fit(model, image, state)
        records.append({**records[-1], "stage": "refine"})
    else:
        mesh = state_mesh(model, state)
    if len(mesh.faces) == 0:
        raise InputError(source, "the fitted shape is empty (is this the model's organ and modality?)")
    return ImageFit(mesh, mesh_to_labelmap(mesh, image), records, time.perf_counter() - began, warnings)
