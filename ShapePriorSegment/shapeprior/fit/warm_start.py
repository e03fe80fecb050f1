"""Refitting from an earlier fit: the fit state a report carries, and the checks before reusing it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..transform import Similarity


@dataclass
class FitState:
    """Where a fit ended, to refit from: the pose (model unit sphere -> LPS mm), the global
    latent (D,) and the per-vertex latent field's coefficients (modes, D) over the
    icosphere's smoothest Laplacian modes (per-vertex latents = latent + modes @ coefficients)."""

    pose: Similarity
    latent: np.ndarray
    coefficients: np.ndarray

    def to_dict(self) -> dict:
        return {"pose_model_to_lps": self.pose.to_dict(), "latent": self.latent.round(6).tolist(),
                "coefficients": self.coefficients.round(6).tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> FitState:
        return cls(Similarity.from_dict(data["pose_model_to_lps"]), np.asarray(data["latent"], dtype=np.float64),
                   np.asarray(data["coefficients"], dtype=np.float64))


def model_digest(path: str | Path) -> str:
    """A short SHA-256 of a model file: names the exact weights a fit state belongs to (computed
    once per file version: path, size, modification time)."""
    stat = Path(path).stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def curve_digests(curves: list[np.ndarray]) -> list[str]:
    """One short digest per curve (N_i, 3) LPS mm, its points rounded to 0.01 mm."""
    return [hashlib.sha256(np.round(np.asarray(c, dtype=np.float64), 2).tobytes()).hexdigest()[:12] for c in curves]


def fit_state_record(state: FitState, bundle, curves: list[np.ndarray], level: int) -> dict:
    """The report's ``fit_state``: what ``--warm-start`` refits from, and what it belongs to
    (``level``: the fitted icosphere's, whose Laplacian modes the coefficients weigh)."""
    return {"model_sha256": model_digest(str(bundle.path)), "organ": bundle.organ, "frame": "LPS mm",
            "level": level, "curves": curve_digests(curves), **state.to_dict()}


def read_warm_start(report: str | Path | dict, bundle, curves: list[np.ndarray], level: int,
                    vertex_modes: int) -> tuple[FitState, list[str]]:
    """(the state to refit from, notes for the report) from an earlier fit's report (a JSON file,
    or the report itself).

    ``bundle`` may be a header (:func:`~shapeprior.models.bundle.read_header`): no torch needed.
    Refused (:class:`InputError`): not a fit report, or a fit by another model, organ or frame.
    Allowed with a note: its curves are not all among ``curves`` (it is then only a starting point).
    ``level`` and ``vertex_modes``: the new fit's icosphere level and per-vertex latent modes.
    """
    path = "the previous fit's report" if isinstance(report, dict) else str(report)
    try:
        record = (report if isinstance(report, dict) else json.loads(Path(report).read_text()))["fit_state"]
        state = FitState.from_dict(record)
        before = [str(d) for d in record.get("curves", [])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(path, f"not a fit report with a fit_state to refit from ({type(error).__name__}: {error})")
    if record.get("frame") != "LPS mm":
        raise InputError(path, f"fit state in frame {record.get('frame')!r}, not 'LPS mm'")
    if record.get("organ") != bundle.organ or record.get("model_sha256") != model_digest(str(bundle.path)):
        raise InputError(path, f"fitted with another model ({record.get('organ')}, {record.get('model_sha256')}) "
                               f"than {bundle.path} ({bundle.organ}); refit without --warm-start")
    if record.get("level") != level:
        raise InputError(path, f"fitted at icosphere level {record.get('level')}, this fit uses --level {level}")
    latent_dim = bundle.metadata["config"]["latent_dim"]
    modes = min(vertex_modes, 10 * 4**level)  # laplacian_modes keeps at most V - 2 = 10 * 4^level
    expected = {"latent": (latent_dim,), "coefficients": (modes, latent_dim)}
    for name, array in (("latent", state.latent), ("coefficients", state.coefficients)):
        if array.shape != expected[name] or not np.all(np.isfinite(array)):
            raise InputError(path, f"fit state's {name} is not {expected[name]} finite numbers for this model")
    now = set(curve_digests(curves))
    kept = sum(d in now for d in before)
    note = f"refitted from {path}: {kept} of its {len(before)} curves are among these {len(curves)}"
    if kept < len(before):
        note += "; the other curves changed or were removed, so its pose and shape are only a starting point"
    return state, [note]
