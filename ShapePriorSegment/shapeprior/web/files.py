"""The files a page may touch: paths confined to the data folder, size-limited uploads, images checked
before Slicer reads them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.atomic import atomic_output

# An organ spans a few centimetres at least: an image smaller than this on an axis cannot hold one.
MIN_EXTENT_MM = 20.0
# Single-file formats only: a detached header (.mhd, .nhdr, .hdr) could name any file on the server.
SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Header lines of NRRD and MetaImage that put the voxels in another file.
DETACHED = re.compile(rb"^[ \t]*(data ?file[ \t]*:|ElementDataFile[ \t]*=[ \t]*(?![ \t]|LOCAL\b))",
                      re.IGNORECASE | re.MULTILINE)
MAX_NAME = 120


def confined(data_dir: Path, text: str) -> Path:
    """The existing file ``text`` names (relative to ``data_dir``, or absolute) if it lies inside
    ``data_dir`` once links are resolved; InputError otherwise."""
    text = (text or "").strip()
    if not text or "\0" in text:
        raise InputError(None, "type a file name from the data folder")
    path = (data_dir / text).resolve()
    if not path.is_relative_to(data_dir):
        raise InputError(text, f"is outside the data folder {data_dir}; only files in it can be opened")
    if not path.is_file():
        raise InputError(text, f"no such file in the data folder {data_dir}")
    return path


def write_upload(upload: dict, folder: Path, max_bytes: int) -> Path:
    """Save a file the page sent (trame's file dict: ``name``, ``size``, ``content``) in ``folder``
    under its base name; InputError if it is larger than ``max_bytes`` or empty."""
    name = Path(str(upload.get("name") or "")).name
    if not name or name.startswith(".") or "\0" in name or len(name) > MAX_NAME:
        raise InputError(None, f"the upload needs a plain file name of at most {MAX_NAME} characters")
    size = int(upload.get("size") or 0)
    content = upload.get("content")
    if size > max_bytes or (content is not None and len(content) > max_bytes):
        raise InputError(name, f"is {size / 2**20:.0f} MB; uploads are limited to {max_bytes / 2**20:.0f} MB")
    if not content:
        raise InputError(name, "is empty")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(folder / name) as tmp:
        tmp.write_bytes(bytes(content))
    return folder / name


def check_image(path: Path, mask: bool = False) -> None:
    """A readable 3D scalar image (a mask: with a non-zero label) large enough to hold an organ and
    not of one value throughout; InputError saying what it is otherwise."""
    from ..io.images import read_image

    if not path.name.lower().endswith(SUFFIXES):
        raise InputError(path.name, f"is not a single-file image; give {', '.join(SUFFIXES)}")
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as file:
            header = file.read(65536).split(b"\n\n", 1)[0]  # NRRD's header ends at a blank line
        if DETACHED.search(header):
            raise InputError(path.name, "keeps its voxels in another file; save it as one file (.nrrd, .nii.gz)")
    image = read_image(path)
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    if extent.min() < MIN_EXTENT_MM:
        raise InputError(path.name, f"is {' x '.join(f'{e:.0f}' for e in extent)} mm: too small to hold an organ")
    values = sitk.GetArrayViewFromImage(image)
    if mask and not values.any():
        raise InputError(path.name, "is an empty mask (no labelled voxel)")
    if values.min() == values.max():
        raise InputError(path.name, "has one value throughout: no organ-sized structure in it")
