"""The one model-bundle format and loader.

A bundle is a single ``.pt`` file holding only tensors and plain metadata, so it
loads with ``torch.load(weights_only=True)``: no code runs on load. Layout::

    {"format": "shapeprior-model/1", "kind": "dals" | ..., "metadata": {...},
     "tensors": {name: Tensor}}

``metadata`` carries the organ, units and frame conventions, the normalisation
from the model's unit sphere to millimetres, the architecture config, and the
versions and command that produced it.

:func:`read_header` reads the format, kind and metadata without torch (a bundle is torch's zip of a
pickle and the raw tensor data), so the command line checks a model before it pays for importing torch.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__, resources_dir
from ..errors import InputError
from ..io.atomic import atomic_output

if TYPE_CHECKING:
    import torch

FORMAT = "shapeprior-model/1"
FIELDS = {"kind": str, "metadata": dict, "tensors": dict}  # beside "format", and of these types
# A bundle's pickle holds the metadata and, for each tensor, a reference to its data (tens of kB for the
# shipped models); a larger one is no bundle, and is refused before it is read.
MAX_PICKLE_BYTES = 16 * 2**20


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
    """A model file's content; from :func:`read_header`, each tensor is None."""

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


def _no_tensor(*args) -> None:
    """Stands for a tensor (torch's ``_rebuild_tensor_v2``) and its storage type in a header."""
    return None


class _HeaderUnpickler(pickle.Unpickler):
    """Reads plain data only: the names torch's tensors are rebuilt with become :func:`_no_tensor`, and
    every other global (``os.system``, ``builtins.eval``...) is refused, so no code in the file runs."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2") or (module, name[-7:]) == ("torch", "Storage"):
            return _no_tensor
        if (module, name) == ("collections", "OrderedDict"):  # a tensor's (empty) backward hooks
            return dict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid: object) -> None:  # a tensor's data, stored beside the pickle
        return None


def _header_pickle(path: Path) -> bytes:
    """The pickle of torch's zip format (``<archive>/data.pkl``), at most :data:`MAX_PICKLE_BYTES`."""
    with zipfile.ZipFile(path) as archive:
        entry = next((e for e in archive.infolist() if e.filename.endswith("/data.pkl")), None)
        if entry is None or entry.file_size > MAX_PICKLE_BYTES:
            raise ValueError("no torch archive")
        return archive.read(entry)


def has_refiner(bundle: ModelBundle) -> bool:
    """Whether a bundle (or header) is a DISSM model with a narrow-band refiner: one that can refine on images."""
    return bundle.kind == "dissm" and any(name.startswith("refiner.") for name in bundle.tensors)


def read_header(name_or_path: str | os.PathLike, kind: str | None = None) -> ModelBundle:
    """A bundle's format, kind and metadata, without torch and without running code in the file; its
    ``tensors`` name each tensor with None in place of the data. Checked to be of ``kind`` if given."""
    path = resolve_model(name_or_path)
    try:
        raw = _HeaderUnpickler(io.BytesIO(_header_pickle(path))).load()
    except Exception as exc:  # not a zip, truncated, a pickle naming code, ...
        raise InputError(path, f"not a readable shapeprior model ({type(exc).__name__})") from None
    if not (isinstance(raw, dict) and raw.get("format") == FORMAT
            and all(isinstance(raw.get(key), cls) for key, cls in FIELDS.items())):
        raise InputError(path, f"not a shapeprior model bundle (expected format {FORMAT})")
    if kind is not None and raw.get("kind") != kind:
        raise InputError(path, f"a {raw.get('kind')!r} model; this command needs a {kind!r} model")
    return ModelBundle(raw["kind"], raw["metadata"], raw["tensors"], path)


def load_bundle(name_or_path: str | os.PathLike, kind: str | None = None) -> ModelBundle:
    """Load a bundle without executing code: its header (:func:`read_header`), then its tensors."""
    import torch

    header = read_header(name_or_path, kind)
    try:
        raw = torch.load(header.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # tensor data cut or corrupt
        raise InputError(header.path, f"not a readable shapeprior model ({type(exc).__name__})") from None
    return ModelBundle(header.kind, header.metadata, raw["tensors"], header.path)


def save_bundle(
    path: str | os.PathLike, kind: str, metadata: dict, tensors: dict[str, torch.Tensor],
    half_precision: tuple[str, ...] = (),
) -> None:
    """Write a bundle atomically (tensors moved to CPU and made contiguous).

    Floating tensors whose names start with one of ``half_precision`` are stored as float16
    (half the file size; loaders cast to float32), and listed in ``metadata["float16"]``.
    """
    import torch

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
