"""A DISSM image-fitting model: implicit shape model, pose agents per stage, optional refiner."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..prep.crops import GridSpec
from .bundle import ModelBundle
from .pose_agent import CanonicalSDF, PoseAgent
from .refiner import build_refiner
from .sdf import SDFDecoder, ShapeSpace, decoder_from_bundle


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
