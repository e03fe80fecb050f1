"""Application-like MRML scenes and Slicer scene bundles (``.mrb``) without Slicer's GUI.

A user of the command line gets the volume, the curves, the fitted model and the
segmentation in one file that opens in Slicer with a drag and drop.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import slicer
import vtk

from ..errors import InputError
from ..fit.outcome import Outcome
from ..io.formats import file_stem
from .nodes import add_closed_curves
from .writer import add_outcome_to_scene

# Module logics a scene needs for what this package puts in it (name -> class name).
MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",  # first: volume display nodes look up their color tables here
    "Volumes": "vtkSlicerVolumesLogic",
    "Models": "vtkSlicerModelsLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Texts": "vtkSlicerTextsLogic",
}


def new_scene():
    """A ``vtkMRMLScene`` set up as Slicer's application does (application logic, module logics).

    The logics stay attached to the scene object (``scene.shapeprior_logics``) so they live as long as it does.
    """
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    # The color logic complains that slicer-core ships no default color files; the
    # built-in color tables are all a scene needs, so its set-up runs with logging off.
    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    for name, class_name in MODULE_LOGICS.items():
        logic = getattr(slicer, class_name)()
        logic.SetMRMLApplicationLogic(app_logic)  # before the scene: the color logic needs it then
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    vtk.vtkLogger.SetStderrVerbosity(verbosity)
    scene.shapeprior_logics = (app_logic, logics)
    return scene


def _logic(scene, name: str):
    return scene.shapeprior_logics[1][name]


def write_scene_bundle(path_mrb: str | os.PathLike, outcome: Outcome,
                       volume_path: str | os.PathLike | None = None) -> Path:
    """Write a Slicer scene bundle of a fit: the input volume (if given), the drawn curves, the model
    (coloured by the outcome's per-vertex distances) and the segment, written by the one MRML writer;
    the report is a text node ``<organ> fit report`` (JSON). The file appears complete or not at all.
    """
    path = Path(path_mrb).resolve()  # WriteToMRB fails on relative paths
    if path.suffix.lower() != ".mrb":
        raise InputError(path, "a scene bundle must end in .mrb")
    scene = new_scene()
    volume_id = None
    if volume_path is not None:
        volume_path = Path(volume_path)
        if not volume_path.is_file():
            raise InputError(volume_path, "no such file")
        volume = _logic(scene, "Volumes").AddArchetypeVolume(str(volume_path), file_stem(volume_path))
        if volume is None:
            raise InputError(volume_path, "not a volume Slicer can read")
        volume_id = volume.GetID()
    add_closed_curves(scene, outcome.curves)
    report = add_outcome_to_scene(scene, outcome, reference_volume_id=volume_id)["report"]
    text = scene.AddNewNodeByClass("vtkMRMLTextNode", f"{outcome.organ} fit report")
    text.SetText(json.dumps(report, indent=2, default=str))
    for node in nodes_by_class(scene, "vtkMRMLStorableNode"):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()

    path.parent.mkdir(parents=True, exist_ok=True)
    # WriteToMRB names the folder inside the zip after the file, so the temporary file
    # keeps the final name, in a temporary folder beside it (same file system: atomic rename).
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    # VTK's archiver reports every file it zips ("Info: ... Zip: adding ..."): kept out of the terminal,
    # shown only if the bundle fails.
    from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow

    terminal, messages = vtkOutputWindow.GetInstance(), vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(messages)
    try:
        tmp = folder / path.name
        if not scene.WriteToMRB(str(tmp)) or not tmp.is_file():
            said = [line.strip() for line in messages.GetOutput().splitlines() if line.strip()]
            raise OSError(f"{path}: Slicer could not write the scene bundle" + (f" ({said[-1]})" if said else ""))
        os.replace(tmp, path)
    finally:
        vtkOutputWindow.SetInstance(terminal)
        shutil.rmtree(folder, ignore_errors=True)
    return path


def read_scene_bundle(path: str | os.PathLike):
    """Load a ``.mrb`` into a new application-like scene and return the scene."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    scene = new_scene()
    cwd = os.getcwd()
    cache_dir = tempfile.mkdtemp(prefix="shapeprior-mrb-cache-")
    try:
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(cache_dir)
        scene.SetCacheManager(cache)
        io_manager = slicer.vtkDataIOManager()
        io_manager.SetCacheManager(cache)
        scene.SetDataIOManager(io_manager)
        if not scene.ReadFromMRB(str(path)):
            raise InputError(path, "not a readable Slicer scene bundle")
    finally:
        # ReadFromMRB changes into its unpacking folder (in cache_dir) and stays there when it
        # fails: without this the process would be left in a deleted working directory.
        os.chdir(cwd)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return scene


def nodes_by_class(scene, class_name: str) -> list:
    """All nodes of ``class_name`` (and its subclasses) in scene order."""
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
