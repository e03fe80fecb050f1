"""Static checks of the Slicer module, which cannot be imported outside Slicer.

The module file and the files of its Lib are parsed with ``ast``, the panel with an XML
parser, the CMake files as text: every ``self.ui.<name>`` exists in the .ui, the parameter
node's GUI bindings name real fields, CMake ships every script and resource, every file that CMake and the extension
catalog entry name exists, and the Python requirements match the core's dependencies.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ShapePriorSegment"
MODULE_FILE = MODULE_DIR / "ShapePriorSegment.py"
LIB_DIR = MODULE_DIR / "ShapePriorSegmentLib"
LOGIC_FILE = LIB_DIR / "logic.py"
PARAMETERS_FILE = LIB_DIR / "parameters.py"
SAMPLEDATA_FILE = LIB_DIR / "sampledata.py"
SELFTEST_FILE = LIB_DIR / "selftest.py"
UI_FILE = REPO / "Resources" / "UI" / "ShapePriorSegment.ui"
CATALOG_ENTRY = REPO / "ShapePriorSegment.json"
REQUIREMENTS = REPO / "Resources" / "requirements.txt"
SCREENSHOT = REPO / "Resources" / "Screenshots" / "fitted-liver.png"
CATALOG_SCHEMA = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                  "slicer-extension-catalog-entry-schema-v1.0.2.json#")
# The properties slicer-extension-catalog-entry-schema v1.0.2 allows (it forbids any other).
CATALOG_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                      "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
ICONS = [REPO / "Resources" / "Icons" / "ShapePriorSegment.png", REPO / "ShapePriorSegment.png"]
# The template's classes: the file that defines each and its base. The module file binds them all
# (Slicer looks <Module>Widget and <Module>Test up in it); the others it imports from its Lib.
CLASS_BASES = {
    "ShapePriorSegment": (MODULE_FILE, "ScriptedLoadableModule"),
    "ShapePriorSegmentWidget": (MODULE_FILE, "ScriptedLoadableModuleWidget"),
    # ShapePriorSegmentLib's Logic (tested with slicer-core) with the typed parameter node
    "ShapePriorSegmentLogic": (PARAMETERS_FILE, "LogicWithoutParameterNode"),
    "ShapePriorSegmentTest": (SELFTEST_FILE, "ScriptedLoadableModuleTest"),
}
# Lib files that need the Slicer application; the Qt-free package (its __init__) must not import them.
SLICER_ONLY_LIB = {"parameters", "selftest"}
BUNDLED_WITH_SLICER = {"numpy", "simpleitk", "vtk"}


@pytest.fixture(scope="module")
def module() -> ast.Module:
    return parse(MODULE_FILE)


@pytest.fixture(scope="module")
def ui() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}


def functions(module: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in module.body if isinstance(node, ast.FunctionDef)}


def imported(module: ast.Module) -> dict[str, str]:
    """Name bound by a top-level ``from X import name`` -> X."""
    return {alias.asname or alias.name: node.module for node in module.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def lib_module(path: Path) -> str:
    return f"ShapePriorSegmentLib.{path.stem}"


def constant(module: ast.Module, name: str):
    for node in module.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no constant {name}")


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


def set_string(text: str, variable: str) -> str:
    """The value of ``set(variable "value")``."""
    (value,) = re.findall(rf'\bset\({variable}\s+"([^"]*)"\)', text)
    return value


def glob_patterns(text: str) -> dict[str, list[str]]:
    """``file(GLOB_RECURSE variable ...)`` -> its patterns, relative to the repository."""
    roots = {"${CMAKE_CURRENT_SOURCE_DIR}/": "ShapePriorSegment/", "${MODULE_RESOURCE_DIR}/": "Resources/"}
    globs = {}
    for args in command_args(text, "file"):
        if args[0] == "GLOB_RECURSE":
            patterns = [a for a in args[2:] if a not in ("RELATIVE", "CONFIGURE_DEPENDS") and "/" in a]
            for variable, root in roots.items():
                patterns = [p.replace(variable, root) for p in patterns]
            globs[args[1]] = patterns
    return globs


def glob_files(pattern: str) -> set[Path]:
    """The files a GLOB_RECURSE pattern matches: in its folder or below, by the pattern's file name."""
    folder, name = pattern.rsplit("/", 1)
    return {p for p in (REPO / folder).rglob(name) if p.is_file()}


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


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
    trees = [module, *(parse(path) for path in sorted(LIB_DIR.glob("*.py")))]  # the Lib should use none
    used = {
        node.attr for tree in trees for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
    }
    names = {w.get("name") for w in ui.iter("widget")}
    assert len(used) >= 20
    assert used - names == set()


