"""Settings of the five training commands, importable without torch, numpy or MONAI.

The command line builds its options from these fields (``option``: ``help`` text, inclusive
``range``, list ``count`` in each field's metadata). A checkpoint records ``dataclasses.asdict``
of its settings and a re-run with other settings refuses it, so field names and default
types are part of the checkpoint format.
"""

from __future__ import annotations  # string annotations: the command line reads them as text

from dataclasses import dataclass

from ..settings import option

SEED_HELP = "seed of every random draw (a re-run with the same seed repeats the training)"
HOLDOUT_HELP = "hold out every n-th shape of the sorted names for benchmarks (0: none)"


@dataclass
class DALSTrainSettings:
    """Settings of ``shapeprior train-dals``."""

    include: list[str] = option(["*"], "shape-name pattern to train on (repeatable; default all)")
    organ: str = option("organ", "organ name stored in the model")
    latent_dim: int = option(128, "length of each shape's latent code")
    hidden: list[int] = option([256, 256, 128], "hidden widths, comma-separated")
    level: int = option(3, "icosphere level of the training template")
    steps: int = option(12000, "training steps")
    batch: int = option(8, "shapes per step")
    points: int = option(2048, "surface points per shape and step")
    lr: float = option(2e-3, "learning rate (halved when the Chamfer distance stops falling)")
    lambda_reg: float = option(1e-4, "triangle-quality loss weight")
    lambda_n: float = option(1e-3, "latent norm weight")
    lambda_normal: float = option(0.0, "normal-consistency (anti-fold) weight")
    augment: int = option(3, "smoothly deformed copies per shape")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class SDFTrainSettings:
    """Settings of ``shapeprior train-sdf``."""

    include: list[str] = option(["*"], "shape-name pattern to use (repeatable; default all)")
    holdout_every: int = option(5, HOLDOUT_HELP)
    organ: str = option("organ", "organ name stored in the model")
    latent_dim: int = option(64, "length of each shape's latent code")
    width: int = option(256, "width of the decoder's hidden layers")
    layers: int = option(6, "hidden layers of the decoder (the input is fed again half-way)")
    dropout: float = option(0.2, "dropout probability of the hidden layers", (0.0, 1.0))
    steps: int = option(4000, "training steps")
    batch: int = option(16, "shapes per step")
    samples: int = option(1024, "SDF samples per shape and step")
    lr: float = option(5e-4, "learning rate of the decoder (halved at each quarter of the steps)")
    latent_lr: float = option(1e-3, "learning rate of the latent codes (halved with the decoder's)")
    lambda_z: float = option(1e-4, "latent prior weight")
    pca_variance: float = option(0.9, "explained variance the PCA keeps", (0.0, 1.0))
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class PoseTrainSettings:
    """Settings of ``shapeprior train-pose``."""

    steps: list[int] = option([600, 400, 400, 600], "training steps per stage (translation, scale, rotation, shape), "
                                 "comma-separated", count=4)
    batch: int = option(8, "training images per step")
    points: int = option(2048, "image points per image and step where the SDF error is measured")
    lr: float = option(1e-3, "learning rate (cosine decay within each stage)")
    lambda_prior: float = option(0.01, "weight of the Gaussian prior on the shape stage's PCA loadings")
    lambda_scale: float = option(10.0, "weight of the penalty on scales beyond the agent's limits")
    # ``prep.crops.GridSpec.to_dict()`` of the agent's input grid: a dict keeps this module numpy-free.
    grid: dict = option({"size": [32, 44, 32], "spacing_mm": 1.5}, "agent input grid: voxels (i, j, k), mm per voxel")
    fit_steps: int = option(6, "agent steps per stage when fitting")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class RefineTrainSettings:
    """Settings of ``shapeprior train-refine``."""

    steps: int = option(3000, "training steps")
    batch: int = option(4, "fitted SDFs per step")
    lr: float = option(1e-3, "learning rate (cosine decay)")
    copies: int = option(3, "perturbed fits per training image")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class UNetTrainSettings:
    """Settings of ``shapeprior train-unet``."""

    include: list[str] = option(["*"], "shape-name pattern to use (repeatable; default all)")
    holdout_every: int = option(5, HOLDOUT_HELP)
    labels: list[int] | None = option(None, "mask labels of the organ, comma-separated (default: the dataset's)")
    separate_labels: bool = option(False, "one class per label instead of the merged organ (the baseline of "
                                   "transferred sub-regions)")
    train_cases: int = option(0, "train on the first N shapes of the training split only (0: all; a weak "
                              "baseline)", (0, 10**6))
    channels: list[int] = option([16, 32, 64, 128], "U-Net channels per level, comma-separated")
    steps: int = option(1500, "training steps")
    batch: int = option(4, "images per step")
    lr: float = option(1e-3, "learning rate (cosine decay)")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class TemplateTrainSettings:
    """Settings of ``shapeprior train-template`` (ISMM / ReShapeIT; sizes in the model card)."""

    include: list[str] = option(["*"], "shape-name pattern to use (repeatable; default all)")
    holdout_every: int = option(5, HOLDOUT_HELP)
    organ: str = option("organ", "organ name stored in the model")
    alpha_dim: int = option(32, "length of each shape's code fed to the deformation field with the point")
    beta_dim: int = option(32, "length of each shape's code from which the hypernetwork makes the deformation field")
    codes: str = option("both", "codes a shape has (ablations: alpha, beta, none)", choices=("both", "alpha", "beta", "none"))
    template_width: int = option(128, "width of the template field's hidden layers")
    template_layers: int = option(3, "hidden layers of the template field")
    deform_width: int = option(64, "width of the deformation field's hidden layers")
    deform_layers: int = option(3, "hidden layers of the deformation field")
    hyper_width: int = option(64, "width of the hypernetwork's hidden layers")
    valid_template: bool = option(True, "ReShapeIT's constraint: the template's own codes leave its surface in place")
    steps: int = option(3000, "training steps")
    batch: int = option(8, "shapes per step", (1, 4096))
    surface_points: int = option(256, "surface points (with normals) per shape and step", (1, 1_000_000))
    sdf_points: int = option(256, "points with a known signed distance per shape and step")
    free_points: int = option(128, "uniform points per shape and step (pushed off the zero level)")
    lr: float = option(1e-4, "learning rate of the networks (halved at each quarter of the steps)")
    code_lr: float = option(1e-3, "learning rate of the codes (halved with the networks')")
    template_every: int = option(100, "steps between re-extractions of the template surface (valid-template term)",
                                 (1, 1_000_000))
    subregions: str = option("", "sub-regions to carry onto the template from the labels of the source masks, "
                             "e.g. 1:anterior,2:posterior (empty: none)")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class PDMTrainSettings:
    """Settings of ``shapeprior train-pdm``."""

    include: list[str] = option(["*"], "shape-name pattern to use (repeatable; default all)")
    holdout_every: int = option(5, HOLDOUT_HELP)
    organ: str = option("organ", "organ name stored in the model")
    points: int = option(1024, "corresponding points per shape (vertices of the decimated template)", (64, 20000))
    rounds: int = option(2, "correspondence rounds: the first to the reference shape, each next one to the mean of "
                         "the last", (1, 10))
    variance: float = option(0.95, "explained variance the PCA keeps", (0.0, 1.0))
    workers: int = option(2, "processes that put shapes in correspondence", (1, 64))
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))


@dataclass
class DeepSSMTrainSettings:
    """Settings of ``shapeprior train-deepssm``."""

    channels: list[int] = option([12, 24, 48, 96, 192], "channels of the five convolutions, comma-separated", count=5)
    augment: int = option(1200, "new shapes sampled from a kernel density estimate of the loadings, each with "
                          "its image warped (thin-plate spline) from the nearest training image", (0, 100_000))
    validation_every: int = option(10, "keep every n-th training image out of training to validate (0: none)",
                                   (0, 10**6))
    steps: int = option(800, "training steps")
    batch: int = option(8, "images per step", (1, 4096))
    lr: float = option(1e-3, "learning rate (cosine decay)")
    seed: int = option(0, SEED_HELP, (0, 2**31 - 1))
