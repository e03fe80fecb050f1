"""The ``shapeprior`` command line.

Every bad input ends with one line ``shapeprior: error: <file>: <problem>`` on
stderr and exit code 2; outputs are written atomically, so nothing half-made is left.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from typing import Sequence

import numpy as np
from tqdm import tqdm

from . import __version__
from .errors import InputError


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="masks or meshes -> aligned, unit-sphere shapes with SDF samples",
        description="Turn a folder of binary masks (NIfTI, NRRD, MHA) or surface meshes (OBJ, STL, PLY, VTK, VTP) "
        "into a dataset folder: clean surfaces, CPD alignment to an anchor, unit-sphere normalisation, SDF samples. "
        "Re-running on the same output folder resumes.",
    )
    p.add_argument("src", help="folder of masks or meshes")
    p.add_argument("out", help="dataset folder to create or resume")
    p.add_argument("--label", help="label value(s) to use, comma-separated labels are merged (e.g. 1,2)")
    p.add_argument("--images", help="folder of images matching the masks by name (checked to share their grid)")
    p.add_argument("--anchor", help="name of the shape to align to (default: the median-volume shape)")
    p.add_argument("--target-vertices", type=int, default=4000, help="simplify surfaces to at most this many vertices")
    p.add_argument("--smoothing-mm", type=float, default=1.0, help="Gaussian sigma applied to masks (mm)")
    p.add_argument("--no-interpolate", action="store_true", help="do not interpolate between thick slices")
    p.add_argument("--sdf-samples", type=int, default=100_000, help="SDF samples per shape (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from .io.images import parse_labels
    from .prep.dataset import PrepareSettings, prepare_dataset

    settings = PrepareSettings(
        labels=parse_labels(args.label),
        target_vertices=args.target_vertices,
        smoothing_mm=args.smoothing_mm,
        interpolate_slices=not args.no_interpolate,
        sdf_samples=args.sdf_samples,
        anchor=args.anchor,
        seed=args.seed,
    )
    start = time.perf_counter()
    manifest = prepare_dataset(args.src, args.out, settings, images=args.images, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    repaired = sum(1 for s in manifest["shapes"].values() if s.get("repair", {}).get("method", "none") != "none")
    print(
        f"{len(manifest['shapes'])} shapes in {args.out} (anchor {manifest['anchor']}, "
        f"{repaired} repaired) in {elapsed:.1f} s"
    )
    return 0


def _add_train_dals(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-dals",
        help="train a DALS mesh decoder on a prepared dataset",
        description="Auto-decoder training of a DALS decoder (resumable: re-run the same command).",
    )
    p.add_argument("dataset", help="folder made by `shapeprior prepare`")
    p.add_argument("out", help="model bundle to write (.pt); its checkpoint is OUT.ckpt")
    p.add_argument("--include", action="append", help="shape-name pattern to train on (repeatable; default all)")
    p.add_argument("--organ", default="organ", help="organ name stored in the model")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--hidden", default="256,256,128", help="hidden widths, comma-separated")
    p.add_argument("--level", type=int, default=3, help="icosphere level of the training template")
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--points", type=int, default=2048, help="surface points per shape and step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lambda-reg", type=float, default=1e-4, help="triangle-quality loss weight")
    p.add_argument("--lambda-n", type=float, default=1e-3, help="latent norm weight")
    p.add_argument("--lambda-normal", type=float, default=0.0, help="normal-consistency (anti-fold) weight")
    p.add_argument("--augment", type=int, default=3, help="smoothly deformed copies per shape")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=_run_train_dals)


def _run_train_dals(args: argparse.Namespace) -> int:
    from .train.dals import DALSTrainSettings, train_dals

    settings = DALSTrainSettings(
        include=args.include or ["*"], organ=args.organ, latent_dim=args.latent_dim,
        hidden=[int(h) for h in args.hidden.split(",")], level=args.level, steps=args.steps, batch=args.batch,
        points=args.points, lr=args.lr, lambda_reg=args.lambda_reg, lambda_n=args.lambda_n,
        lambda_normal=args.lambda_normal,
        augment=args.augment, seed=args.seed,
    )
    path = train_dals(args.dataset, args.out, settings, command=_command_line(), progress=not args.quiet, device=args.device)
    print(f"wrote {path}")
    return 0


def _add_train_sdf(sub: argparse._SubParsersAction) -> None:
    from .train.sdf import SDFTrainSettings

    d = SDFTrainSettings()
    p = sub.add_parser(
        "train-sdf",
        help="train a DeepSDF decoder and its PCA shape space on a prepared dataset",
        description="Auto-decoder training of an implicit (signed-distance) decoder on the SDF samples of a "
        "prepared dataset, then PCA of the latents (resumable: re-run the same command).",
    )
    p.add_argument("dataset", help="folder made by `shapeprior prepare` (with SDF samples)")
    p.add_argument("out", help="model bundle to write (.pt); its checkpoint is OUT.ckpt")
    p.add_argument("--include", action="append", help="shape-name pattern to use (repeatable; default all)")
    p.add_argument("--holdout-every", type=int, default=d.holdout_every,
                   help="hold out every n-th shape of the sorted names for benchmarks (0: none)")
    p.add_argument("--organ", default="organ", help="organ name stored in the model")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--samples", type=int, default=d.samples, help="SDF samples per shape and step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lambda-z", type=float, default=d.lambda_z, help="latent prior weight")
    p.add_argument("--pca-variance", type=float, default=d.pca_variance, help="explained variance the PCA keeps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=_run_train_sdf)


def _run_train_sdf(args: argparse.Namespace) -> int:
    from .train.sdf import SDFTrainSettings, train_sdf

    settings = SDFTrainSettings(
        include=args.include or ["*"], holdout_every=args.holdout_every, organ=args.organ,
        latent_dim=args.latent_dim, width=args.width, layers=args.layers, dropout=args.dropout, steps=args.steps,
        batch=args.batch, samples=args.samples, lr=args.lr, lambda_z=args.lambda_z,
        pca_variance=args.pca_variance, seed=args.seed,
    )
    path = train_sdf(args.dataset, args.out, settings, command=_command_line(), progress=not args.quiet,
                     device=args.device)
    print(f"wrote {path}")
    return 0


def _add_train_pose(sub: argparse._SubParsersAction) -> None:
    from .train.pose import PoseTrainSettings

    d = PoseTrainSettings()
    p = sub.add_parser(
        "train-pose",
        help="train the DISSM pose agent of an implicit shape model on its training images",
        description="Train the image -> pose -> shape agent (translation, scale, rotation, shape stages) on the "
        "training images of an SDF model's dataset; writes a complete image-fitting (dissm) model. Resumable.",
    )
    p.add_argument("sdf_model", help="model from `shapeprior train-sdf` (.pt)")
    p.add_argument("dataset", help="the dataset folder it was trained on (prepared with --images)")
    p.add_argument("out", help="model bundle to write (.pt); its checkpoint is OUT.ckpt")
    p.add_argument("--steps", default=",".join(map(str, d.steps)), help="training steps per stage, comma-separated")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--fit-steps", type=int, default=d.fit_steps, help="agent steps per stage when fitting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=_run_train_pose)


def _run_train_pose(args: argparse.Namespace) -> int:
    from .train.pose import PoseTrainSettings, train_pose

    try:
        steps = [int(v) for v in args.steps.split(",")]
    except ValueError:
        raise InputError(None, f"--steps must be integers separated by commas, got {args.steps!r}") from None
    if len(steps) != 4:
        raise InputError(None, "--steps needs four values: translation, scale, rotation, shape")
    settings = PoseTrainSettings(steps=steps, batch=args.batch, lr=args.lr, fit_steps=args.fit_steps, seed=args.seed)
    path = train_pose(args.sdf_model, args.dataset, args.out, settings, command=_command_line(),
                      progress=not args.quiet, device=args.device)
    print(f"wrote {path}")
    return 0


def _add_train_refine(sub: argparse._SubParsersAction) -> None:
    from .train.refine import RefineTrainSettings

    d = RefineTrainSettings()
    p = sub.add_parser(
        "train-refine",
        help="add DISSM's narrow-band level-set refinement to an image-fitting model",
        description="Fit the model's agent to its training images and train a small 3D U-Net that corrects the "
        "fitted signed distance map within a narrow band; writes the model with the refinement stage. Resumable.",
    )
    p.add_argument("model", help="model from `shapeprior train-pose` (.pt)")
    p.add_argument("dataset", help="the dataset folder it was trained on")
    p.add_argument("out", help="model bundle to write (.pt); its checkpoint is OUT.ckpt")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--copies", type=int, default=d.copies, help="perturbed fits per training image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=_run_train_refine)


def _run_train_refine(args: argparse.Namespace) -> int:
    from .train.refine import RefineTrainSettings, train_refiner

    settings = RefineTrainSettings(steps=args.steps, batch=args.batch, lr=args.lr, copies=args.copies, seed=args.seed)
    path = train_refiner(args.model, args.dataset, args.out, settings, command=_command_line(),
                         progress=not args.quiet, device=args.device)
    print(f"wrote {path}")
    return 0


def _add_train_unet(sub: argparse._SubParsersAction) -> None:
    from .train.unet import UNetTrainSettings

    d = UNetTrainSettings()
    p = sub.add_parser(
        "train-unet",
        help="train the plain 3D U-Net baseline on a prepared dataset's images",
        description="Train a MONAI 3D U-Net on the training split of a dataset prepared with --images "
        "(the baseline of `benchmark image`; its masks are also refined in `benchmark refine`). Resumable.",
    )
    p.add_argument("dataset", help="folder made by `shapeprior prepare --images`")
    p.add_argument("out", help="model bundle to write (.pt); its checkpoint is OUT.ckpt")
    p.add_argument("--holdout-every", type=int, default=d.holdout_every)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(run=_run_train_unet)


def _run_train_unet(args: argparse.Namespace) -> int:
    from .train.unet import UNetTrainSettings, train_unet

    settings = UNetTrainSettings(holdout_every=args.holdout_every, steps=args.steps, batch=args.batch, lr=args.lr,
                                 seed=args.seed)
    path = train_unet(args.dataset, args.out, settings, command=_command_line(), progress=not args.quiet,
                      device=args.device)
    print(f"wrote {path}")
    return 0


def _command_line() -> str:
    """The command as typed, for a model's record (empty when not run as ``shapeprior``)."""
    return "shapeprior " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("shapeprior") else ""


