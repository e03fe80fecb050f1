"""DISSM: fit the implicit shape model straight to an image with the learned pose agent.

The agent runs stage by stage (translation -> scale -> rotation -> shape), a fixed
number of steps each, from the training set's mean pose placed at the image centre.
Outputs are in LPS mm: the zero level set of f(u, mean + W loadings) mapped by the
final pose, and its voxelisation on the image grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import trimesh

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
from ..models.sdf import SDFDecoder, ShapeSpace, decoder_from_bundle, extract_mesh
from ..prep.crops import GridSpec, agent_input, intensity_stats
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
        return cls(
            decoder, space, CanonicalSDF(bundle.tensors["canonical_sdf"].float(), float(info["canonical_radius"])),
            agents, GridSpec.from_dict(info["grid"]), float(info["median_scale_mm"]),
            np.array(info["mean_rotation"]), np.array(info["centre_offset_mm"]), int(info["fit_steps"]),
            bundle.metadata,
        )


@dataclass
class ImageFit:
    mesh: trimesh.Trimesh  # LPS mm
    segmentation: sitk.Image  # uint8 on the image grid
    stages: list[dict]  # per stage: pose and loadings after it
    seconds: float
    warnings: list[str] = field(default_factory=list)


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


def fit_image(
    model: DISSMModel, image: sitk.Image, stages: tuple[str, ...] = STAGES, steps: int | None = None,
    source: str = "image", progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ImageFit:
    """Fit ``model`` to ``image`` (stopping after the last of ``stages``); surface and segmentation."""
    unknown = [s for s in stages if s not in model.agents]
    if unknown:
        raise InputError(None, f"unknown stage(s) {', '.join(unknown)} (stages: {', '.join(model.agents)})")
    began = time.perf_counter()
    warnings = [w for w in [intensity_warning(model, image, source)] if w]
    records = run_agent(model, image, stages, steps, progress, should_stop)
    mesh = state_mesh(model, state_from_record(records[-1]))
    if len(mesh.faces) == 0:
        raise InputError(source, "the fitted shape is empty (is this the model's organ and modality?)")
    segmentation = mesh_to_labelmap(mesh, image)
    return ImageFit(mesh, segmentation, records, time.perf_counter() - began, warnings)
