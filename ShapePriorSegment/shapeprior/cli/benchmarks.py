"""``benchmark contours|image|refine``: methods against baselines on held-out data, in one process;
``benchmark hostile``: bad inputs through the command line; ``benchmark web``: the browser face.

``--markdown FILE`` keeps a document current: the part between ``<!-- begin shapeprior benchmark KIND -->``
and ``<!-- end shapeprior benchmark KIND -->`` is replaced by the new table (the whole file is written
when it has no such markers).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from ..settings import FitSettings
from .options import value_type, add_settings, number, settings_from

COUNT = number(int, (0, 100_000))
MESH_FRAME_HELP = "frame of the surface files (OBJ has none; the shared liver meshes are RAS; default LPS)"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="measure methods against baselines on held-out data")
    kinds = p.add_subparsers(dest="kind", required=True)
    c = kinds.add_parser(
        "contours", help="three orthogonal contours -> whole organ: DALS vs RBF, hull, fill-between-slices",
        description="Cuts contours from held-out true surfaces and runs every method on them in this process.",
    )
    c.add_argument("--data", required=True, help="folder of true surfaces (e.g. the liver meshes)")
    c.add_argument("--mesh-frame", choices=("LPS", "RAS"), default="LPS", help=MESH_FRAME_HELP)
    c.add_argument("--include", action="append", help="file-name patterns of held-out cases (default LiTS-*, 3Dircadb-*)")
    c.add_argument("--limit", type=COUNT, default=20, help="number of cases, spread over the sorted list (0: all)")
    c.add_argument("--planes", default="3,4,5,6,7,8,9", help="plane counts for the F@2%% curve")
    c.add_argument("--model", default="liver", help="shipped model name or a .pt bundle (default: liver)")
    add_settings(c, FitSettings)
    c.set_defaults(run=_benchmark(measure_contours))
    i = kinds.add_parser(
        "image", help="image -> organ: DISSM per stage vs a 3D U-Net on held-out images",
        description="Fits the DISSM model to the held-out images of its dataset split and scores every stage "
        "(Dice, HD95, ASSD, time) beside a U-Net run in the same process.",
    )
    i.add_argument("--data", required=True, help="the dataset folder the model was trained on")
    i.add_argument("--model", default="hippocampus", help="dissm model (default: hippocampus)")
    i.add_argument("--unet", help="U-Net bundle from `shapeprior train-unet` (the baseline)")
    i.add_argument("--deepssm", help="deepssm model (e.g. hippocampus-deepssm): also DeepSSM, the PCA projection of "
                   "the true correspondences, the mean shape, U-Net -> CPD -> projection (with --unet) and DISSM "
                   "started from DeepSSM")
    i.add_argument("--limit", type=COUNT, default=0, help="first N held-out cases (0: all)")
    i.set_defaults(run=_benchmark(measure_image))
    r = kinds.add_parser(
        "refine", help="mask refinement: CNN masks and typical CNN failures before and after, and a CT example",
        description="Refines the U-Net's masks of held-out hippocampus images and held-out true masks with thick "
        "slices, a leak, a hole or a cut-off part (hippocampus and livers), scoring each against the truth before "
        "and after; then the example CT's CNN liver mask, drawn over the scan with --figure.",
    )
    r.add_argument("--data", help="the hippocampus dataset folder (prepared with --images) of the hippocampus model")
    r.add_argument("--unet", help="U-Net bundle from `shapeprior train-unet` (its masks are refined; one trained with "
                   "--separate-labels is also the baseline of the label transfer)")
    r.add_argument("--weak-unet", help="a U-Net trained on a few cases (`train-unet --train-cases 20`)")
    r.add_argument("--hippocampus-model", action="append", type=_named, metavar="NAME=MODEL",
                   help="a refinement model of the hippocampus inputs, shown as NAME (repeatable; default "
                   "DISSM=hippocampus)")
    r.add_argument("--liver-model", action="append", type=_named, metavar="NAME=MODEL",
                   help="a refinement model of the liver inputs (repeatable; default DALS=liver)")
    r.add_argument("--ablation", action="append", type=_named, metavar="NAME=MODEL", default=[],
                   help="a hippocampus template model of the ablations, run on the weak U-Net's masks (repeatable)")
    r.add_argument("--with-image", nargs="?", const="also", default="", choices=("also", "only"),
                   help="DISSM models also refine the hippocampus masks on their images (refine-mask --image), shown "
                   "as 'NAME + image'; 'only': just those rows, to --merge with an earlier run of the same masks")
    r.add_argument("--inputs", default="", help="run only these inputs, comma-separated (U-Net, weak U-Net, thick "
                   "slices i, thick slices j, thick slices k, leak, hole, cut-off; default all)")
    r.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="summarise earlier runs' --out files together instead of running (repeatable; e.g. runs "
                   "of different --inputs side by side)")
    r.add_argument("--keep-shares", type=value_type("list[float]", (0.01, 1.0), None), default=[],
                   help="kept shares tried with the last hippocampus template model "
                   "in the ablations, comma-separated (e.g. 1,0.5,0.25)")
    r.add_argument("--liver-meshes", help="folder of liver surfaces (held-out LiTS-*, 3Dircadb-* are voxelised at 2 mm)")
    r.add_argument("--mesh-frame", choices=("LPS", "RAS"), default="LPS", help=MESH_FRAME_HELP)
    r.add_argument("--ct-example", help="TotalSegmentator example folder (example_ct.nii.gz, example_seg.nii.gz)")
    r.add_argument("--figure", help="PNG of the CT example's refined liver over the scan")
    r.add_argument("--limit", type=COUNT, default=0, help="first N held-out hippocampus cases (0: all)")
    r.add_argument("--liver-limit", type=COUNT, default=8, help="held-out livers, spread over the sorted list")
    r.set_defaults(run=_benchmark(measure_refine))
    loop = kinds.add_parser(
        "loop", help="a simulated clinician: one contour at a time at the suggested, a fixed or the best plane",
        description="On held-out livers: three central contours, then up to --max-contours, one more at a time "
        "at the fit's suggested plane, at the contour benchmark's fixed planes, or (oracles) at the best "
        "candidate plane by the true surface for DALS (fourth contour) and RBF interpolation; refits start from "
        "the previous fit. Reports F@2%%, ASSD, HD95 per step, NoC@90, refit times and the uncertainty's "
        "calibration.",
    )
    loop.add_argument("--data", required=True, help="folder of liver surfaces (e.g. ../shared/data/liver-meshes)")
    loop.add_argument("--include", action="append", help="file-name patterns of held-out cases "
                      "(default LiTS-*, 3Dircadb-*)")
    loop.add_argument("--model", default="liver", help="DALS model (default: liver)")
    loop.add_argument("--limit", type=COUNT, default=16, help="the contour benchmark's cases (spread over the list)")
    loop.add_argument("--stride", type=COUNT, default=2, help="every N-th of them")
    loop.add_argument("--max-contours", type=COUNT, default=8, help="contours in all at the end")
    loop.add_argument("--figure", help="plot of F@2%% against contours (PNG)")
    loop.add_argument("--mesh-frame", choices=("LPS", "RAS"), default="LPS", help=MESH_FRAME_HELP)
    loop.set_defaults(run=_benchmark(measure_loop))
    h = kinds.add_parser(
        "hostile", help="bad inputs and options through the command line: clear errors, tracebacks, memory, time",
        description="Writes the hostile set (missing, truncated and corrupt files, absurd coordinates, crossing "
        "curves, 4D images, crafted models, bad options and outputs, and valid float masks) to a temporary folder "
        "and runs each case as its own `shapeprior` process under a 3 GB address-space cap.",
    )
    h.set_defaults(run=_benchmark(measure_hostile))
    w = kinds.add_parser(
        "web", help="the browser face as a reader meets it: page ready time, fit latency, server memory",
        description="Starts `shapeprior serve` as its own process and drives the page in headless Chromium: "
        "the time until the page shows its views, three contours clicked into the sample CT, Fit, a refit at the "
        "suggested plane, and the server's peak memory (needs the [web] extra and Chromium).",
    )
    w.add_argument("--runs", type=number(int, (1, 100)), default=3, help="sessions, each a new server (default: 3)")
    w.set_defaults(run=_benchmark(measure_web))
    for parser in (c, i, r, loop, h, w):
        parser.add_argument("--out", help="write per-case results here (JSON)")
        parser.add_argument("--markdown", help="write the summary table here, or into its markers in a document "
                            "(e.g. docs/benchmarks.md)")


def measure_contours(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.contours import run_benchmark, summarise

    try:
        planes = tuple(int(n) for n in args.planes.split(","))
    except ValueError:
        raise InputError(None, f"--planes must be integers separated by commas, got {args.planes!r}") from None
    result = run_benchmark(Path(args.data), args.include or ["LiTS-*", "3Dircadb-*"], args.model,
                           settings_from(args, FitSettings), limit=args.limit or None, planes_curve=planes,
                           progress=not args.quiet, mesh_frame=args.mesh_frame)
    return result, summarise(result)


def measure_loop(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.loop import plot, run_loop, summarise

    result = run_loop(Path(args.data), args.include or ["LiTS-*", "3Dircadb-*"], args.model, FitSettings(),
                      limit=args.limit, stride=max(args.stride, 1), max_contours=max(args.max_contours, 4),
                      progress=not args.quiet, mesh_frame=args.mesh_frame)
    if args.figure:
        plot(result, args.figure)
    return result, summarise(result)


def _named(text: str) -> tuple[str, str]:
    """``NAME=MODEL`` -> (NAME, MODEL)."""
    name, sep, model = text.partition("=")
    if not sep or not name.strip() or not model.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL, e.g. ReShapeIT=hippocampus-template.pt, got {text!r}")
    return name.strip(), model.strip()


def measure_image(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.image import run_benchmark, summarise

    result = run_benchmark(args.data, args.model, args.unet, limit=args.limit or None, progress=not args.quiet,
                           deepssm=args.deepssm)
    return result, summarise(result)


def measure_refine(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.mask_failures import FAILURES
    from ..bench.refine import Methods, ct_example, merge_results, run_benchmark, summarise

    if args.merge:
        result = merge_results(args.merge)
        return result, summarise(result) + (_ct_line(result["ct_example"]) if "ct_example" in result else "")
    if not (args.data or args.liver_meshes or args.ct_example):
        raise InputError(None, "nothing to benchmark: give --data, --liver-meshes and/or --ct-example")
    inputs = {v.strip() for v in args.inputs.split(",") if v.strip()} or None
    unknown = (inputs or set()) - {"U-Net", "weak U-Net", *FAILURES}
    if unknown:
        raise InputError(None, f"--inputs: unknown input(s) {', '.join(sorted(unknown))}")
    models = Methods(**{k: dict(v) for k, v in (("hippocampus", args.hippocampus_model),
                                                  ("liver", args.liver_model)) if v},
                     ablations=dict(args.ablation), keep_shares=tuple(args.keep_shares), with_image=args.with_image)
    result = run_benchmark(args.data, {"U-Net": args.unet, "weak U-Net": args.weak_unet}, args.liver_meshes,
                           models, inputs, limit=args.limit or None, liver_limit=args.liver_limit,
                           progress=not args.quiet, mesh_frame=args.mesh_frame)
    table = summarise(result)
    if args.ct_example:
        result["ct_example"] = ct_example(args.ct_example, args.figure)
        table += _ct_line(result["ct_example"])
    return result, table


def _ct_line(ct: dict) -> str:
    distance = ct["distance_to_mask_boundary_mm"]
    return (f"\n\nCT example (TotalSegmentator liver mask, 3 mm, {len(ct['border_faces'])} image faces "
            f"touched): refined in {ct['seconds']:.1f} s, Dice with the CNN mask {ct['dice_with_mask']:.3f}, "
            f"{ct['added_ml']:.0f} ml added, {ct['removed_ml']:.0f} ml removed; "
            f"{100 * distance['disagreeing_fraction']:.0f}% of the surface inside the scan is over "
            f"{distance['disagreeing_threshold_mm']:.0f} mm from the mask.")


def measure_hostile(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.hostile import run_benchmark, summarise

    result = run_benchmark(progress=not args.quiet)
    return result, summarise(result)


def measure_web(args: argparse.Namespace) -> tuple[dict, str]:
    from ..bench.web import run_benchmark, summarise

    result = run_benchmark(args.runs, progress=not args.quiet)
    return result, summarise(result)


def replace_marked(document: str, kind: str, table: str) -> str | None:
    """``document`` with its ``kind`` benchmark's marked part replaced by ``table``; None without markers."""
    begin, end = f"<!-- begin shapeprior benchmark {kind} -->", f"<!-- end shapeprior benchmark {kind} -->"
    if begin not in document or end not in document.split(begin, 1)[1]:
        return None
    head, rest = document.split(begin, 1)
    return f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"


def _document(args: argparse.Namespace) -> str | None:
    """The --markdown document's text when it exists; checked before the benchmark runs, so a
    document without this benchmark's markers is refused at once instead of overwritten."""
    path = Path(args.markdown) if args.markdown else None
    if path is None or not path.is_file():
        return None
    document = path.read_text()
    if replace_marked(document, args.kind, "") is None:
        raise InputError(path, f"has no <!-- begin/end shapeprior benchmark {args.kind} --> markers; give a new "
                         "file or add them")
    return document


def _benchmark(measure: Callable[[argparse.Namespace], tuple[dict, str]]) -> Callable[[argparse.Namespace], int]:
    """The command: check --markdown, measure, then write the JSON, the document and the table."""

    def run(args: argparse.Namespace) -> int:
        from ..io import atomic_output, write_json

        document = _document(args)
        result, table = measure(args)
        if args.out:
            write_json(result, args.out)
        if args.markdown:
            with atomic_output(args.markdown) as tmp:
                tmp.write_text(replace_marked(document, args.kind, table) if document is not None else table + "\n")
        print(table)
        return 0

    return run
