"""``fit-contours``, ``fit-points``, ``fit-image``, ``refine-mask`` and ``demo``: read, check, fit, write.

Every input and option is checked before the model is loaded; heavy modules are imported inside
the ``run`` functions, after the parser has done its work.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ..errors import InputError
from ..settings import FitSettings, RefineSettings, TemplateMaskSettings
from .options import (
    add_outputs,
    add_settings,
    check_input,
    check_outputs,
    given,
    has_slicer_core,
    number,
    settings_from,
)

MODEL_OUTPUT = "fitted surface, LPS mm (.vtk/.vtp for Slicer, or .stl/.ply/.obj)"
SCENE_OUTPUT = "Slicer scene bundle (.mrb)"
STAGES_HELP = "translation, scale, rotation, shape, refine"


def _labels_or_segment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", help="label value(s) of a labelmap input; comma-separated labels are merged")
    parser.add_argument("--segment", help="segment name in a Segment Editor .seg.nrrd (e.g. liver)")


def _read_mask(args: argparse.Namespace, path: str):
    from ..io.images import parse_labels, read_mask

    return read_mask(path, parse_labels(args.label), segment=args.segment)


def _dals_fit_options(parser: argparse.ArgumentParser, outputs: dict[str, str], contours: bool) -> None:
    parser.add_argument("--model", default="liver", help="shipped model name or a .pt bundle (default: liver)")
    options = [f.name for f in fields(FitSettings) if contours or f.name != "contour_blend_mm"]
    add_settings(parser, FitSettings, only=tuple(options))
    add_outputs(parser, {"--out-model": MODEL_OUTPUT, **outputs,
                         "--report": "JSON report: " + ("per-curve residuals, " if contours else "") +
                         "pose, iterations, time, warnings",
                         "--out-scene": SCENE_OUTPUT + ": volume (--reference), " + ("curves, " if contours else "") +
                         "model, segmentation"})
    parser.add_argument("--reference", help="image whose grid --out-seg uses (and shown in the scene)")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-contours", help="closed curves on a few planes -> whole organ surface and segmentation",
        description="Fit a DALS shape model to closed planar curves: one or more Slicer markups files (.mrk.json, "
        "each with one or more closed curves, LPS or RAS, mixed freely), or one labelmap with a few painted "
        "slices on any axes (.nii.gz, .nrrd, .seg.nrrd).",
    )
    p.add_argument("inputs", nargs="+", metavar="input", help="curve files (.mrk.json), or one painted labelmap")
    _labels_or_segment(p)
    _dals_fit_options(p, {"--out-seg": "segmentation labelmap (.nii.gz, .nrrd or .seg.nrrd) on --reference's grid "
                                       "(default: the painted labelmap's)"}, contours=True)
    p.add_argument("--warm-start", metavar="REPORT", help="refit from an earlier fit's --report (after adding a "
                   "contour): about a second instead of a cold fit")
    p.add_argument("--suggest", choices=("axes", "oblique", "off"), default="axes",
                   help="where the next contour would help most: on a patient axis (default), on any plane, or not")
    p.set_defaults(run=run_fit_contours)

    p = sub.add_parser("fit-points", help="point cloud -> organ surface and segmentation",
                       description="Fit a DALS shape model to surface points from one or more files: Slicer point "
                       "lists (.mrk.json), .ply or .xyz (LPS mm).")
    p.add_argument("inputs", nargs="+", metavar="input", help="point files (.mrk.json point list, .ply, .xyz)")
    _dals_fit_options(p, {"--out-seg": "segmentation labelmap on --reference's grid (.nii.gz, .nrrd, .seg.nrrd)"},
                      contours=False)
    p.set_defaults(run=run_fit_points)

    p = sub.add_parser(
        "fit-image", help="image -> organ surface and segmentation with an implicit shape model and its pose agent "
        "(DISSM) or in one network pass (DeepSSM)",
        description="Fit a shape model straight to an image. A DISSM model (default): the learned agent places, "
        "scales, rotates and then deforms the shape model (translation -> scale -> rotation -> shape), then refines "
        "it. A DeepSSM model (e.g. hippocampus-deepssm): one network pass predicts the shape's PCA loadings and "
        "its corresponding points, in well under a second.",
    )
    p.add_argument("input", help="image (.nii.gz, .nrrd, .mha)")
    p.add_argument("--model", default="hippocampus", help="shipped model name or a .pt bundle (default: hippocampus)")
    p.add_argument("--stages", help=f"DISSM: stages to run, in order, to stop early for QA (default: all the model "
                   f"has: {STAGES_HELP}; with --start-from the last)")
    p.add_argument("--steps", type=number(int, (1, 1000)),
                   help="DISSM: agent steps per stage (default: the model's)")
    p.add_argument("--start-from", metavar="MODEL",
                   help="DISSM: place the mean shape by a DeepSSM model's prediction (e.g. hippocampus-deepssm) "
                   "instead of the agent's stages, then run only the model's last stage (its refinement): faster, "
                   "and as accurate on held-out hippocampi")
    add_outputs(p, {"--out-model": MODEL_OUTPUT, "--out-seg": "segmentation on the image grid (.nii.gz, .nrrd or "
                    ".seg.nrrd)", "--report": "JSON report: pose and loadings per stage, time",
                    "--out-scene": SCENE_OUTPUT + ": image, model, segmentation",
                    "--out-loadings": "DeepSSM: the shape's PCA loadings (whitened), Mahalanobis distance to the "
                    "training population and volume, one row (.csv, as describe writes)",
                    "--out-points": "DeepSSM: the corresponding points, LPS mm (.csv rows index,L,P,S, or a Slicer "
                    "point list .mrk.json)"})
    p.set_defaults(run=run_fit_image)

    p = sub.add_parser(
        "correspond", help="point-to-point correspondences of two cases refined with the same template model",
        description="Pairs each point of surface A with the point of surface B nearest in template coordinates "
        "(the TemplateCoordinates array that refine-mask --out-model writes with a template model): the same "
        "anatomical place on two patients. Writes a CSV table (indices, template distance, LPS mm of both).",
    )
    p.add_argument("a", help="surface A (.vtk/.vtp from refine-mask --out-model with a template model)")
    p.add_argument("b", help="surface B, refined with the same model")
    p.add_argument("--out", required=True, help="the pairs (.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=run_correspond)

    p = sub.add_parser(
        "refine-mask", help="CNN mask -> smooth, plausible surface and segmentation with a shape prior",
        description="Fit a shape model robustly to a mask (largest part; leaks, holes and cut-off parts barely "
        "pull), then fuse it with the mask: the mask where both agree, the prior where they do not. A DALS model "
        "fits a mesh to the mask boundary's distance map; an implicit (sdf/dissm) model fits pose and PCA "
        "loadings to its signed distance map; a template model aligns the mask to its template (CPD), fits a "
        "case's codes to the best-matching share of the boundary and maps each surface point to the template.",
    )
    p.add_argument("input", help="label image (.nii.gz, .nrrd, .seg.nrrd, .mha)")
    p.add_argument("--model", required=True, help="shipped model name (liver, hippocampus) or a .pt bundle")
    _labels_or_segment(p)
    p.add_argument("--all-parts", action="store_true", help="fit all disconnected parts together (default: the largest)")
    p.add_argument("--image", help="the image the mask was made from: a DISSM model (hippocampus) also refines its "
                   "fit on it, so the shape follows the image where the mask is wrong; and the scene's volume")
    add_settings(p, RefineSettings)
    add_settings(p, FitSettings, RefineSettings().dals, only=("lambda_dir", "seed"))
    add_settings(p, TemplateMaskSettings, RefineSettings().template, only=("keep_share",))
    p.add_argument("--global-only", action="store_true", help="DALS: one global latent, no per-vertex latents")
    add_outputs(p, {"--out-model": "refined surface, LPS mm, with the point array DistanceToMaskBoundary_mm "
                    "(.vtk/.vtp keep it; .stl/.ply/.obj)", "--out-seg": "segmentation on the mask's grid (.nii.gz, "
                    ".nrrd or .seg.nrrd)", "--report": "JSON report: pose, disagreement with the mask, volumes, time, "
                    "warnings", "--out-scene": SCENE_OUTPUT + ": image (--image), model, segmentation",
                    "--out-labels": "template models trained with sub-regions: the sub-regions carried from the "
                    "template onto the segmentation (.nii.gz, .nrrd or .seg.nrrd)"})
    p.set_defaults(run=run_refine_mask)

    p = sub.add_parser(
        "demo", help="fit the shipped liver model to the bundled sample contours",
        description="Three orthogonal contours of an AMOS liver (the shipped sample) -> whole liver: writes a "
        "model (.vtk, LPS), a segmentation (.seg.nrrd), a report and, with slicer-core, a scene (.mrb).",
    )
    p.add_argument("--out", default="shapeprior-demo", help="output folder (default: ./shapeprior-demo)")
    p.add_argument("--model", default="liver")
    p.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs")
    p.set_defaults(run=run_demo)


def _read_curves(args: argparse.Namespace) -> tuple[list, object]:
    """(curves LPS mm, the painted labelmap or None): every .mrk.json's closed curves, or one labelmap's."""
    from ..io.markups import read_closed_curves

    markups = [p for p in args.inputs if p.lower().endswith(".mrk.json")]
    if not markups:
        if len(args.inputs) > 1:
            raise InputError(args.inputs[1], "one painted labelmap at a time (several inputs must all be .mrk.json)")
        from ..io.labelmaps import painted_slice_contours

        mask = _read_mask(args, args.inputs[0])
        return painted_slice_contours(mask, args.inputs[0]), mask
    if len(markups) < len(args.inputs):
        other = next(p for p in args.inputs if p not in markups)
        raise InputError(other, "not a markups file: give curve files (.mrk.json) or one painted labelmap")
    if args.label or args.segment:
        raise InputError(None, "--label and --segment choose from a labelmap input, not from curve files")
    return [curve for path in markups for curve in read_closed_curves(path)], None


def _grid(args: argparse.Namespace, inputs_grid=None):
    """The grid --out-seg is written on: --reference's, else the input labelmap's; checked before the fit."""
    from ..io import read_image

    grid = read_image(args.reference) if args.reference else inputs_grid
    if args.out_seg and grid is None:
        raise InputError(args.out_seg, "needs a grid: give --reference IMAGE")
    return grid


def _check_annotation(args: argparse.Namespace, points, source: str) -> None:
    """The model is a DALS bundle and the annotation's points (LPS mm) are of its organ's size: read from
    the bundle's header, so these errors come before torch is imported."""
    from ..fit.size import check_extent
    from ..models.bundle import read_header

    check_extent(read_header(args.model, "dals"), points, source)


