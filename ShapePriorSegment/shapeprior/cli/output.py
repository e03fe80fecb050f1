"""The command line's one writer of an :class:`~shapeprior.fit.outcome.Outcome`, and its progress bar."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..fit.outcome import Outcome
from . import stop_if_interrupted


def progress_bar(quiet: bool):
    """(tqdm bar, ``update(fraction, stage)``) for a fit's progress callback."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc="fit", disable=quiet, dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def update(fraction: float, stage: str) -> None:
        bar.set_description(stage, refresh=False)
        bar.update(round(100 * fraction) - bar.n)

    return bar, update


def fit_and_write(args: argparse.Namespace, fit: Callable[[Callable[[float, str], None]], Outcome],
                  reference: sitk.Image | None = None, volume_path: str | None = None) -> int:
    """``fit(progress)`` under a progress bar, then :func:`write_outcome`; the command's exit code.
    Ctrl-C pressed at any time before the outputs are written stops the command (at the next progress
    update), even if a library swallowed its KeyboardInterrupt."""
    bar, update = progress_bar(args.quiet)

    def checked_update(fraction: float, stage: str) -> None:
        stop_if_interrupted()
        update(fraction, stage)

    with bar:
        outcome = fit(checked_update)
    stop_if_interrupted()
    write_outcome(args, outcome, reference, volume_path)
    return 0


def write_outcome(args: argparse.Namespace, outcome: Outcome, reference: sitk.Image | None = None,
                  volume_path: str | None = None) -> None:
    """Write the outputs asked for (``--out-model``, ``--out-seg``, ``--report``, ``--out-scene``, and for a
    point distribution model's fit ``--out-loadings`` and ``--out-points``), print the warnings and the summary.

    The segmentation is the outcome's, or the surface voxelised on ``reference``'s grid. Everything is
    computed first, and the scene bundle, the one output that can still fail on its input (an image
    Slicer cannot read), is written before the others; each file is written atomically, so a
    failure leaves no partial set. ``volume_path``: the image shown in the scene bundle.
    """
    from ..io import write_json
    from ..io.labelmaps import mesh_to_labelmap, write_labelmap

    labelmap = outcome.labelmap
    if args.out_seg and labelmap is None:
        if reference is None:
            raise InputError(args.out_seg, "needs a grid: give --reference IMAGE")
        labelmap = mesh_to_labelmap(outcome.mesh, reference)
    if args.out_scene:
        from ..mrml.scene import write_scene_bundle

        write_scene_bundle(args.out_scene, outcome, volume_path)
    if args.out_model:
        from ..io import write_mesh  # VTK: 0.4 s of a command that writes no surface

        write_mesh(outcome.mesh, args.out_model, point_data=outcome.vertex_data or None)
    if args.out_seg:
        write_labelmap(labelmap, args.out_seg, name=outcome.organ)
    if getattr(args, "out_labels", None):
        names = {int(k): v for k, v in outcome.report["subregions"].items()}
        write_labelmap(outcome.subregions, args.out_labels, name=outcome.organ, names=names)
    if getattr(args, "out_loadings", None):
        from ..io.tables import write_shape_table

        report = outcome.report
        write_shape_table(args.out_loadings, [report["input"]], np.array(report["loadings"]),
                          np.array([report["mahalanobis"]]), np.array([report["volume_ml"]]))
    if getattr(args, "out_points", None):
        _write_points(outcome, args.out_points)
    if args.report:
        write_json(outcome.report, args.report)
    for warning in outcome.warnings:
        print(f"shapeprior: warning: {warning}", file=sys.stderr)
    print(outcome.summary)


def _write_points(outcome: Outcome, path: str) -> None:
    """The outcome's corresponding points (LPS mm) as a .csv table or a Slicer point list."""
    if path.lower().endswith(".csv"):
        from ..io.tables import write_point_table

        write_point_table(path, outcome.points)
    else:
        from ..io.markups import write_point_list

        write_point_list(outcome.points, path, f"{outcome.organ} correspondences")
