"""Every model kind built from its bundle, in one table: kind -> builder, imported only when used
(a DALS fit never imports MONAI)."""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Any, Union

from ..errors import InputError
from .bundle import ModelBundle, load_bundle, resolve_model

# A shipped model name or bundle path, or a (bundle, model) pair from load_model (reused across many fits).
Model = Union[str, os.PathLike, tuple[ModelBundle, Any]]
# kind -> (module, builder): the builder takes the bundle and returns what fits of that kind use.
BUILDERS = {
    "dals": ("shapeprior.models.dals", "decoder_from_bundle"),  # (decoder, mean latent)
    "sdf": ("shapeprior.models.sdf", "decoder_from_bundle"),  # (decoder, PCA shape space)
    "dissm": ("shapeprior.models.dissm", "DISSMModel.from_bundle"),  # DISSMModel
    "unet": ("shapeprior.models.unet", "unet_from_bundle"),  # MONAI UNet
    "template": ("shapeprior.models.template", "TemplateModel.from_bundle"),  # TemplateModel
    "pdm": ("shapeprior.models.pdm", "PointDistributionModel.from_bundle"),  # PointDistributionModel
    "deepssm": ("shapeprior.models.deepssm", "DeepSSMModel.from_bundle"),  # DeepSSMModel
}


def build_model(bundle: ModelBundle) -> Any:
    """The model of ``bundle``'s kind, ready to fit (eval mode, CPU)."""
    if bundle.kind not in BUILDERS:
        raise InputError(bundle.path, f"unknown model kind {bundle.kind!r} (known: {', '.join(BUILDERS)})")
    module, name = BUILDERS[bundle.kind]
    builder = importlib.import_module(module)
    for part in name.split("."):
        builder = getattr(builder, part)
    return builder(bundle)


def load_model(name_or_path: str | os.PathLike, kind: str | None = None) -> tuple[ModelBundle, Any]:
    """(bundle, model) of a shipped model name or a bundle file, checked to be of ``kind`` if given.

    Loaded once per file version (path, size, modification time): the panel's refits, and any
    later fit in the same process, reuse it (fits never change a model)."""
    path = resolve_model(name_or_path)
    try:
        stat = path.stat()
    except OSError:  # gone or unreadable: load_bundle says which, in one line
        return _load(str(path), 0, 0, kind)
    return _load(str(path), stat.st_size, stat.st_mtime_ns, kind)


@lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int, kind: str | None) -> tuple[ModelBundle, Any]:
    bundle = load_bundle(path, kind)
    return bundle, build_model(bundle)


def as_loaded(model: Model, kind: str | None = None) -> tuple[ModelBundle, Any]:
    """(bundle, model) of a name or path, loaded; a pair from :func:`load_model` as it is."""
    if isinstance(model, tuple):
        if kind is not None and model[0].kind != kind:
            raise InputError(model[0].path, f"a {model[0].kind!r} model; this needs a {kind!r} model")
        return model
    return load_model(model, kind)