def _add_fit_tuning(p: argparse.ArgumentParser) -> None:
    from .fit.dals_fit import FitSettings

    d = FitSettings()
    p.add_argument("--model", default="liver", help="shipped model name or a .pt bundle (default: liver)")
    p.add_argument("--level", type=int, default=d.level, help="icosphere level of the fitted surface")
    p.add_argument("--global-steps", type=int, default=d.global_steps, help="steps of the single-latent stage")
    p.add_argument("--vertex-steps", type=int, default=d.vertex_steps, help="steps of the per-vertex-latent stage")
    p.add_argument("--lambda-dir", type=float, default=d.lambda_dir, help="smoothness weight of per-vertex latents")
    p.add_argument("--lambda-reg", type=float, default=d.lambda_reg, help="triangle-quality weight")
    p.add_argument("--lambda-latent", type=float, default=d.lambda_latent,
                   help="pull of the global latent towards the mean shape")
    p.add_argument("--blend-mm", type=float, default=d.contour_blend_mm,
                   help="contours: width of the blend onto the curves' interpolant near the planes (0: off)")
    p.add_argument("--seed", type=int, default=d.seed)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    _add_fit_tuning(p)
    p.add_argument("--out-model", help="fitted surface, LPS mm (.vtk/.vtp for Slicer, or .stl/.ply/.obj)")
    p.add_argument("--out-seg", help="segmentation labelmap (.nii.gz, .nrrd or .seg.nrrd)")
    p.add_argument("--reference", help="image whose grid --out-seg uses (default: the input labelmap)")
    p.add_argument("--report", help="JSON report: residuals, pose, iterations, time")
    p.add_argument("--out-scene", help="Slicer scene bundle (.mrb): volume (--reference), curves, model, segmentation")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _fit_settings(args: argparse.Namespace):
    from .fit.dals_fit import FitSettings

    return FitSettings(
        level=args.level, global_steps=args.global_steps, vertex_steps=args.vertex_steps,
        lambda_dir=args.lambda_dir, lambda_reg=args.lambda_reg, lambda_latent=args.lambda_latent,
        contour_blend_mm=args.blend_mm, seed=args.seed,
    )


