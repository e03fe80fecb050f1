"""Pieces every training command shares: the dataset manifest, resumable checkpoints, size metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_output
from ..transform import Similarity


def read_manifest(dataset: Path) -> dict:
    """The manifest of a folder made by ``shapeprior prepare``."""
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise InputError(dataset, "not a prepared dataset (no manifest.json); run `shapeprior prepare` first")
    return json.loads(path.read_text())


def checkpoint_path(out: Path) -> Path:
    return out.with_suffix(out.suffix + ".ckpt")


def load_checkpoint(out: Path, settings: dict, device: torch.device | str = "cpu") -> dict | None:
    """The checkpoint beside ``out`` if there is one; refuse one made with other ``settings``."""
    ckpt = checkpoint_path(out)
    if not ckpt.is_file():
        return None
    state = torch.load(ckpt, map_location=device, weights_only=True)
    if state["settings"] != settings:
        raise InputError(ckpt, "checkpoint was made with other settings; delete it or change --out")
    return state


def save_checkpoint(out: Path, state: dict) -> None:
    """Write the checkpoint beside ``out`` atomically (an interrupted save keeps the previous one)."""
    with atomic_output(checkpoint_path(out)) as tmp:
        torch.save(state, tmp)


def size_metadata(manifest: dict, names: list[str]) -> dict:
    """The ``normalisation`` block of a shape model: millimetres per unit of the training shapes."""
    scales = [Similarity.from_dict(manifest["shapes"][n]["from_unit"]).scale for n in names]
    return {"mm_per_unit_median": float(np.median(scales)), "mm_per_unit_range": [float(min(scales)), float(max(scales))],
            "anchor": manifest["anchor"]}
