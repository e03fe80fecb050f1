"""The one model-bundle format and loader.

A bundle is a single ``.pt`` file holding only tensors and plain metadata, so it
loads with ``torch.load(weights_only=True)``: no code runs on load. Layout::

    {"format": "shapeprior-model/1", "kind": "dals" | ..., "metadata": {...},
     "tensors": {name: Tensor}}

``metadata`` carries the organ, units and frame conventions, the normalisation
from the model's unit sphere to millimetres, the architecture config, and the
versions and command that produced it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__, resources_dir
from ..errors import InputError
from ..io.atomic import atomic_output

FORMAT = "shapeprior-model/1"


def models_dir() -> Path:
    """Folder of the shipped models, overridable by $SHAPEPRIOR_MODELS."""
    env = os.environ.get("SHAPEPRIOR_MODELS")
    return Path(env) if env else resources_dir() / "Models"


def shipped_models() -> dict[str, Path]:
    """Organ name -> bundle path for every shipped model."""
    root = models_dir()
    if not root.is_dir():
        return {}
    return {p.name: p / "model.pt" for p in sorted(root.iterdir()) if (p / "model.pt").is_file()}


@dataclass
class ModelBundle:
    kind: str
    metadata: dict
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def organ(self) -> str:
        return self.metadata.get("organ", "unknown")


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name (``liver``) or a bundle file path -> the file path."""
    text = str(name_or_path)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text]
    path = Path(text)
    if path.suffix == ".pt" or os.sep in text:
        if not path.is_file():
            raise InputError(path, "no such model file")
        return path
    known = ", ".join(shipped) or "none shipped"
    raise InputError(None, f"unknown model {text!r} (shipped models: {known}; or give a .pt file)")


def load_bundle(name_or_path: str | os.PathLike, kind: str | None = None) -> ModelBundle:
    """Load a bundle without executing code; check its format and, if given, its kind."""
    path = resolve_model(name_or_path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle with code, truncated file...
        raise InputError(path, f"not a readable shapeprior model ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(path, f"not a shapeprior model bundle (expected format {FORMAT})")
    if kind is not None and raw.get("kind") != kind:
        raise InputError(path, f"a {raw.get('kind')!r} model; this command needs a {kind!r} model")
    return ModelBundle(raw["kind"], raw["metadata"], raw["tensors"], path)


def save_bundle(
    path: str | os.PathLike, kind: str, metadata: dict, tensors: dict[str, torch.Tensor],
    half_precision: tuple[str, ...] = (),
) -> None:
    """Write a bundle atomically (tensors moved to CPU and made contiguous).

    Floating tensors whose names start with one of ``half_precision`` are stored as float16
    (half the file size; loaders cast to float32), and listed in ``metadata["float16"]``.
    """
    def stored(name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu().contiguous()
        if tensor.is_floating_point() and name.startswith(half_precision or ("\0",)):
            return tensor.half()
        return tensor

    metadata = {**metadata, "versions": {"shapeprior": __version__, "torch": torch.__version__.split("+")[0]},
                "float16": list(half_precision)}
    payload = {
        "format": FORMAT,
        "kind": kind,
        "metadata": metadata,
        "tensors": {k: stored(k, v) for k, v in tensors.items()},
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