# Single-file volume formats (.seg.nrrd included): a labelmap written as anything else fails or loses slices.
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _has_slicer_core() -> bool:
    """Scene bundles need the MRML bridge, i.e. the optional ``slicer`` extra."""
    return importlib.util.find_spec("slicer_core") is not None


def _check_outputs(args: argparse.Namespace) -> None:
    from .io.meshes import MESH_SUFFIXES

    outputs = [args.out_model, args.out_seg, args.report, args.out_scene]
    if not any(outputs):
        raise InputError(None, "nothing to write: give --out-model, --out-seg, --report and/or --out-scene")
    if args.out_model and not args.out_model.lower().endswith(MESH_SUFFIXES):
        raise InputError(args.out_model, f"unsupported mesh format (expected one of {', '.join(MESH_SUFFIXES)})")
    if args.out_seg and not args.out_seg.lower().endswith(LABELMAP_SUFFIXES):
        raise InputError(args.out_seg, "unsupported labelmap format (expected .nii.gz, .nii, .nrrd, .seg.nrrd or .mha)")
    if args.out_scene:
        if not args.out_scene.lower().endswith(".mrb"):
            raise InputError(args.out_scene, "a scene bundle must end in .mrb")
        if not _has_slicer_core():
            raise InputError(args.out_scene, "needs slicer-core: pip install 'shapeprior[slicer]'")
    for path in filter(None, outputs):
        if os.path.exists(path) and not args.overwrite:
            raise InputError(path, "exists; pass --overwrite to replace it")