def test_parameter_bindings_name_parameter_node_fields(module, ui):
    assert imported(module)["ShapePriorSegmentParameterNode"] == lib_module(PARAMETERS_FILE)
    parameter_node = classes(parse(PARAMETERS_FILE))["ShapePriorSegmentParameterNode"]
    assert [d.id for d in parameter_node.decorator_list] == ["parameterNodeWrapper"]
    fields = {n.target.id for n in parameter_node.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields


def test_module_binds_the_four_classes_with_template_bases(module):
    found = {}
    for name, (path, base) in CLASS_BASES.items():
        if path != MODULE_FILE:  # defined in the Lib, bound in the module file by importing it
            assert imported(module).get(name) == lib_module(path), name
        found[name] = classes(module if path == MODULE_FILE else parse(path))[name]
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
    globs = glob_patterns(text)
    shipped = {MODULE_DIR / s for s in scripts if not s.startswith("${")}
    shipped |= {f for s in scripts if s.startswith("${") for pattern in globs[s[2:-1]] for f in glob_files(pattern)}
    package = {p for folder in ("shapeprior", "ShapePriorSegmentLib") for p in (MODULE_DIR / folder).rglob("*.py")}
    assert len(package) > 20
    assert sorted(package - shipped) == []

    resources = set_list(text, "MODULE_PYTHON_RESOURCES")
    assert {"UI/ShapePriorSegment.ui", "Icons/ShapePriorSegment.png", "requirements.txt"} <= set(resources)
    assert set_list(text, "MODULE_RESOURCE_DIR") == ["${CMAKE_CURRENT_SOURCE_DIR}/../Resources"]
    (copy,) = command_args(text, "configure_file")
    assert copy[1].endswith("/Resources/${resource}") and "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in copy[1]

    (build,) = command_args(text, "slicerMacroBuildScriptedModule")
    assert build[:4] == ["NAME", "ShapePriorSegment", "SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"]
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S).group(1)
    assert command_args(testing, "slicer_add_python_unittest") == [["SCRIPT", "ShapePriorSegment.py"]]


