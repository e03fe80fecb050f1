"""Command-line options built from the settings dataclasses, checked before any work starts.

Only the standard library is imported here: the parser is built in well under a second.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..io.formats import LABELMAP_SUFFIXES, MESH_SUFFIXES

METAVARS = {"int": "N", "float": "X", "list[int]": "N,N,...", "list[float]": "X,X,..."}


def number(kind: type, bounds: tuple | None = None) -> Callable[[str], object]:
    """An argparse type: a finite ``kind`` within ``bounds`` (inclusive; default: not negative)."""
    lo, hi = bounds or (0, math.inf)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}, got {text}")
        return value

    return parse


def value_type(annotation: str, bounds: tuple | None, count: int | None) -> Callable[[str], object]:
    """Parser of one option's text from its field's annotation: ``int``, ``float``, ``str`` or
    ``list[int]``/``list[float]`` (comma-separated, ``count`` values if given), each maybe ``| None``."""
    base = annotation.removesuffix(" | None")
    if not base.startswith("list["):
        return number(int if base == "int" else float, bounds) if base in ("int", "float") else str
    item, noun = value_type(base[5:-1], bounds, None), {"list[int]": "integers", "list[float]": "numbers"}[base]

    def parse_list(text: str) -> list:
        try:
            values = [item(t.strip()) for t in text.split(",") if t.strip()]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"must be {noun} separated by commas, got {text!r} ({err})") from None
        if not values or (count and len(values) != count):
            raise argparse.ArgumentTypeError(f"must be {count or 'one or more'} {noun} separated by commas, "
                                             f"got {text!r}")
        return values

    return parse_list


def add_settings(parser: argparse.ArgumentParser, cls: type, base: object | None = None,
                 only: tuple[str, ...] | None = None) -> None:
    """An option for each field of ``cls`` with ``help`` in its metadata (all, or those in ``only``).

    The flag is the field name with dashes (or metadata ``flag``); the type and range come from the
    annotation and metadata ``range``; repeatable ``list[str]`` fields (``--include A --include B``).
    Defaults are left as None here and taken from ``base`` by :func:`settings_from`, so the help
    shows them but a given value always wins.
    """
    base = base if base is not None else cls()
    for f in fields(cls):
        if "help" not in f.metadata or str(f.type).startswith("dict") or (only is not None and f.name not in only):
            continue
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        default = getattr(base, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f.metadata["help"] + ("" if default is None else f" (default: {shown})")
        annotation = str(f.type)
        if annotation == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif annotation.startswith("list[str]"):
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=text)
        else:
            kind = value_type(annotation, f.metadata.get("range"), f.metadata.get("count"))
            metavar = None if "choices" in f.metadata else METAVARS.get(annotation.removesuffix(" | None"), "TEXT")
            parser.add_argument(flag, dest=f.name, type=kind, choices=f.metadata.get("choices"), default=None,
                                metavar=metavar, help=text)


def settings_from(args: argparse.Namespace, cls: type, base: object | None = None):
    """``base`` (default ``cls()``) with every option the user gave."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return replace(base if base is not None else cls(), **given)


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The flags among ``names`` that the user gave (they default to None)."""
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n, None) not in (None, False)]


def command_line() -> str:
    """The command as typed, for a model's record (empty when not run as ``shapeprior``)."""
    return "shapeprior " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("shapeprior") else ""


# --------------------------------------------------------------------------- inputs and outputs


def check_input(path: str | os.PathLike) -> str:
    """``path`` as given, once :func:`~shapeprior.io.files.readable_file` has checked it (before any work)."""
    from ..io.files import readable_file

    readable_file(path)
    return str(path)


def add_outputs(parser: argparse.ArgumentParser, what: dict[str, str]) -> None:
    """The output options a fit command writes (``what``: option -> help) and ``--overwrite``."""
    for option, text in what.items():
        parser.add_argument(option, help=text)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _check_writable(path: str) -> None:
    """Before the work: the nearest existing folder of ``path`` takes a new file (a probe, since
    root passes permission checks but not a read-only file system)."""
    folder = Path(path).resolve().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(path, f"cannot be written: {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".shapeprior-probe-"):
            pass
    except OSError as err:
        raise InputError(path, f"cannot be written ({err.strerror or err})") from None


def has_slicer_core() -> bool:
    """Scene bundles need the MRML bridge, i.e. the optional ``slicer`` extra."""
    import importlib.util

    return importlib.util.find_spec("slicer_core") is not None


def check_outputs(args: argparse.Namespace) -> None:
    """At least one output, each with a known extension, writable, and new unless ``--overwrite``."""
    outputs = {name: getattr(args, name, None)
               for name in ("out_model", "out_seg", "report", "out_scene", "out_labels", "out_loadings", "out_points")}
    paths = [p for p in outputs.values() if p]
    if not paths:
        raise InputError(None, "nothing to write: give --out-model, --out-seg, --report and/or --out-scene")
    for path in paths:
        if os.path.isdir(path):
            raise InputError(path, "is a directory; give a file name")
    if outputs["out_model"] and not outputs["out_model"].lower().endswith(MESH_SUFFIXES):
        raise InputError(outputs["out_model"], f"unsupported mesh format (expected one of {', '.join(MESH_SUFFIXES)})")
    for labelmap in (outputs["out_seg"], outputs["out_labels"]):
        if labelmap and not labelmap.lower().endswith(LABELMAP_SUFFIXES):
            raise InputError(labelmap, "unsupported labelmap format (expected .nii.gz, .nii, .nrrd, .seg.nrrd or .mha)")
    if outputs["report"] and not outputs["report"].lower().endswith(".json"):
        raise InputError(outputs["report"], "a report is JSON: end it in .json")
    if outputs["out_loadings"] and not outputs["out_loadings"].lower().endswith(".csv"):
        raise InputError(outputs["out_loadings"], "the loadings are a table: end it in .csv")
    if outputs["out_points"] and not outputs["out_points"].lower().endswith((".csv", ".mrk.json")):
        raise InputError(outputs["out_points"], "points are a table (.csv) or a Slicer point list (.mrk.json)")
    if outputs["out_scene"]:
        if not outputs["out_scene"].lower().endswith(".mrb"):
            raise InputError(outputs["out_scene"], "a scene bundle must end in .mrb")
        if not has_slicer_core():
            raise InputError(outputs["out_scene"], "needs slicer-core: pip install 'shapeprior[slicer]'")
    for path in paths:
        if os.path.exists(path) and not args.overwrite:
            raise InputError(path, "exists; pass --overwrite to replace it")
        _check_writable(path)