def _check_grid(args: argparse.Namespace, reference_image) -> None:
    """Before fitting: --out-seg needs a grid (--reference, or the input labelmap)."""
    if args.out_seg and reference_image is None:
        raise InputError(args.out_seg, "needs a grid: give --reference IMAGE")


def _progress_bar(quiet: bool):
    bar = tqdm(total=100, desc="fit", disable=quiet, dynamic_ncols=True, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def update(fraction: float, stage: str) -> None:
        bar.set_description(stage, refresh=False)
        bar.update(round(100 * fraction) - bar.n)

    return bar, update


def _write_fit_outputs(args: argparse.Namespace, fit, reference_image, curves: list) -> None:
    from .io import write_json, write_mesh
    from .io.labelmaps import mesh_to_labelmap, write_labelmap

    # Everything is computed before anything is written, so a failure leaves no partial set.
    labelmap = None
    if args.out_seg:
        if reference_image is None:
            raise InputError(args.out_seg, "needs a grid: give --reference IMAGE")
        labelmap = mesh_to_labelmap(fit.result.mesh, reference_image)
    if args.out_model:
        write_mesh(fit.result.mesh, args.out_model)
    if labelmap is not None:
        write_labelmap(labelmap, args.out_seg, name=fit.bundle.organ)
    if args.report:
        write_json(fit.report, args.report)
    if args.out_scene:
        from .mrml.scene import write_scene_bundle

        write_scene_bundle(
            args.out_scene, curves, fit.result.mesh, fit.bundle.organ, volume_path=args.reference, report=fit.report
        )


def _add_fit_contours(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-contours",
        help="closed curves on a few planes -> whole organ surface and segmentation",
        description="Fit a DALS shape model to closed planar curves: Slicer markups (.mrk.json, ClosedCurve, "
        "LPS or RAS) or a labelmap with a few painted slices on any axes (.nii.gz, .nrrd, .seg.nrrd).",
    )
    p.add_argument("input", help="curves (.mrk.json) or a sparsely painted labelmap")
    p.add_argument("--label", help="label value(s) of a labelmap input")
    _add_fit_options(p)
    p.set_defaults(run=_run_fit_contours)


def _run_fit_contours(args: argparse.Namespace) -> int:
    from .fit.run import fit_curves
    from .io import read_image, read_mask
    from .io.images import parse_labels
    from .io.labelmaps import painted_slice_contours
    from .io.markups import read_closed_curves

    _check_outputs(args)
    reference = read_image(args.reference) if args.reference else None
    if args.input.lower().endswith(".mrk.json"):
        curves = read_closed_curves(args.input)
    else:
        mask = read_mask(args.input, parse_labels(args.label))
        curves = painted_slice_contours(mask, args.input)
        reference = reference or mask
    _check_grid(args, reference)
    bar, update = _progress_bar(args.quiet)
    with bar:
        fit = fit_curves(curves, args.model, _fit_settings(args), args.input, progress=update)
    _write_fit_outputs(args, fit, reference, curves)
    for warning in fit.report["warnings"]:
        print(f"shapeprior: warning: {warning}", file=sys.stderr)
    worst = max(r["max_mm"] for r in fit.report["residuals"])
    mean = float(np.mean([r["mean_mm"] for r in fit.report["residuals"]]))
    print(f"fitted {fit.bundle.organ} to {len(curves)} curves on {fit.report['planes']} planes in "
          f"{fit.result.seconds:.1f} s: contour residual mean {mean:.2f} mm, max {worst:.2f} mm")
    return 0


def _add_fit_points(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-points", help="point cloud -> organ surface and segmentation")
    p.add_argument("input", help="points: .mrk.json point list, .ply or .xyz (LPS mm)")
    _add_fit_options(p)
    p.set_defaults(run=_run_fit_points)


def _run_fit_points(args: argparse.Namespace) -> int:
    from .fit.run import fit_points, read_point_cloud
    from .io import read_image

    _check_outputs(args)
    reference = read_image(args.reference) if args.reference else None
    _check_grid(args, reference)
    points = read_point_cloud(args.input)
    bar, update = _progress_bar(args.quiet)
    with bar:
        fit = fit_points(points, args.model, _fit_settings(args), args.input, progress=update)
    _write_fit_outputs(args, fit, reference, [])
    print(f"fitted {fit.bundle.organ} to {len(points)} points in {fit.result.seconds:.1f} s")
    return 0


def _add_fit_image(sub: argparse._SubParsersAction) -> None:
    from .models.pose_agent import STAGES

    p = sub.add_parser(
        "fit-image",
        help="image -> organ surface and segmentation with an implicit shape model and its pose agent (DISSM)",
        description="Fit a DISSM model straight to an image: the learned agent places, scales, rotates and then "
        "deforms the shape model (" + " -> ".join(STAGES) + ").",
    )
    p.add_argument("input", help="image (.nii.gz, .nrrd, .mha)")
    p.add_argument("--model", default="hippocampus", help="shipped model name or a .pt bundle (default: hippocampus)")
    p.add_argument("--stages", help="stages to run, in order, to stop early for QA (default: all the model has: "
                   + ", ".join(STAGES) + ", refine)")
    p.add_argument("--steps", type=int, help="agent steps per stage (default: the model's)")
    p.add_argument("--out-model", help="fitted surface, LPS mm (.vtk/.vtp for Slicer, or .stl/.ply/.obj)")
    p.add_argument("--out-seg", help="segmentation on the image grid (.nii.gz, .nrrd or .seg.nrrd)")
    p.add_argument("--report", help="JSON report: pose and loadings per stage, time")
    p.add_argument("--out-scene", help="Slicer scene bundle (.mrb): image, model, segmentation")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=_run_fit_image)


def _run_fit_image(args: argparse.Namespace) -> int:
    from .fit.image_fit import DISSMModel, fit_image, fit_report
    from .io import read_image, write_json, write_mesh
    from .io.labelmaps import write_labelmap
    from .models.bundle import load_bundle

    _check_outputs(args)
    bundle = load_bundle(args.model, kind="dissm")
    image = read_image(args.input)
    model = DISSMModel.from_bundle(bundle)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip()) if args.stages else model.stages
    if not stages or list(stages) != list(model.stages[: len(stages)]):
        raise InputError(None, f"--stages must be a leading part of {','.join(model.stages)}, got {args.stages!r}")
    bar, update = _progress_bar(args.quiet)
    with bar:
        fit = fit_image(model, image, stages, args.steps, source=args.input, progress=update)
    for warning in fit.warnings:
        print(f"shapeprior: warning: {warning}", file=sys.stderr)
    report = fit_report(fit, bundle, args.input)
    if args.out_model:
        write_mesh(fit.mesh, args.out_model)
    if args.out_seg:
        write_labelmap(fit.segmentation, args.out_seg, name=bundle.organ)
    if args.report:
        write_json(report, args.report)
    if args.out_scene:
        from .mrml.scene import write_scene_bundle

        write_scene_bundle(args.out_scene, [], fit.mesh, bundle.organ, volume_path=args.input, report=report)
    print(f"fitted {bundle.organ} to {args.input} ({', '.join(stages)}) in {fit.seconds:.1f} s: "
          f"volume {report['volume_ml'] * 1000:.0f} mm3")
    return 0