def test_every_file_cmake_and_the_catalog_entry_name_exists():
    module = cmake(MODULE_DIR / "CMakeLists.txt")
    for script in set_list(module, "MODULE_PYTHON_SCRIPTS"):
        assert script.startswith("${") or (MODULE_DIR / script).is_file(), script
    for resource in set_list(module, "MODULE_PYTHON_RESOURCES"):
        assert resource.startswith("${") or (REPO / "Resources" / resource).is_file(), resource
    for pattern in [p for patterns in glob_patterns(module).values() for p in patterns]:
        assert glob_files(pattern), f"{pattern} matches no file"

    top = cmake(REPO / "CMakeLists.txt")
    for (folder,) in command_args(top, "add_subdirectory"):
        assert (REPO / folder / "CMakeLists.txt").is_file(), folder
    entry = json.loads(CATALOG_ENTRY.read_text())
    assert (REPO / entry["build_subdirectory"] / "CMakeLists.txt").is_file()
    # Icon and screenshots are raw files of the repository at the revision the catalog builds.
    raw = set_string(top, "EXTENSION_HOMEPAGE").replace("https://github.com/", "https://raw.githubusercontent.com/")
    raw += f"/{entry['scm_revision']}/"
    urls = [*set_string(top, "EXTENSION_ICONURL").split(), *set_string(top, "EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(raw) and (REPO / url[len(raw):]).is_file(), url


def test_top_level_cmake_is_an_extension():
    text = cmake(REPO / "CMakeLists.txt")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS"):
        assert set_string(text, variable), variable
    assert set_string(text, "EXTENSION_CATEGORY") == "Segmentation"
    assert set_string(text, "EXTENSION_DEPENDS") == "PyTorch"  # PyTorchUtils installs a torch for the GPU
    contributors = set_string(text, "EXTENSION_CONTRIBUTORS")
    assert re.fullmatch(r"[^()]+ \([^()]+\)", contributors)  # "Name (Organisation)"
    assert f'self.parent.contributors = ["{contributors}"]' in MODULE_FILE.read_text()
    description = set_string(text, "EXTENSION_DESCRIPTION")
    assert all(license in description for license in ("CC BY 4.0", "CC BY-SA 4.0", "Apache-2.0"))
    assert ";" not in description  # CPack passes it unquoted: CMake would keep only the part before a ';'
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(ShapePriorSegment)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(line) for line in order]
    assert -1 not in positions and positions == sorted(positions)


def test_catalog_entry_follows_the_schema_and_matches_cmake():
    entry = json.loads(CATALOG_ENTRY.read_text())
    assert entry["$schema"] == CATALOG_SCHEMA
    assert {"$schema", "category", "scm_url"} <= set(entry) <= CATALOG_PROPERTIES
    text = cmake(REPO / "CMakeLists.txt")
    assert entry["category"] == set_string(text, "EXTENSION_CATEGORY")
    assert entry["scm_url"] == set_string(text, "EXTENSION_HOMEPAGE")
    depends = set_string(text, "EXTENSION_DEPENDS")
    assert entry["build_dependencies"] == ([] if depends == "NA" else depends.split())
    assert entry["tier"] in range(1, 6)
    # The index's formatter (prettier, one array element a line) leaves it as it is.
    assert CATALOG_ENTRY.read_text() == json.dumps(entry, indent=2) + "\n"


def _evaluated_union_annotations(tree: ast.Module) -> list[int]:
    """Lines of ``X | Y`` annotations that Python evaluates when the function or class is defined
    (no ``from __future__ import annotations``): a TypeError on Python 3.9."""
    if any(isinstance(node, ast.ImportFrom) and node.module == "__future__" and
           any(a.name == "annotations" for a in node.names) for node in tree.body):
        return []
    annotations = [a for node in ast.walk(tree) for a in (
        [node.returns] + [x.annotation for x in ast.walk(node.args) if isinstance(x, ast.arg)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else
        [node.annotation] if isinstance(node, ast.AnnAssign) else []) if a is not None]
    return [a.lineno for a in annotations if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                                 for n in ast.walk(a))]


def test_the_module_and_the_core_import_on_slicers_python_3_9():
    """Slicer 5.6 and 5.8 bundle Python 3.9: their grammar, and no union annotations evaluated there."""
    files = [MODULE_FILE, *LIB_DIR.rglob("*.py"), *(MODULE_DIR / "shapeprior").rglob("*.py")]
    problems = {}
    for path in files:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        if lines := _evaluated_union_annotations(tree):
            problems[str(path.relative_to(REPO))] = lines
    assert problems == {}
    # The parameter node wrapper reads real annotations: that file must not postpone them.
    assert "from __future__ import annotations" not in PARAMETERS_FILE.read_text()


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert "Apache-2.0" in str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"])


def test_screenshot_is_a_small_png():
    assert png_size(SCREENSHOT) == (1000, 700)
    assert SCREENSHOT.stat().st_size < 300_000


@pytest.mark.parametrize("icon", ICONS, ids=lambda p: str(p.relative_to(REPO)))
def test_icons_are_128_pixel_pngs(icon):
    assert png_size(icon) == (128, 128)


def test_logic_base_is_slicers_logic():
    logic = classes(ast.parse(LOGIC_FILE.read_text()))["ShapePriorSegmentLogic"]
    assert logic.bases[0].id == "ScriptedLoadableModuleLogic"  # then mixins of its own parts


def test_requirements_are_the_core_dependencies_slicer_does_not_bundle():
    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()

    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith(("#", "-"))]
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(requirements) == sorted(r for r in core if name(r) not in BUNDLED_WITH_SLICER)
    assert name(requirements[0]) == "torch"  # the Logic installs it first, through the PyTorch extension
    logic = LOGIC_FILE.read_text()
    assert 'readRequirements(resourcePath("requirements.txt"))' in logic
    assert "prompt_install=False" in logic  # the panel has asked already


