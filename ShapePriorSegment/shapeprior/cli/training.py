"""``prepare`` and the ``train-*`` commands: options from the settings dataclasses, resumable runs."""

from __future__ import annotations

import argparse
import importlib
import time

from ..settings import PrepareSettings
from .options import add_settings, command_line, settings_from

DEVICE_HELP = "cpu or cuda (default: cuda when available)"
BUNDLE_OUT = "model bundle to write (.pt); its checkpoint is OUT.ckpt"
# command -> (help, description, positional arguments, settings class, trainer "module:function")
TRAINERS = {
    "train-dals": (
        "train a DALS mesh decoder on a prepared dataset",
        "Auto-decoder training of a DALS decoder (resumable: re-run the same command).",
        {"dataset": "folder made by `shapeprior prepare`", "out": BUNDLE_OUT},
        "DALSTrainSettings", "dals:train_dals",
    ),
    "train-sdf": (
        "train a DeepSDF decoder and its PCA shape space on a prepared dataset",
        "Auto-decoder training of an implicit (signed-distance) decoder on the SDF samples of a prepared dataset, "
        "then PCA of the latents (resumable: re-run the same command).",
        {"dataset": "folder made by `shapeprior prepare` (with SDF samples)", "out": BUNDLE_OUT},
        "SDFTrainSettings", "sdf:train_sdf",
    ),
    "train-pose": (
        "train the DISSM pose agent of an implicit shape model on its training images",
        "Train the image -> pose -> shape agent (translation, scale, rotation, shape stages) on the training "
        "images of an SDF model's dataset; writes a complete image-fitting (dissm) model. Resumable.",
        {"sdf_model": "model from `shapeprior train-sdf` (.pt)",
         "dataset": "the dataset folder it was trained on (prepared with --images)", "out": BUNDLE_OUT},
        "PoseTrainSettings", "pose:train_pose",
    ),
    "train-refine": (
        "add DISSM's narrow-band level-set refinement to an image-fitting model",
        "Fit the model's agent to its training images and train a small 3D U-Net that corrects the fitted signed "
        "distance map within a narrow band; writes the model with the refinement stage. Resumable.",
        {"model": "model from `shapeprior train-pose` (.pt)", "dataset": "the dataset folder it was trained on",
         "out": BUNDLE_OUT},
        "RefineTrainSettings", "refine:train_refiner",
    ),
    "train-unet": (
        "train the plain 3D U-Net baseline on a prepared dataset's images",
        "Train a MONAI 3D U-Net on the training split of a dataset prepared with --images (the baseline of "
        "`benchmark image`; its masks are also refined in `benchmark refine`). Resumable.",
        {"dataset": "folder made by `shapeprior prepare --images`", "out": BUNDLE_OUT},
        "UNetTrainSettings", "unet:train_unet",
    ),
    "train-template": (
        "train an implicit template with a deformation field (ISMM / ReShapeIT) on a prepared dataset",
        "Auto-decoder training of a template signed-distance field shared by all shapes and a hypernetwork-made "
        "deformation field per shape (two codes each), on the surfaces and SDF samples of a prepared dataset; "
        "the model gives dense correspondences through the template. Resumable: re-run the same command.",
        {"dataset": "folder made by `shapeprior prepare` (with SDF samples)", "out": BUNDLE_OUT},
        "TemplateTrainSettings", "template:train_template",
    ),
    "train-pdm": (
        "build a point distribution model (corresponding points + PCA) from a prepared dataset with images",
        "Put the training shapes in correspondence (non-rigid CPD from the reference shape, then from the mean), "
        "register each image rigidly onto the reference crop, carry the points into its frame and keep the "
        "principal modes: the shape model of DeepSSM and of shape studies.",
        {"dataset": "folder made by `shapeprior prepare --images`", "out": "model bundle to write (.pt)"},
        "PDMTrainSettings", "pdm:train_pdm",
    ),
    "train-deepssm": (
        "train DeepSSM: an image -> the loadings of a point distribution model, in one forward pass",
        "Register the shape model's training images onto its reference crop, add images of new shapes (kernel "
        "density estimate of the loadings, thin-plate-spline warps of the nearest training image) and train the "
        "paper's 3D CNN with a frozen PCA layer on the corresponding points. Resumable.",
        {"pdm": "model from `shapeprior train-pdm` (.pt)", "dataset": "the dataset folder it was built on",
         "out": BUNDLE_OUT},
        "DeepSSMTrainSettings", "deepssm:train_deepssm",
    ),
}


def add(sub: argparse._SubParsersAction) -> None:
    from ..train import settings

    p = sub.add_parser(
        "prepare", help="masks or meshes -> aligned, unit-sphere shapes with SDF samples",
        description="Turn a folder of binary masks (NIfTI, NRRD, MHA) or surface meshes (OBJ, STL, PLY, VTK, VTP) "
        "into a dataset folder: clean surfaces, CPD alignment to an anchor, unit-sphere normalisation, SDF samples. "
        "Re-running on the same output folder resumes.",
    )
    p.add_argument("src", help="folder of masks or meshes")
    p.add_argument("out", help="dataset folder to create or resume")
    p.add_argument("--images", help="folder of images matching the masks by name (checked to share their grid)")
    add_settings(p, PrepareSettings)
    p.set_defaults(run=run_prepare, resumable=True)
    for command, (text, description, positionals, settings_class, _) in TRAINERS.items():
        p = sub.add_parser(command, help=text, description=description)
        for name, help_text in positionals.items():
            p.add_argument(name, help=help_text)
        add_settings(p, getattr(settings, settings_class))
        p.add_argument("--device", help=DEVICE_HELP)
        p.set_defaults(run=run_training, resumable=True)


def run_prepare(args: argparse.Namespace) -> int:
    from ..prep.dataset import prepare_dataset

    began = time.perf_counter()
    manifest = prepare_dataset(args.src, args.out, settings_from(args, PrepareSettings), images=args.images,
                               progress=not args.quiet)
    repaired = sum(1 for s in manifest["shapes"].values() if s.get("repair", {}).get("method", "none") != "none")
    print(f"{len(manifest['shapes'])} shapes in {args.out} (anchor {manifest['anchor']}, "
          f"{repaired} repaired) in {time.perf_counter() - began:.1f} s")
    return 0


def run_training(args: argparse.Namespace) -> int:
    from ..train import settings

    _, _, positionals, settings_class, trainer = TRAINERS[args.command]
    module, function = trainer.split(":")
    train = getattr(importlib.import_module(f"..train.{module}", __package__), function)
    config = settings_from(args, getattr(settings, settings_class))
    path = train(*(getattr(args, name) for name in positionals), config, command=command_line(),
                 progress=not args.quiet, device=args.device)
    print(f"wrote {path}")
    return 0