def _add_refine_mask(sub: argparse._SubParsersAction) -> None:
    from .fit.refine_mask import RefineSettings

    d = RefineSettings()
    p = sub.add_parser(
        "refine-mask",
        help="CNN mask -> smooth, plausible surface and segmentation with a shape prior",
        description="Fit a shape model robustly to a mask (largest part; leaks, holes and cut-off parts barely "
        "pull), then fuse it with the mask: the mask where both agree, the prior where they do not. A DALS model fits a mesh to the mask boundary's "
        "distance map; an implicit (sdf/dissm) model fits pose and PCA loadings to its signed distance map.",
    )
    p.add_argument("input", help="label image (.nii.gz, .nrrd, .seg.nrrd, .mha)")
    p.add_argument("--model", required=True, help="shipped model name (liver, hippocampus) or a .pt bundle")
    p.add_argument("--label", help="label value(s) to refine; comma-separated labels are merged")
    p.add_argument("--all-parts", action="store_true",
                   help="fit all disconnected parts together (default: the largest)")
    p.add_argument("--image", help="the image the mask belongs to, for the scene bundle")
    p.add_argument("--trust-voxels", type=float, default=d.trust_voxels,
                   help="how far (in voxels) the surface follows the mask where the prior disagrees with it "
                   "(0: the prior alone; default 1 for implicit models, 5 for DALS models)")
    p.add_argument("--lambda-dir", type=float, default=d.dals.lambda_dir,
                   help="DALS prior strength: smoothness of the per-vertex latents")
    p.add_argument("--global-only", action="store_true", help="DALS: one global latent, no per-vertex latents")
    p.add_argument("--out-model", help="refined surface, LPS mm, with the point array DistanceToMaskBoundary_mm "
                   "(.vtk/.vtp keep it; .stl/.ply/.obj)")
    p.add_argument("--out-seg", help="segmentation on the mask's grid (.nii.gz, .nrrd or .seg.nrrd)")
    p.add_argument("--report", help="JSON report: pose, disagreement with the mask, volumes, time, warnings")
    p.add_argument("--out-scene", help="Slicer scene bundle (.mrb): image (--image), model, segmentation")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_refine_mask)


