"""Static checks of the Slicer module, which cannot be imported outside Slicer.

The module file is parsed with ``ast``, the panel with an XML parser, the CMake files as
text: every ``self.ui.<name>`` exists in the .ui, the parameter node's GUI bindings name
real fields, CMake ships every script and resource, and the dependencies match the core's.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import struct
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ShapePriorSegment"
MODULE_FILE = MODULE_DIR / "ShapePriorSegment.py"
LOGIC_FILE = MODULE_DIR / "ShapePriorSegmentLib" / "logic.py"
UI_FILE = REPO / "Resources" / "UI" / "ShapePriorSegment.ui"
ICONS = [REPO / "Resources" / "Icons" / "ShapePriorSegment.png", REPO / "ShapePriorSegment.png"]
CLASS_BASES = {
    "ShapePriorSegment": "ScriptedLoadableModule",
    "ShapePriorSegmentWidget": "ScriptedLoadableModuleWidget",
    "ShapePriorSegmentLogic": "LogicWithoutParameterNode",  # ShapePriorSegmentLib's Logic, tested with slicer-core
    "ShapePriorSegmentTest": "ScriptedLoadableModuleTest",
}
BUNDLED_WITH_SLICER = {"numpy", "simpleitk", "vtk"}


@pytest.fixture(scope="module")
def module() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(), str(MODULE_FILE))


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}


def constant(module: ast.Module, name: str):
    for node in module.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{MODULE_FILE.name} defines no {name}")


def cmake(path: Path) -> str:
    """CMake text without comments, ``${MODULE_NAME}`` expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text)
    return text.replace("${MODULE_NAME}", name.group(1)) if name else text


def command_args(text: str, command: str) -> list[list[str]]:
    """Arguments of every call of ``command`` (no nested parentheses in the arguments)."""
    return [call.split() for call in re.findall(rf"\b{command}\(([^()]*)\)", text)]


def set_list(text: str, variable: str) -> list[str]:
    (args,) = [a for a in command_args(text, "set") if a and a[0] == variable]
    return args[1:]


def test_ui_is_a_designer_file_for_a_mrml_widget(ui):
    assert ui.tag == "ui" and ui.find("class").text == "ShapePriorSegment"
    assert ui.find("widget").get("class") == "qMRMLWidget"
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    for connection in ui.iter("connection"):
        assert connection.find("receiver").text in names


def test_every_ui_widget_the_module_uses_exists(module, ui):
    used = {
        node.attr for node in ast.walk(module)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }
    names = {w.get("name") for w in ui.iter("widget")}
    assert len(used) >= 20
    assert used - names == set()


def test_parameter_bindings_name_parameter_node_fields(module, ui):
    parameter_node = classes(module)["ShapePriorSegmentParameterNode"]
    assert [d.id for d in parameter_node.decorator_list] == ["parameterNodeWrapper"]
    fields = {n.target.id for n in parameter_node.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields


def test_module_defines_the_four_classes_with_template_bases(module):
    found = classes(module)
    for name, base in CLASS_BASES.items():
        assert base in [b.id for b in found[name].bases if isinstance(b, ast.Name)], name
    methods = {name: {f.name for f in cls.body if isinstance(f, ast.FunctionDef)} for name, cls in found.items()}
    assert {"setup", "cleanup", "enter", "exit"} <= methods["ShapePriorSegmentWidget"]
    assert {"setUp", "runTest"} <= methods["ShapePriorSegmentTest"]
    assert "getParameterNode" in methods["ShapePriorSegmentLogic"]


def test_module_text_names_category_and_cites_the_methods():
    text = MODULE_FILE.read_text()
    assert re.search(r'categories = \[translate\("qSlicerAbstractCoreModule", "Segmentation"\)\]', text)
    assert "Deep Active Latent Surfaces" in text and "Deep Implicit Statistical Shape Models" in text
    assert "tryWithErrorDisplay" in text


def test_module_cmake_lists_every_script_and_resource():
    text = cmake(MODULE_DIR / "CMakeLists.txt")
    scripts = set_list(text, "MODULE_PYTHON_SCRIPTS")
    assert "ShapePriorSegment.py" in scripts
    globs = {}
    for args in command_args(text, "file"):
        if args[0] == "GLOB_RECURSE":
            patterns = [a for a in args[2:] if a not in ("RELATIVE", "CONFIGURE_DEPENDS") and "/" in a]
            globs[args[1]] = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in patterns]
    globbed = [p for args in scripts if args.startswith("${") for p in globs.get(args[2:-1], [])]

    def covered(relative: str) -> bool:
        if relative in scripts:
            return True
        folder = relative.rsplit("/", 1)[0]
        return any(  # GLOB_RECURSE: the pattern's folder or below, file name by the pattern's last part
            (folder + "/").startswith(p.rsplit("/", 1)[0] + "/") and fnmatch.fnmatch(relative.rsplit("/", 1)[1], p.rsplit("/", 1)[1])
            for p in globbed
        )

    package = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for folder in ("shapeprior", "ShapePriorSegmentLib") for p in (MODULE_DIR / folder).rglob("*.py")
    )
    assert len(package) > 20
    assert [p for p in package if not covered(p)] == []

    resources = set_list(text, "MODULE_PYTHON_RESOURCES")
    assert {"UI/ShapePriorSegment.ui", "Icons/ShapePriorSegment.png"} <= set(resources)
    assert set_list(text, "MODULE_RESOURCE_DIR") == ["${CMAKE_CURRENT_SOURCE_DIR}/../Resources"]
    for resource in ("UI/ShapePriorSegment.ui", "Icons/ShapePriorSegment.png"):
        assert (REPO / "Resources" / resource).is_file()
    (copy,) = command_args(text, "configure_file")
    assert copy[1].endswith("/Resources/${resource}") and "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in copy[1]

    (build,) = command_args(text, "slicerMacroBuildScriptedModule")
    assert build[:4] == ["NAME", "ShapePriorSegment", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"]
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S).group(1)
    assert command_args(testing, "slicer_add_python_unittest") == [["SCRIPT", "ShapePriorSegment.py"]]


def test_top_level_cmake_is_an_extension():
    text = cmake(REPO / "CMakeLists.txt")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({variable}\s+"[^"]+"\)', text), variable
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text and 'set(EXTENSION_DEPENDS "NA")' in text
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(ShapePriorSegment)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize("icon", ICONS, ids=lambda p: str(p.relative_to(REPO)))
def test_icons_are_128_pixel_pngs(icon):
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


def test_logic_base_is_slicers_logic():
    logic = classes(ast.parse(LOGIC_FILE.read_text()))["ShapePriorSegmentLogic"]
    assert [b.id for b in logic.bases] == ["ScriptedLoadableModuleLogic"]


def test_installed_requirements_are_the_core_dependencies():
    module = ast.parse(LOGIC_FILE.read_text())

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()

    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    installed = [*constant(module, "PIP_REQUIREMENTS"), constant(module, "TORCH_REQUIREMENT")]
    assert sorted(installed) == sorted(r for r in core if name(r) not in BUNDLED_WITH_SLICER)
    assert constant(module, "SAMPLE_CONTOURS") == "SampleData/liver-contours.mrk.json"
