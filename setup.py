"""The package list: the core's packages, the Slicer module's Qt-free Lib (its Logic serves the web
page too) and ``shapeprior.resources`` (the Resources folder mapped into the wheel by pyproject.toml's
package-dir; it has no __init__.py, so no finder sees it)."""

from setuptools import find_packages, setup

setup(packages=find_packages("ShapePriorSegment", include=["shapeprior*", "ShapePriorSegmentLib"]) + ["shapeprior.resources"])