def test_the_sample_the_logic_loads_ships_with_the_extension():
    logic = ast.parse(LOGIC_FILE.read_text())
    patterns = [p for patterns in glob_patterns(cmake(MODULE_DIR / "CMakeLists.txt")).values() for p in patterns]
    shipped = {f for pattern in patterns for f in glob_files(pattern)}
    for name in ("SAMPLE_CONTOURS", "SAMPLE_PAINTED"):
        assert REPO / "Resources" / constant(logic, name) in shipped, name


def test_sample_is_registered_with_sample_data_at_startup(module):
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in MODULE_FILE.read_text()
    assert imported(module)["registerSampleData"] == lib_module(SAMPLEDATA_FILE)
    sampledata = parse(SAMPLEDATA_FILE)
    register = functions(sampledata)["registerSampleData"]
    (call,) = [n for n in ast.walk(register) if isinstance(n, ast.Call)
               and getattr(n.func, "attr", None) == "registerCustomSampleDataSource"]
    keywords = {k.arg: k.value for k in call.keywords}
    assert keywords["customDownloader"].id == "loadSample" and keywords["sampleName"].id == "SAMPLE_NAME"
    assert "loadSample" in functions(sampledata) and constant(sampledata, "SAMPLE_NAME")


def test_lib_package_leaves_out_its_slicer_only_files():
    """slicer-core (the Logic's tests) lacks what the parameter node and the self-test need."""
    names = set()
    for node in parse(LIB_DIR / "__init__.py").body:
        if isinstance(node, ast.ImportFrom):
            names |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
    assert "logic" in names and not names & SLICER_ONLY_LIB


def test_self_test_skips_the_fit_when_dependencies_are_missing():
    test = classes(parse(SELFTEST_FILE))["ShapePriorSegmentTest"]
    calls = {n.func.attr: n.lineno for n in ast.walk(test)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert "ensureDependencies" not in calls  # a build machine cannot install them
    guard = [n for n in ast.walk(test) if isinstance(n, ast.If) and any(isinstance(b, ast.Return) for b in n.body)]
    assert guard and calls["missingDependencies"] < guard[0].lineno < calls["process"]


def test_results_are_shown_in_the_panel(ui):
    widgets = {w.get("name"): w.get("class") for w in ui.iter("widget")}
    assert widgets["segmentationShow3DButton"] == "qMRMLSegmentationShow3DButton"
    assert widgets["warningsLabel"] == "QLabel"
    for path in [MODULE_FILE, *LIB_DIR.glob("*.py")]:  # warnings go to the panel, not to pop-ups
        assert "warningDisplay" not in path.read_text(), path


def test_the_panels_fit_defaults_are_the_command_lines():
    from shapeprior.settings import FitSettings

    source = (REPO / "ShapePriorSegment" / "ShapePriorSegmentLib" / "parameters.py").read_text()
    defaults = dict(re.findall(r"^    (\w+): .*= ([\w.]+)$", source, flags=re.M))
    settings = FitSettings()
    assert (int(defaults["level"]), int(defaults["globalSteps"]), int(defaults["vertexSteps"])) == (
        settings.level, settings.global_steps, settings.vertex_steps)
    assert float(defaults["contourBlend"]) == settings.contour_blend_mm
