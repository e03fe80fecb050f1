"""``describe``: many images -> one table of shape descriptors (a shape study's input)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import InputError
from .options import check_input


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "describe", help="images -> a table of shape descriptors (PCA loadings, Mahalanobis distance, volume)",
        description="Predict each image's shape with a DeepSSM model and write one row per image: the whitened "
        "PCA loadings z1..zK (in training standard deviations), their Mahalanobis distance to the training "
        "population and the volume (ml). Every input is checked before the first prediction.",
    )
    p.add_argument("inputs", nargs="+", metavar="image", help="images (.nii.gz, .nrrd, .mha): crops like the model's")
    p.add_argument("--model", default="hippocampus-deepssm",
                   help="shipped DeepSSM model name or a .pt bundle (default: hippocampus-deepssm)")
    p.add_argument("--out", required=True, help="the table (.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=run_describe)


def run_describe(args: argparse.Namespace) -> int:
    from ..models.bundle import read_header

    if not args.out.lower().endswith(".csv"):
        raise InputError(args.out, "the descriptors are a table: end it in .csv")
    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(args.out, "exists; pass --overwrite to replace it")
    kind = read_header(args.model).kind
    if kind != "deepssm":
        raise InputError(args.model, f"a {kind!r} model: describe needs a deepssm model")
    for path in args.inputs:
        check_input(path)
    import numpy as np
    from tqdm import tqdm

    from ..fit.deepssm_fit import check_crop, predict
    from ..io import read_image
    from ..io.images import read_image_header
    from ..io.tables import write_shape_table
    from ..models.registry import as_loaded
    from ..prep.crops import intensity_warning
    from . import stop_if_interrupted

    bundle, model = as_loaded(args.model, "deepssm")
    for path in args.inputs:  # headers: most bad inputs late in a long list stop the command at once
        check_crop(read_image_header(path), model.reference, bundle.organ, path)
        stop_if_interrupted()
    loadings, volumes = [], []
    for path in tqdm(args.inputs, desc="describe", unit="image", disable=args.quiet, dynamic_ncols=True):
        image = read_image(path)
        warning = intensity_warning(model.metadata["intensity_spread_range"], image, path)
        if warning:
            tqdm.write(f"shapeprior: warning: {warning}", file=sys.stderr)
        z, points, _, _ = predict(model, image)
        loadings.append(z)
        volumes.append(model.pdm.mesh(points).volume / 1000)
        stop_if_interrupted()
    loadings = np.array(loadings)
    distances = model.pdm.mahalanobis(loadings)
    write_shape_table(args.out, list(args.inputs), loadings, distances, np.array(volumes))
    print(f"{len(args.inputs)} images described with {model.pdm.size} modes in {args.out}: Mahalanobis distance "
          f"median {np.median(distances):.2f} (max {distances.max():.2f}), volume median {np.median(volumes):.2f} ml")
    return 0
