"""Image and label-mask reading (SimpleITK) with checks that name the file.

Geometry is ITK's: origin, spacing and direction map voxel indices to LPS mm.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .files import readable_file

# 1024^3 voxels: more than any CT or MR volume; a corrupt header claiming more is
# refused before ITK tries to allocate it.
MAX_VOXELS = 2**30
# Decompressed bytes read at a time while checking a .nii.gz (bounds the memory of the check).
GZIP_CHUNK = 2**22
# Bytes per voxel of the NIfTI datatype codes (nifti1.h).
NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 1536: 16,
               1792: 16, 2048: 32, 2304: 4}
# MetaImage headers (a few hundred bytes) are checked before ITK reads them: its MetaIO
# crashes on absurd NDims. 4D is the most that gets a message of its own; more channels
# than this are no image of ours.
META_HEADER_BYTES = 65_536
MAX_META_DIMS = 4
MAX_META_CHANNELS = 64
# What ITK's messages say when an image's data stops short of what its header describes.
TRUNCATION_MESSAGES = ("_nrrdEncoding", "data not read completely", "fread got only", "unexpected end")


T = TypeVar("T")


class Segment(NamedTuple):
    """A Segment Editor segment of a ``.seg.nrrd``: its voxels are ``label`` in component ``layer``."""

    name: str
    layer: int
    label: int


@contextmanager
def _native_stderr(captured: list[str]) -> Iterator[None]:
    """Collect into ``captured`` what C++ code (ITK's MetaIO and NIfTI readers) prints on the
    process's stderr, which would otherwise break the one-line error rule."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect (a GUI process)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


def _check_meta_header(path: Path) -> None:
    """Refuse a MetaImage (.mha, .mhd) header whose NDims or DimSize ITK's MetaIO would not survive
    (NDims = 99999 crashes the process)."""
    with open(path, "rb") as stream:
        header = stream.read(META_HEADER_BYTES).split(b"ElementDataFile", 1)[0]
    fields = dict(re.findall(rb"^[ \t]*(NDims|DimSize|ElementNumberOfChannels)[ \t]*=[ \t]*([^\r\n]*)", header, re.M))
    try:
        rank = int(fields.get(b"NDims", b""))
        sizes = [int(v) for v in fields.get(b"DimSize", b"").split()]
        channels = int(fields.get(b"ElementNumberOfChannels", b"1"))
    except ValueError:
        raise InputError(path, "not a readable image (MetaImage header without integer NDims and DimSize)") from None
    if not 1 <= rank <= MAX_META_DIMS or len(sizes) != rank or min(sizes) < 1 or not 1 <= channels <= MAX_META_CHANNELS:
        raise InputError(path, "not a readable image (MetaImage header with bad NDims, DimSize or channels)")


def _itk_problem(message: str) -> str:
    """One line for an ITK read failure, from the text of its exception and its printout."""
    if any(text in message for text in TRUNCATION_MESSAGES):
        return "truncated or corrupt: the image data stops short of what the header describes"
    if "Refusing to change spacing" in message:
        return "pixel spacing in the header is zero or not a number"
    return "not a readable image (expected NIfTI, NRRD or MHA)"


def _itk_call(path: Path, step: Callable[[], T]) -> T:
    """``step()`` (an ITK reader call) with its printout captured; failures as InputError."""
    captured: list[str] = []
    try:
        with _native_stderr(captured):
            return step()
    except RuntimeError as error:
        raise InputError(path, _itk_problem(str(error) + "".join(captured))) from None


def _check_header(reader: sitk.ImageFileReader, path: Path) -> None:
    """Refuse, before any voxel is read: not 3D, too many voxels, bad spacing, origin or direction."""
    dimension, size = reader.GetDimension(), reader.GetSize()
    if dimension == 4:
        shown = " x ".join(map(str, size))
        raise InputError(path, f"a 4D image ({shown}: a time series or several volumes); one 3D volume is required")
    if dimension != 3:
        raise InputError(path, f"a {dimension}D image; a 3D volume is required")
    voxels = int(np.prod(size, dtype=np.float64))
    if voxels > MAX_VOXELS:
        raise InputError(path, f"the header describes {voxels} voxels; at most {MAX_VOXELS} are read")
    spacing = np.array(reader.GetSpacing())  # as the header says: ITK flips negative spacing only when reading
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        shown = " x ".join(f"{v:g}" for v in spacing)
        # Readers disagree on where voxels with negative spacing are: ITK, and so Slicer, mirrors that axis
        # about the origin; NiBabel (NIfTI) and VTK (MetaImage) take the spacing's size.
        why = "; tools disagree on where its voxels are" if (spacing < 0).any() else ""
        raise InputError(path, f"pixel spacing {shown} mm in the header{why}; it must be positive")
    if not np.isfinite(reader.GetOrigin()).all():
        raise InputError(path, "origin in the header is not finite")
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    bounded = np.all(np.abs(direction) <= 1 + 1e-4)  # as an orthonormal matrix's are; NaN is not
    if not (bounded and np.allclose(direction @ direction.T, np.eye(3), atol=1e-4)):
        raise InputError(path, "direction matrix is not orthonormal")


def _nifti_data_end(header: bytes) -> int | None:
    """Byte offset where a single-file NIfTI-1 or -2 header says its voxel data ends; None if
    ``header`` is not one (ITK then judges the file)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            datatype, bits = struct.unpack(order + "2h", header[70:74])
            rank, *dims = struct.unpack(order + "8h", header[40:56])
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            datatype, bits = struct.unpack(order + "2h", header[12:16])
            rank, *dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        bits = 8 * NIFTI_BYTES[datatype] if datatype in NIFTI_BYTES else bits  # ITK sizes voxels by the datatype
        if not 1 <= rank <= 7 or min(dims[:rank]) < 1 or bits < 1 or not np.isfinite(offset):
            return None
        return int(offset) + (int(np.prod(dims[:rank], dtype=np.float64)) * bits + 7) // 8
    return None


def _check_nifti_length(path: Path) -> None:
    """Refuse a NIfTI file (plain or gzipped) whose content ends before the voxel data its header
    describes, or whose gzip stream is cut or corrupt: ITK would read the missing voxels as 0."""
    with open(path, "rb") as stream:
        header = stream.read(544)
    length = path.stat().st_size
    if header[:2] == b"\x1f\x8b":  # gzip: the whole stream is decompressed, to count it and check its CRC
        try:
            with gzip.open(path, "rb") as stream:
                header = stream.read(544)
                length = len(header)
                while chunk := stream.read(GZIP_CHUNK):
                    length += len(chunk)
        except (OSError, EOFError, zlib.error):
            raise InputError(path, "truncated or corrupt gzip data") from None
    end = _nifti_data_end(header)
    if end is not None and length < end:
        raise InputError(path, f"truncated: the header describes {end} bytes, the file holds {length}")


def _header(path: str | os.PathLike) -> tuple[Path, sitk.ImageFileReader]:
    """The file's path and a reader that has read its header, once the file passed the checks
    ITK does not make (or does not survive)."""
    path = readable_file(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti_length(path)
    if name.endswith((".mha", ".mhd")):
        _check_meta_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _itk_call(path, reader.ReadImageInformation)
    return path, reader


def _read_volume(path: str | os.PathLike, components: bool) -> sitk.Image:
    """A checked 3D image; ``components``: several values per voxel (segmentation layers) allowed."""
    path, reader = Path(path), read_image_header(path, components)
    image = _itk_call(path, reader.Execute)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise InputError(path, "image holds NaN or infinite values")
    return image


def read_image_header(path: str | os.PathLike, components: bool = False) -> sitk.ImageFileReader:
    """A reader that has read and checked a 3D image's header (``GetSize``, ``GetSpacing``, ...) but not its
    voxels (a .nii.gz is still decompressed once to check its length): for checking many inputs before
    the work; NaN voxels are found when the image is read. ``components``: several values per voxel
    allowed (segmentation layers), else a scalar image is required."""
    path, reader = _header(path)
    _check_header(reader, path)
    if not components and reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"a multi-component image ({reader.GetNumberOfComponents()} values per voxel); "
                         "a scalar volume is required")
    return reader


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar image; reject missing, unreadable, empty, truncated, 4D, multi-component,
    NaN-holding or skewed images, and headers with bad spacing or too many voxels."""
    return _read_volume(path, components=False)


def parse_labels(text: str | None) -> list[int] | None:
    """``"1,2"`` -> ``[1, 2]``; ``None`` -> ``None``."""
    if text is None:
        return None
    try:
        labels = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(None, f"--label must be integers separated by commas, got {text!r}") from None
    if not labels or any(v <= 0 for v in labels):
        raise InputError(None, f"--label must list positive label values, got {text!r}")
    return labels


def _segment_table(keys: Sequence[str], value: Callable[[str], str], path: Path) -> list[Segment]:
    """Segments described by Slicer's ``SegmentN_*`` metadata (``value(key)`` gives a key's text).

    As Slicer reads them: segments 0, 1, ... while ``SegmentN_ID`` exists; the layer defaults
    to N (files from before layers held one segment per component), the label value to 1.
    """
    keys = set(keys)
    segments = []
    while f"Segment{len(segments)}_ID" in keys:
        n = len(segments)
        fields = {}
        for field, default in (("Layer", n), ("LabelValue", 1)):
            key = f"Segment{n}_{field}"
            try:
                fields[field] = int(value(key).strip()) if key in keys else default
            except ValueError:
                raise InputError(path, f"segment {n} has a non-integer {field} {value(key)!r}") from None
        name = value(f"Segment{n}_Name") if f"Segment{n}_Name" in keys else value(f"Segment{n}_ID")
        if fields["Layer"] < 0 or fields["LabelValue"] < 1:
            raise InputError(path, f"segment {name!r} has layer {fields['Layer']} and label {fields['LabelValue']}")
        segments.append(Segment(name, fields["Layer"], fields["LabelValue"]))
    return segments


def _unique_names(segments: list[Segment], path: Path) -> dict[str, Segment]:
    """Segments by lower-case name; two sharing a name are refused (the choice would be ambiguous)."""
    named: dict[str, Segment] = {}
    for segment in segments:
        key = segment.name.strip().lower()
        if key in named:
            raise InputError(path, f"two segments are named {segment.name!r}; rename one in Slicer")
        named[key] = segment
    return named


def segment_names(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{name: (layer, label)}`` of the Segment Editor segments of a ``.seg.nrrd`` (from its
    header only); empty for images without segment metadata."""
    path, reader = _header(path)
    segments = _segment_table(reader.GetMetaDataKeys(), reader.GetMetaData, path)
    return {s.name: (s.layer, s.label) for s in _unique_names(segments, path).values()}


def _listing(segments: list[Segment]) -> str:
    shown = ", ".join(repr(s.name) for s in segments[:12])
    return shown + (", ..." if len(segments) > 12 else "")


def _segment_voxels(image: sitk.Image, segments: list[Segment], wanted: str, path: Path) -> np.ndarray:
    """Boolean (k, j, i) voxels of the segment named ``wanted`` (case-insensitive)."""
    if not segments:
        raise InputError(path, "holds no Segment Editor segments (a .seg.nrrd is needed to choose by name)")
    segment = _unique_names(segments, path).get(wanted.strip().lower())
    if segment is None:
        raise InputError(path, f"no segment named {wanted!r} (segments: {_listing(segments)})")
    layers = image.GetNumberOfComponentsPerPixel()
    if segment.layer >= layers:
        raise InputError(path, f"segment {segment.name!r} is in layer {segment.layer}; the file has {layers} "
                         f"layer{'s' if layers > 1 else ''}")
    array = sitk.GetArrayViewFromImage(image)
    voxels = (array[..., segment.layer] if layers > 1 else array) == segment.label
    if not voxels.any():
        raise InputError(path, f"segment {segment.name!r} is empty (no voxels)")
    return voxels


def _label_voxels(image: sitk.Image, labels: Sequence[int] | None, segments: list[Segment], path: Path) -> np.ndarray:
    """Boolean (k, j, i) voxels holding one of ``labels`` (None: the image's only non-zero label)."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(path, f"segments in {image.GetNumberOfComponentsPerPixel()} layers "
                         f"({_listing(segments)}); choose one with --segment")
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise InputError(path, "not a label image (non-integer values)")
    present = [int(v) for v in np.unique(array) if v != 0]
    if not present:
        raise InputError(path, "empty mask (no non-zero voxels)")
    if labels is None:
        if len(present) > 1:
            if segments:
                raise InputError(path, f"holds several segments ({_listing(segments)}); choose with --segment")
            shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
            raise InputError(path, f"mask holds several labels ({shown}); choose with --label")
        labels = present
    if not set(labels) & set(present):
        raise InputError(path, f"label {','.join(map(str, labels))} not present (labels: {present})")
    return np.isin(array, list(labels))


def read_mask(path: str | os.PathLike, labels: Sequence[int] | None = None, segment: str | None = None) -> sitk.Image:
    """Read a label image and return the binary (uint8, 0/1) mask, on the file's grid, of ``labels``
    or of the Segment Editor ``segment`` (by name, case-insensitive, from a ``.seg.nrrd``).

    With neither, the image must hold exactly one non-zero value (a float 0/1 or a 0/255 mask
    is fine). Several labels given are merged into one mask (e.g. ``[1, 2]``). A ``.seg.nrrd``
    whose segments overlap holds several layers: choose one segment by name.
    """
    if segment is not None and labels is not None:
        raise InputError(path, "choose a segment by name or by label values, not both")
    image = _read_volume(path, components=True)
    path = Path(path)
    segments = _segment_table(image.GetMetaDataKeys(), image.GetMetaData, path)
    if segment is not None:
        voxels = _segment_voxels(image, segments, segment, path)
    else:
        voxels = _label_voxels(image, labels, segments, path)
    mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def check_same_grid(image: sitk.Image, mask: sitk.Image, image_path, mask_path) -> None:
    """Raise if ``mask`` is not on ``image``'s voxel grid (size, spacing, origin, direction)."""
    if image.GetSize() != mask.GetSize():
        raise InputError(mask_path, f"size {mask.GetSize()} differs from image {image_path} {image.GetSize()}")
    if not np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4):
        raise InputError(mask_path, f"direction matrix differs from image {image_path}")
    if not np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=1e-4):
        raise InputError(mask_path, f"spacing differs from image {image_path}")
    if not np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3 * max(image.GetSpacing())):
        raise InputError(mask_path, f"origin differs from image {image_path}")