def run_fit_contours(args: argparse.Namespace) -> int:
    import numpy as np

    from ..fit.contours import check_curves
    from ..io.frames import image_bounds

    check_outputs(args)
    source = ", ".join(check_input(p) for p in args.inputs)
    curves, painted = _read_curves(args)
    check_curves(curves, source)
    _check_annotation(args, np.concatenate(curves), source)
    reference = _grid(args, painted)
    warm_start = check_input(args.warm_start) if args.warm_start else None
    if warm_start:  # its errors before the fit starts
        from ..fit.warm_start import read_warm_start
        from ..models.bundle import read_header

        settings = settings_from(args, FitSettings)
        read_warm_start(warm_start, read_header(args.model, "dals"), curves, settings.level, settings.vertex_modes)
    bounds = image_bounds(reference) if args.reference else None
    from ..fit.run import fit_curves
    from .output import fit_and_write

    return fit_and_write(args, lambda progress: fit_curves(curves, args.model, settings_from(args, FitSettings),
                                                           source, progress=progress, warm_start=warm_start,
                                                           suggest=args.suggest, bounds=bounds),
                         reference, args.reference)


def run_fit_points(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io.points import check_fit_points, read_point_cloud

    check_outputs(args)
    inputs = [check_input(p) for p in args.inputs]
    source = ", ".join(inputs)
    points = check_fit_points(np.concatenate([read_point_cloud(p) for p in inputs]), source)
    _check_annotation(args, points, source)
    reference = _grid(args)
    from ..fit.run import fit_points
    from .output import fit_and_write

    return fit_and_write(args, lambda progress: fit_points(points, args.model, settings_from(args, FitSettings),
                                                           source, progress=progress),
                         reference, args.reference)


def _stages(args: argparse.Namespace) -> list[str]:
    """``--stages`` of a DISSM model: a leading part of its stages (its pose agent's, then ``refine`` if it
    has a refiner), all by default; from ``--start-from``'s prediction a consecutive part, the last stage by
    default. From the bundles' headers, before torch is imported."""
    from ..models.bundle import has_refiner, read_header

    header = read_header(args.model, "dissm")
    if args.start_from:
        read_header(args.start_from, "deepssm")
    available = list(header.metadata["agent"]["stages"])
    available += ["refine"] if has_refiner(header) else []
    default = available[-1:] if args.start_from else available
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else default
    begin = available.index(stages[0]) if stages and stages[0] in available else -1
    if begin < 0 or (begin and not args.start_from) or stages != available[begin: begin + len(stages)]:
        part = "a consecutive" if args.start_from else "a leading"
        raise InputError(None, f"--stages must be {part} part of {','.join(available)}, got {args.stages!r}")
    if args.steps and stages == ["refine"]:
        raise InputError(None, "--steps: only the pose agent's stages take steps, and only refine runs")
    return stages


def run_fit_image(args: argparse.Namespace) -> int:
    from ..io import read_image
    from ..models.bundle import read_header

    check_outputs(args)
    check_input(args.input)
    kind = read_header(args.model).kind
    if kind not in ("dissm", "deepssm"):
        raise InputError(args.model, f"a {kind!r} model: fit-image needs a dissm or deepssm model")
    flags = (given(args, "out_loadings", "out_points") if kind == "dissm"
             else given(args, "stages", "steps", "start_from"))
    if flags:
        raise InputError(None, f"{' and '.join(flags)}: not for {kind} models ({args.model} is one)")
    stages = _stages(args) if kind == "dissm" else None
    image = read_image(args.input)
    from ..fit.deepssm_fit import fit_image_by_kind
    from .output import fit_and_write

    return fit_and_write(args, lambda progress: fit_image_by_kind(image, args.model, stages, args.input, progress,
                                                                  steps=args.steps, start_from=args.start_from),
                         volume_path=args.input)


def run_correspond(args: argparse.Namespace) -> int:
    import numpy as np

    from ..fit.correspondence import corresponding_points
    from ..fit.refine_mask import TEMPLATE_ARRAY
    from ..io import atomic_output
    from ..io.meshes import read_point_array

    if not args.out.lower().endswith(".csv"):
        raise InputError(args.out, "the pairs are a table: end it in .csv")
    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(args.out, "exists; pass --overwrite to replace it")
    what = "written by refine-mask --out-model with a template model"
    points_a, template_a = read_point_array(args.a, TEMPLATE_ARRAY, what)
    points_b, template_b = read_point_array(args.b, TEMPLATE_ARRAY, what)
    index, distance = corresponding_points(template_a, template_b)
    rows = np.column_stack([np.arange(len(index)), index, distance, points_a, points_b[index]])
    with atomic_output(args.out) as temporary:
        np.savetxt(temporary, rows, delimiter=",", fmt=["%d", "%d", "%.5f"] + ["%.3f"] * 6, comments="",
                   header="a_index,b_index,template_distance,a_L,a_P,a_S,b_L,b_P,b_S")
    print(f"{len(index)} points of {args.a} paired with {args.b} through the template: median distance "
          f"{np.median(distance):.4f} template units (the model's unit sphere), 95th percentile "
          f"{np.percentile(distance, 95):.4f}")
    return 0


def run_refine_mask(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..io import read_image
    from ..models.bundle import has_refiner, read_header

    check_outputs(args)
    check_input(args.input)
    header = read_header(args.model)
    kind = header.kind
    for only_kind, name, flags in (("dals", "DALS", given(args, "lambda_dir", "global_only")),
                                   ("template", "template", given(args, "keep_share", "out_labels"))):
        if kind != only_kind and flags:
            verb = "applies" if len(flags) == 1 else "apply"
            raise InputError(None, f"{' and '.join(flags)} only {verb} to {name} models; "
                             f"{args.model} is a {kind!r} model")
    image = read_image(args.image) if args.image else None  # a bad image fails before the fit
    mask = _read_mask(args, args.input)
    from ..fit.refine_mask import refine_mask
    from .output import fit_and_write

    base = RefineSettings()
    dals = settings_from(args, FitSettings, base.dals)
    dals = replace(dals, vertex_steps=0) if args.global_only else dals
    settings = replace(settings_from(args, RefineSettings, base), dals=dals,
                       implicit=replace(base.implicit, seed=dals.seed),
                       template=replace(settings_from(args, TemplateMaskSettings, base.template), seed=dals.seed))
    subregions = True if args.out_labels else None  # with a template model's sub-regions, in the report and scene
    fit_image = image if has_refiner(header) else None  # other models only show it in the scene
    return fit_and_write(args, lambda progress: refine_mask(mask, args.model, args.input, args.all_parts, settings,
                                                            progress=progress, subregions=subregions,
                                                            image=fit_image, image_source=args.image),
                         volume_path=args.image)


def run_demo(args: argparse.Namespace) -> int:
    from .. import resources_dir
    from . import build_parser

    sample = resources_dir() / "SampleData"
    out = args.out
    argv = [
        "fit-contours", str(sample / "liver-contours.mrk.json"), "--model", args.model,
        "--reference", str(sample / "liver-painted.nii.gz"),
        "--out-model", os.path.join(out, "liver.vtk"), "--out-seg", os.path.join(out, "liver.seg.nrrd"),
        "--report", os.path.join(out, "report.json"),
    ]
    if has_slicer_core():
        argv += ["--out-scene", os.path.join(out, "liver.mrb")]
    if args.overwrite:
        argv.append("--overwrite")
    sub_args = build_parser().parse_args((["-q"] if args.quiet else []) + argv)
    code = sub_args.run(sub_args)
    print(f"demo outputs in {out}/ (open liver.mrb in 3D Slicer, or load liver.vtk and liver.seg.nrrd)")
    return code
