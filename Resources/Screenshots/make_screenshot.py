"""Render fitted-liver.png: the liver that ``shapeprior demo`` fits to the sample contours, with the contours.

The extension catalog's screenshot and the README's picture; drawn offscreen with VTK (EGL), in
Slicer's colors: liver from the segment terminology, each contour in the color of the slice view it
was drawn on (axial red, sagittal yellow, coronal green), Slicer's 3D-view background. The surface is
translucent so that every contour shows; 256 colors keep the file small.

    shapeprior demo --out /tmp/demo
    python Resources/Screenshots/make_screenshot.py /tmp/demo/liver.vtk
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # offscreen, no display needed
import vtk  # noqa: E402  (reads the variable above)
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

HERE = Path(__file__).resolve().parent
CONTOURS = HERE.parent / "SampleData" / "liver-contours.mrk.json"
LIVER_COLOR = (221 / 255, 130 / 255, 101 / 255)  # Slicer's General Anatomy color of the liver
# The axis a contour is flat along -> the color of the Slicer view it is drawn on: x sagittal (yellow),
# y coronal (green), z axial (red).
VIEW_COLORS = {0: (0.93, 0.84, 0.30), 1: (0.43, 0.69, 0.29), 2: (0.95, 0.29, 0.20)}
SIZE = (1000, 700)


def actor(source: vtk.vtkAlgorithm, color, specular: float = 0.2) -> vtk.vtkActor:
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(source.GetOutputPort())
    mapper.ScalarVisibilityOff()
    result = vtk.vtkActor()
    result.SetMapper(mapper)
    result.GetProperty().SetColor(color)
    result.GetProperty().SetSpecular(specular)
    result.GetProperty().SetSpecularPower(30)
    return result


def contour_tube(points_lps: np.ndarray) -> vtk.vtkTubeFilter:
    """A closed curve as a 1.2 mm tube, so it stays visible where it runs on the surface."""
    points = vtk.vtkPoints()
    for point in points_lps:
        points.InsertNextPoint(*point)
    line = vtk.vtkCellArray()
    line.InsertNextCell(len(points_lps) + 1, [*range(len(points_lps)), 0])
    curve = vtk.vtkPolyData()
    curve.SetPoints(points)
    curve.SetLines(line)
    tube = vtk.vtkTubeFilter()
    tube.SetInputData(curve)
    tube.SetRadius(1.2)
    tube.SetNumberOfSides(16)
    return tube


def main(mesh_path: str, out_path: Path = HERE / "fitted-liver.png") -> None:
    renderer = vtk.vtkRenderer()
    renderer.GradientBackgroundOn()  # Slicer's default 3D-view background
    renderer.SetBackground(0.76, 0.76, 0.91)
    renderer.SetBackground2(0.45, 0.47, 0.75)

    reader = vtk.vtkPolyDataReader()  # the demo writes the surface in LPS, as are the contours
    reader.SetFileName(mesh_path)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(reader.GetOutputPort())
    liver = actor(normals, LIVER_COLOR)
    liver.GetProperty().SetOpacity(0.7)
    liver.GetProperty().SetAmbient(0.15)
    renderer.AddActor(liver)
    for markup in json.loads(CONTOURS.read_text())["markups"]:
        points = np.array([p["position"] for p in markup["controlPoints"]])
        renderer.AddActor(actor(contour_tube(points), VIEW_COLORS[int(np.argmin(points.std(axis=0)))], 0.4))

    # Seen from the front, a little from the right and above (LPS: -x right, -y anterior, +z superior),
    # as in Slicer's anterior 3D view: the patient's right on the left of the picture.
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0, 0, 0)
    camera.SetPosition(-0.25, -1.0, 0.45)
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.5)
    vtk.vtkLightKit().AddLightsToRenderer(renderer)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetMultiSamples(8)
    window.SetSize(*SIZE)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    rows = vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(SIZE[1], SIZE[0], -1)
    Image.fromarray(rows[::-1, :, :3]).quantize(256).save(out_path, optimize=True)  # VTK's rows run bottom-up
    print(f"wrote {out_path} ({out_path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main(sys.argv[1])
