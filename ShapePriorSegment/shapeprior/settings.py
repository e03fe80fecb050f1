"""Fit and preparation options as plain dataclasses: no torch, so the command line builds its
options from them (``help`` and ``range`` in each field's metadata) and starts in well under a second."""

from __future__ import annotations

from dataclasses import dataclass, field


def option(default, help: str, range: tuple | None = None, **extra):
    """A settings field shown on the command line: ``help`` text and an inclusive ``range``."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help, "range": range, **extra})
    return field(default=default, metadata={"help": help, "range": range, **extra})


@dataclass
class FitSettings:
    """DALS fit options; the defaults were chosen on held-out livers outside the benchmark subset."""

    # Level 7 would be 164k vertices: beyond the decoder's useful detail and gigabytes of memory.
    level: int = option(4, "icosphere level of the fitted surface", (1, 6))
    global_steps: int = option(80, "steps of the single-latent stage", (1, 5000))
    vertex_steps: int = option(40, "steps of the per-vertex-latent stage (0: global latent only)", (0, 5000))
    refit_steps: tuple[int, int] = (40, 30)  # the two stages' steps when refitting from an earlier fit
    global_level: int = 3  # the single-latent stage shapes the organ coarsely: a 4x smaller mesh is enough
    vertex_level: int = 3  # icosphere on which the per-vertex stage's loss is measured (its latents live on `level`)
    lr: float = 1e-2
    vertex_lr: float = 3e-3
    lambda_reg: float = option(0.01, "triangle-quality weight", (0.0, 1e3))
    lambda_dir: float = option(1.0, "smoothness weight of per-vertex latents (prior strength)", (0.0, 1e3))
    lambda_normal: float = 0.02
    lambda_latent: float = option(1e-3, "pull of the global latent towards the mean shape", (0.0, 1e3))
    laplacian_power: int = 2
    vertex_modes: int = 16
    vertex_pose: bool = False  # the pose is settled by the global stage; moving it later drifts
    samples: int = 400
    contour_blend_mm: float = option(10.0, "contours: width of the blend onto the curves' interpolant near the "
                                     "planes (0: off)", (0.0, 100.0), flag="blend-mm")
    seed: int = option(0, "random seed", (0, 2**31 - 1))
    threads: int = 1  # small matrices; several threads on a busy CPU slowed fits up to 8x here


@dataclass
class UncertaintySettings:
    """The surface-uncertainty model (fit/uncertainty.py); chosen on tuning livers (docs/experiments.md)."""

    noise_mm: float = 1.0  # how closely a drawn curve pins the surface
    smooth_fraction: float = 0.02  # smooth variation beyond the training shapes, per vertex, x organ size
    smooth_modes: int = 16
    calibration: float = 4.4  # scales the band so that 90% of the true surface is inside it


@dataclass
class ImplicitMaskSettings:
    """Robust fit of an implicit (sdf/dissm) model's pose and PCA loadings to a mask."""

    pose_steps: int = 40
    shape_steps: int = 80
    points: int = 1500  # SDF samples per step
    band_mm: float = 6.0  # residuals are clamped here (DeepSDF's delta): only the boundary's neighbourhood counts
    robust_mm: float = 2.0  # Cauchy scale: residuals well beyond it are treated as outliers
    lambda_shape: float = 0.02  # weight of ||loadings||^2 (the PCA prior)
    lambda_scale: float = 1.0  # keeps the anisotropic scale near isotropic
    lr: float = 0.03
    seed: int = 0


@dataclass
class TemplateMaskSettings:
    """The template interaction module (fit/mask_template.py): a template model fitted to a mask."""

    keep_share: float = option(0.25, "template models: share of the mask's surface points, best matching the "
                               "template by CPD, that keep their full weight (ISMM: 0.25)", (0.01, 1.0))
    outlier_weight: float = 0.1  # weight of the other points
    points: int = 800  # mask and template surface points (CPD costs N x M; 1500 took twice as long for the same fit)
    free_points: int = 512  # uniform points per step for the off-surface term
    steps: int = 200
    lr: float = 1e-2  # of the codes
    tune_hypernetwork: bool = False  # also fit the deformation's hypernetwork to the case (the reference code does)
    hyper_lr: float = 1e-4
    resolution: int = 64  # marching cubes of the fitted field
    seed: int = 0


@dataclass
class RefineSettings:
    """Mask refinement: a robust prior fit, then its fusion with the mask."""

    trust_voxels: float | None = option(
        None, "how far (in voxels) the surface follows the mask where the prior disagrees with it "
        "(0: the prior alone; default 1 for implicit models, 0.5 for a DISSM model refined on --image, 5 for "
        "DALS models)", (0.0, 100.0))
    smoothing_voxels: float = 0.5  # Gaussian sigma on the mask's distance map before the fusion
    robust_mm: float = 2.0  # Cauchy scale of the DALS route
    # A light pull of the global latent towards the mean keeps the fit a liver where the mask is wrong
    # (lambda_latent 0 / 1e-3 / 1e-2 tried on 3 held-out livers: 1e-3 lowered HD95 in three failure modes).
    # The per-vertex stage measures the mask's distances on the fitted surface itself (level 4): slightly
    # better than the level 3 contour fits use (8 benchmark livers, every failure: surface HD95 0-0.05 mm).
    dals: FitSettings = field(default_factory=lambda: FitSettings(global_steps=150, vertex_steps=80, lambda_dir=0.3,
                                                                  lambda_latent=1e-3, vertex_level=4))
    template: TemplateMaskSettings = field(default_factory=TemplateMaskSettings)
    implicit: ImplicitMaskSettings = field(default_factory=ImplicitMaskSettings)


@dataclass
class PrepareSettings:
    """Everything that changes the prepared data (stored in the manifest)."""

    labels: list[int] | None = option(None, "label value(s) to use, comma-separated labels are merged (e.g. 1,2)",
                                      (1, 2**31 - 1), flag="label")
    target_vertices: int = option(4000, "simplify surfaces to at most this many vertices", (100, 200_000))
    smoothing_mm: float = option(1.0, "Gaussian sigma applied to masks (mm)", (0.0, 20.0))
    interpolate_slices: bool = option(True, "interpolate between thick slices", flag="interpolate")
    repair_voxel_mm: float = 1.5
    align_points: int = 300
    sdf_samples: int = option(100_000, "SDF samples per shape (0: none)", (0, 10_000_000))
    anchor: str | None = option(None, "name of the shape to align to (default: the median-volume shape)")
    # The shared liver surfaces are in RAS (NIfTI world coordinates): fitted to LPS contours, a model
    # trained on them unconverted started half a turn off (mean distance 6.05 mm against 3.61 mm).
    mesh_frame: str = option("LPS", "frame of mesh inputs without one in the file (OBJ, STL, PLY, OFF)",
                             choices=("LPS", "RAS"))
    seed: int = option(0, "random seed", (0, 2**31 - 1))