def _run_refine_mask(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .fit.refine_mask import DISTANCE_ARRAY, RefineSettings, refine_mask
    from .io import read_image, read_mask, write_json, write_mesh
    from .io.images import parse_labels
    from .io.labelmaps import write_labelmap

    _check_outputs(args)
    if args.image:
        read_image(args.image)  # a bad image fails before the fit
    if args.trust_voxels is not None and args.trust_voxels < 0:
        raise InputError(None, f"--trust-voxels must be >= 0, got {args.trust_voxels}")
    mask = read_mask(args.input, parse_labels(args.label))
    d = RefineSettings()
    dals = replace(d.dals, lambda_dir=args.lambda_dir, seed=args.seed,
                   vertex_steps=0 if args.global_only else d.dals.vertex_steps)
    settings = replace(d, trust_voxels=args.trust_voxels, dals=dals, implicit=replace(d.implicit, seed=args.seed))
    bar, update = _progress_bar(args.quiet)
    with bar:
        refined = refine_mask(mask, args.model, args.input, args.all_parts, settings, progress=update)
    for warning in refined.warnings:
        print(f"shapeprior: warning: {warning}", file=sys.stderr)
    if args.out_model:
        write_mesh(refined.mesh, args.out_model, point_data={DISTANCE_ARRAY: refined.distances})
    if args.out_seg:
        write_labelmap(refined.segmentation, args.out_seg, name=refined.report["organ"])
    if args.report:
        write_json(refined.report, args.report)
    if args.out_scene:
        from .mrml.scene import write_scene_bundle

        write_scene_bundle(args.out_scene, [], refined.mesh, refined.report["organ"], volume_path=args.image,
                           report=refined.report, distances=refined.distances, distance_name=DISTANCE_ARRAY)
    r = refined.report
    print(f"refined {r['organ']} mask {args.input} in {r['seconds']:.1f} s: Dice with the mask "
          f"{r['dice_with_mask']:.3f}, {r['added_ml']:.1f} ml added, {r['removed_ml']:.1f} ml removed; "
          f"{100 * (r['distance_to_mask_boundary_mm']['disagreeing_fraction'] or 0):.0f}% of the surface is "
          f"over {r['distance_to_mask_boundary_mm']['disagreeing_threshold_mm']:.1f} mm from the mask boundary")
    for region in r["distance_to_mask_boundary_mm"]["regions"][:3]:
        print(f"  {region['area_mm2']:.0f} mm2 around LPS {region['centre_lps_mm']} mm, "
              f"{region['mean_distance_mm']:+.1f} mm: {region['reading']}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="fit the shipped liver model to the bundled sample contours",
        description="Three orthogonal contours of an AMOS liver (Resources/SampleData) -> whole liver: "
        "writes a model (.vtk, LPS), a segmentation (.seg.nrrd), a report and, with slicer-core, a scene (.mrb).",
    )
    p.add_argument("--out", default="shapeprior-demo", help="output folder (default: ./shapeprior-demo)")
    p.add_argument("--model", default="liver")
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .models.bundle import models_dir

    sample = models_dir().parent / "SampleData"
    out = args.out
    argv = [
        "fit-contours", str(sample / "liver-contours.mrk.json"), "--model", args.model,
        "--reference", str(sample / "liver-painted.nii.gz"),
        "--out-model", os.path.join(out, "liver.vtk"), "--out-seg", os.path.join(out, "liver.seg.nrrd"),
        "--report", os.path.join(out, "report.json"),
    ]
    if _has_slicer_core():
        argv += ["--out-scene", os.path.join(out, "liver.mrb")]
    if args.overwrite:
        argv.append("--overwrite")
    sub_args = build_parser().parse_args((["-q"] if args.quiet else []) + argv)
    code = sub_args.run(sub_args)
    print(f"demo outputs in {out}/ (open liver.mrb in 3D Slicer, or load liver.vtk and liver.seg.nrrd)")
    return code


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure methods against baselines on held-out data")
    kinds = p.add_subparsers(dest="kind", required=True)
    c = kinds.add_parser(
        "contours", help="three orthogonal contours -> whole organ: DALS vs RBF, hull, fill-between-slices",
        description="Cuts contours from held-out true surfaces and runs every method on them in this process.",
    )
    c.add_argument("--data", default=os.path.join("..", "shared", "data", "liver-meshes"), help="folder of true surfaces")
    c.add_argument("--include", action="append", help="file-name patterns of held-out cases (default LiTS-*, 3Dircadb-*)")
    c.add_argument("--limit", type=int, default=20, help="number of cases, spread over the sorted list (0: all)")
    c.add_argument("--planes", default="3,4,5,6,7,8,9", help="plane counts for the F@2%% curve")
    c.add_argument("--out", help="write per-case results here (JSON)")
    c.add_argument("--markdown", help="write the summary tables here (Markdown)")
    _add_fit_tuning(c)
    c.set_defaults(run=_run_benchmark_contours)
    i = kinds.add_parser(
        "image", help="image -> organ: DISSM per stage vs a 3D U-Net on held-out images",
        description="Fits the DISSM model to the held-out images of its dataset split and scores every stage "
        "(Dice, HD95, ASSD, time) beside a U-Net run in the same process.",
    )
    i.add_argument("--data", required=True, help="the dataset folder the model was trained on")
    i.add_argument("--model", default="hippocampus", help="dissm model (default: hippocampus)")
    i.add_argument("--unet", help="U-Net bundle from `shapeprior train-unet` (the baseline)")
    i.add_argument("--limit", type=int, default=0, help="first N held-out cases (0: all)")
    i.add_argument("--out", help="write per-case results here (JSON)")
    i.add_argument("--markdown", help="write the summary table here (Markdown)")
    i.set_defaults(run=_run_benchmark_image)
    r = kinds.add_parser(
        "refine", help="mask refinement: CNN masks and typical CNN failures before and after, and a CT example",
        description="Refines the U-Net's masks of held-out hippocampus images and held-out true masks with "
        "thick slices, a leak, a hole or a cut-off part (hippocampus and livers), scoring each against the "
        "truth before and after; then the example CT's CNN liver mask, drawn over the scan with --figure.",
    )
    shared = os.path.join("..", "shared", "data")
    r.add_argument("--data", help="the hippocampus dataset folder (prepared with --images) of the hippocampus model")
    r.add_argument("--unet", help="U-Net bundle from `shapeprior train-unet` (its masks are refined)")
    r.add_argument("--liver-meshes", default=os.path.join(shared, "liver-meshes"), help="folder of liver surfaces "
                   "(held-out LiTS-*, 3Dircadb-* are voxelised at 2 mm; '' to skip)")
    r.add_argument("--ct-example", default=os.path.join(shared, "ct-example"), help="TotalSegmentator example "
                   "folder ('' to skip)")
    r.add_argument("--figure", help="PNG of the CT example's refined liver over the scan")
    r.add_argument("--limit", type=int, default=0, help="first N held-out hippocampus cases (0: all)")
    r.add_argument("--liver-limit", type=int, default=8, help="held-out livers, spread over the sorted list")
    r.add_argument("--out", help="write per-case results here (JSON)")
    r.add_argument("--markdown", help="write the summary table here (Markdown)")
    r.set_defaults(run=_run_benchmark_refine)


def _run_benchmark_contours(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench.contours import run_benchmark, summarise

    result = run_benchmark(
        Path(args.data), args.include or ["LiTS-*", "3Dircadb-*"], args.model, _fit_settings(args),
        limit=args.limit or None, planes_curve=tuple(int(n) for n in args.planes.split(",")), progress=not args.quiet,
    )
    _write_benchmark(args, result, summarise(result))
    return 0


def _run_benchmark_image(args: argparse.Namespace) -> int:
    from .bench.image import run_benchmark, summarise

    result = run_benchmark(args.data, args.model, args.unet, limit=args.limit or None, progress=not args.quiet)
    _write_benchmark(args, result, summarise(result))
    return 0


def _run_benchmark_refine(args: argparse.Namespace) -> int:
    from .bench.refine import ct_example, run_benchmark, summarise

    result = run_benchmark(args.data, args.unet, args.liver_meshes or None, limit=args.limit or None,
                           liver_limit=args.liver_limit, progress=not args.quiet)
    table = summarise(result)
    if args.ct_example:
        ct = ct_example(args.ct_example, args.figure)
        result["ct_example"] = ct
        table += (f"\n\nCT example (TotalSegmentator liver mask, 3 mm, {len(ct['border_faces'])} image faces "
                  f"touched): refined in {ct['seconds']:.1f} s, Dice with the CNN mask {ct['dice_with_mask']:.3f}, "
                  f"{ct['added_ml']:.0f} ml added, {ct['removed_ml']:.0f} ml removed; "
                  f"{100 * ct['distance_to_mask_boundary_mm']['disagreeing_fraction']:.0f}% of the surface inside "
                  f"the scan is over {ct['distance_to_mask_boundary_mm']['disagreeing_threshold_mm']:.0f} mm "
                  "from the mask.")
    _write_benchmark(args, result, table)
    return 0


def _write_benchmark(args: argparse.Namespace, result: dict, table: str) -> None:
    from .io import atomic_output, write_json

    if args.out:
        write_json(result, args.out)
    if args.markdown:
        with atomic_output(args.markdown) as tmp:
            tmp.write_text(table + "\n")
    print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shapeprior", description="Deep statistical shape priors for organ delineation.")
    parser.add_argument("--version", action="version", version=f"shapeprior {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train_dals(sub)
    _add_train_sdf(sub)
    _add_train_pose(sub)
    _add_train_refine(sub)
    _add_train_unet(sub)
    _add_fit_contours(sub)
    _add_fit_points(sub)
    _add_fit_image(sub)
    _add_refine_mask(sub)
    _add_demo(sub)
    _add_benchmark(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"shapeprior: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shapeprior: interrupted; finished outputs are kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
