"""Pieces every training command shares: the dataset manifest, size metadata, and the resumable loop."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from ..io import atomic_output
from ..transform import Similarity

# step(g) -> (loss to minimise, this step's metrics): one training step, drawing its randomness from ``g`` only.
StepFn = Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]]


def read_manifest(dataset: Path) -> dict:
    """The manifest of a folder made by ``shapeprior prepare``."""
    path = Path(dataset) / "manifest.json"
    if not path.is_file():
        raise InputError(dataset, "not a prepared dataset (no manifest.json); run `shapeprior prepare` first")
    return json.loads(path.read_text())


def size_metadata(manifest: dict, names: list[str]) -> dict:
    """The ``normalisation`` block of a shape model: millimetres per unit of the training shapes."""
    scales = [Similarity.from_dict(manifest["shapes"][n]["from_unit"]).scale for n in names]
    return {"mm_per_unit_median": float(np.median(scales)), "mm_per_unit_range": [float(min(scales)), float(max(scales))],
            "anchor": manifest["anchor"]}


def implicit_metadata(organ: str, manifest: dict, names: list[str], config: dict) -> dict:
    """The metadata every implicit (signed-distance) model starts with."""
    return {
        "organ": organ,
        "units": "mm",
        "frame": "unit sphere of the anchor-aligned training shapes; SDF in unit-sphere units, negative inside",
        "normalisation": size_metadata(manifest, names),
        "config": config,
    }


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step: a run repeats on any device and resumes without saved RNG state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


class Run:
    """One resumable training run that writes the bundle ``out``.

    Picks the device (default: CUDA when available), seeds torch for the models' initial
    weights, and keeps the checkpoint ``out`` + ``.ckpt``: written atomically, so an
    interrupted run (Ctrl-C) leaves the previous one, and picked up by a re-run with the
    same settings (one made with other settings is refused).
    """

    def __init__(self, out: Path, settings: Any, device: str | None = None):
        """``settings``: the command's settings dataclass (with a ``seed``); ``device``: "cpu", "cuda", ..."""
        out = Path(out)
        self.settings, self.seed = asdict(settings), settings.seed
        self.checkpoint_path = out.with_suffix(out.suffix + ".ckpt")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.resumed = self._load_checkpoint()
        self.history: list[dict] = list(self.resumed["history"]) if self.resumed else []
        self.began = time.perf_counter()
        torch.manual_seed(self.seed)

    def _load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.is_file():
            return None
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        if state["settings"] != self.settings:
            raise InputError(self.checkpoint_path, "checkpoint was made with other settings; delete it or change --out")
        return state

    def start(self, tag: dict | None = None) -> int:
        """The step the stage ``tag`` (e.g. ``{"stage": "scale"}``) resumes at: 0 unless the checkpoint is of it."""
        same = self.resumed is not None and all(self.resumed.get(k) == v for k, v in (tag or {}).items())
        return int(self.resumed["step"]) if same else 0

    def train(self, step: StepFn, parts: dict[str, Any], steps: int, *, desc: str, progress: bool, log_every: int,
              save_every: int | None = None, generator: torch.Generator | None = None,
              tag: dict | None = None) -> None:
        """Run steps [resumed step, ``steps``) of ``step``, minimising its loss with ``parts["optimiser"]``.

        ``parts`` is what the checkpoint holds besides settings, step and history: modules,
        optimisers, schedulers, tensors (or lists of them), generators, plain values; restored
        in place on resume. Each step draws from its own seeded generator, or from ``generator``
        when given (then a part, so it resumes too). Every ``log_every`` steps the history gets
        the window means of the metrics (a ``ReduceLROnPlateau`` scheduler steps on the first;
        others step every step); the checkpoint is saved every ``save_every`` (default ``log_every``)
        steps and after the last.
        """
        tag, start = tag or {}, self.start(tag)
        if start:
            for name, part in parts.items():
                _restore(part, self.resumed[name])
        optimiser, scheduler = parts["optimiser"], parts["scheduler"]
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        totals: dict[str, float] = {}
        with tqdm(total=steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
            for i in range(start, steps):
                loss, metrics = step(generator or step_generator(self.seed, i))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                if not plateau:
                    scheduler.step()
                totals = {k: totals.get(k, 0.0) + v for k, v in metrics.items()}
                if (i + 1) % log_every == 0:
                    means = {k: v / log_every for k, v in totals.items()}
                    if plateau:
                        scheduler.step(next(iter(means.values())))
                    self.history.append({**tag, "step": i + 1, **means, "lr": optimiser.param_groups[0]["lr"]})
                    totals = {}
                if (i + 1) % (save_every or log_every) == 0 or i + 1 == steps:
                    self._save({"step": i + 1, **tag, **{name: _state(part) for name, part in parts.items()}})
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
                bar.update(1)

    def _save(self, state: dict) -> None:
        with atomic_output(self.checkpoint_path) as tmp:
            torch.save({"settings": self.settings, "history": self.history, **state}, tmp)

    def record(self, command: str = "") -> dict:
        """The bundle's training record: the settings, history, time, device and command line."""
        return {**self.settings, "history": self.history, "seconds_this_run": time.perf_counter() - self.began,
                "device": str(self.device), "command": command or " ".join(sys.argv)}


def _state(part: Any) -> Any:
    """What the checkpoint stores of one part."""
    if isinstance(part, torch.Generator):
        return part.get_state()
    if isinstance(part, torch.Tensor):
        return part.detach()
    if isinstance(part, (list, tuple)):
        return [_state(p) for p in part]
    return part.state_dict() if hasattr(part, "state_dict") else part


def _restore(part: Any, saved: Any) -> None:
    """Load one part's checkpointed state in place (plain values are only saved)."""
    if isinstance(part, torch.Generator):
        part.set_state(saved.cpu())  # the checkpoint was mapped to the run's device
    elif isinstance(part, torch.Tensor):
        part.data.copy_(saved)
    elif isinstance(part, (list, tuple)):
        for p, s in zip(part, saved):
            _restore(p, s)
    elif hasattr(part, "load_state_dict"):
        part.load_state_dict(saved)
