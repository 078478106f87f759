"""``import pdiff_hf`` is lazy: no heavy library is imported until a public name is used, and every name resolves."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pdiff_hf

HEAVY = ("diffusers", "datasets", "transformers", "matplotlib")
ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_is_lazy_and_every_public_name_resolves():
    result = _python(
        f"""
import importlib, json, sys
import pdiff_hf
heavy = {HEAVY!r}
after_import = sorted(m for m in heavy if m in sys.modules)
torch_after_import = "torch" in sys.modules
import pdiff_hf.tasks, pdiff_hf.errors
after_tasks = sorted(m for m in heavy if m in sys.modules)
wrong = []
for module, names in pdiff_hf._import_structure.items():
    mod = importlib.import_module("pdiff_hf." + module)
    for name in names:
        if getattr(pdiff_hf, name) is not getattr(mod, name):
            wrong.append(name)
print(json.dumps({{"after_import": after_import, "torch": torch_after_import, "after_tasks": after_tasks,
                  "wrong": wrong, "pipeline": pdiff_hf.PDiffPipeline.__name__, "fit": pdiff_hf.fit_pdiff.__name__}}))
"""
    )
    assert result["after_import"] == [], f"import pdiff_hf imported {result['after_import']}"
    assert not result["torch"], "import pdiff_hf imported torch"
    assert result["after_tasks"] == [], f"import pdiff_hf.tasks imported {result['after_tasks']}"
    assert result["wrong"] == []
    assert result["pipeline"] == "PDiffPipeline" and result["fit"] == "fit_pdiff"


def test_public_names_dir_and_type_checking_imports_agree():
    structure = pdiff_hf._import_structure
    names = {n for ns in structure.values() for n in ns}
    assert set(pdiff_hf.__all__) == names | {"__version__"}
    assert len(names) == sum(len(ns) for ns in structure.values()), "a name is exported by two submodules"
    expected = {  # the public API (new: load_checkpoint_dataset)
        "PDiffPipeline", "PDiffPipelineOutput", "ParamLayout", "ParamSpec", "ParameterAutoencoder", "LatentUNet1DModel",
        "TokenParameterAutoencoder", "LinearParameterAutoencoder",
        "PDiffConfig", "build_models", "fit_pdiff", "train_autoencoder", "train_denoiser", "collect_checkpoints",
        "collect_from_runs", "train_classifier", "ClassificationSplits", "evaluate_parameters", "select_best",
        "predict_with_parameters", "summarize_accuracies", "NoveltyReport", "analyze_novelty", "novelty_verdict",
        "check_dataset_layout", "checkpoint_params", "get_layout", "make_checkpoint_dataset", "set_layout",
        "split_by_runs", "load_checkpoint_dataset", "PDiffError", "SelectionError", "LayoutMismatchError",
        "DimensionMismatchError", "NonFiniteParametersError", "CheckpointDatasetError", "SchedulerError", "HubError",
        "OutputFolderError", "OutputFolderInUseError", "PDiffConfigError", "UnknownTaskError",
        "PipelineInputError", "TrainingScriptError", "GeneratedModels", "MissingLabelsError", "ModelOutputError",
        "CheckpointFileError", "ConditionError", "PeftLayoutError", "checkpoints_from_files", "checkpoints_from_state_dicts", "checkpoints_from_hub",
        "PDiffCheckpointCallback", "checkpoint_conditions", "get_condition_names", "set_condition_names",
        "collect_conditional_checkpoints", "cross_task_matrix", "fit_shuffled_control", "generate_per_condition",
        "per_condition_summary", "task_accuracies", "collect_branches", "RecalibrationError", "recalibrate_batchnorm",
        "recalibrate_parameters", "MixedRunsWarning", "check_weight_averaging",
        "AlignmentError", "PermutationSpec", "align_to", "apply_permutation", "permutation_spec",
        "spec_from_module", "weight_matching", "TargetMismatchError", "CollectionError", "GeneralizationTestError",
    }  # fmt: skip
    assert names == expected
    assert names <= set(dir(pdiff_hf)) and {"tasks", "hub", "novelty", "pipelines"} <= set(dir(pdiff_hf))

    # the TYPE_CHECKING block imports exactly _import_structure, so type checkers and IDEs see the same API
    tree = ast.parse(Path(pdiff_hf.__file__).read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        seen.setdefault(node.module, []).extend(a.name for a in node.names)
    assert {k: sorted(v) for k, v in seen.items()} == {k: sorted(v) for k, v in structure.items()}


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pdiff_hf.nope  # noqa: B018
    assert not hasattr(pdiff_hf, "CLIError")  # not part of the top-level API (pdiff_hf.errors.CLIError)
    assert pdiff_hf.errors.PDiffError is pdiff_hf.PDiffError
    assert pdiff_hf.__version__


def _package_modules():
    """``{module name: file}`` for every module of the installed package (``pipelines/`` is ``pdiff_hf.pipelines``)."""
    roots = {"pdiff_hf": ROOT / "pdiff_hf", "pdiff_hf.pipelines": ROOT / "pipelines"}
    modules = {}
    for prefix, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([prefix] + parts)] = path
    return modules


def _module_imports(name: str, path: Path, modules: dict) -> set:
    """The pdiff_hf modules that ``name`` imports at module level (imports inside functions run later and are left out;
    ``if TYPE_CHECKING:`` blocks are left out as well)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.startswith("pdiff_hf"):
            target = node.module
        else:
            continue
        for alias in node.names:  # `from .pkg import module` imports the module
            if f"{target}.{alias.name}" in modules:
                found.add(f"{target}.{alias.name}")
        if target in modules:
            found.add(target)
    found.discard(name)
    return found


def test_no_import_circles():
    """The module-level import graph of the package has no cycle (a lower layer never imports a higher one)."""
    modules = _package_modules()
    graph = {name: _module_imports(name, path, modules) for name, path in modules.items()}
    # a package's __init__ runs before its modules: an edge to a package is an edge to its __init__ only
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_imports_alone_in_random_order():
    """Every module imports in a fresh interpreter, the modules in a shuffled order (an import circle or an import
    that only works after another module was loaded fails here)."""
    names = sorted(_package_modules())
    result = _python(
        f"""
import importlib, json, random, traceback
names = {names!r}
random.Random(0).shuffle(names)
failed = {{}}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{{type(err).__name__}}: {{err}}"
print(json.dumps(failed))
"""
    )
    assert result == {}


def test_setup_installs_every_package_folder():
    """A non-editable install ships only the packages setup.py lists: every folder with an ``__init__.py`` is there."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    listed = set(ast.literal_eval(next(k.value for k in call.keywords if k.arg == "packages")))
    folders = {"pdiff_hf." + ".".join(p.parent.relative_to(ROOT / "pdiff_hf").parts) for p in (ROOT / "pdiff_hf").rglob("__init__.py")}
    folders = {f.rstrip(".") for f in folders} | {"pdiff_hf.pipelines", "pdiff_hf.hub_cards"}
    assert folders <= listed, sorted(folders - listed)
