"""Self-contained code files that travel with a pushed pipeline, for ``trust_remote_code=True`` loading.

A folder written by ``PDiffPipeline.save_pretrained`` or a repo pushed by :func:`pdiff_hf.hub.push_pipeline` can be
loaded with stock diffusers, without pdiff_hf installed::

    DiffusionPipeline.from_pretrained("owner/name" or folder, trust_remote_code=True)

diffusers 0.42 loads a component as custom code when its folder holds ``<library_name>.py`` (the first entry of the
component in ``model_index.json``), and a pipeline class from a ``.py`` at the repo root named by
``"_class_name": [module, class]``. Those files may only import what a stock environment has (torch, diffusers, the
standard library): diffusers copies a single file and imports every top-level package it names.

The files are not written by hand: :func:`bundle` concatenates the sources of the pdiff_hf modules a class needs
(found by following its ``pdiff_hf`` imports), drops those imports, and checks that the result names nothing from
pdiff_hf and defines no name twice. So the uploaded code is exactly the code that made the weights.
"""

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import RemoteCodeError

PACKAGE = "pdiff_hf"
# Module file names inside the pushed repo (``<folder>/<name>.py``) and the classes they provide.
PIPELINE_MODULE = "pipeline_pdiff"
AUTOENCODER_MODULE = "pdiff_autoencoder"
# the modules bundled into it: every autoencoder class of pdiff_hf
AUTOENCODER_ENTRIES = (
    "pdiff_hf.models.autoencoder",
    "pdiff_hf.models.token_autoencoder",
    "pdiff_hf.models.linear_autoencoder",
)
DENOISER_MODULE = "pdiff_denoiser"
# The code of a target network whose class is neither a transformers nor a diffusers class (``target/pdiff_target.py``).
TARGET_MODULE = "pdiff_target"
# Methods of bundled classes that only make sense with pdiff_hf installed (they import pdiff_hf.hub lazily); the
# remote code falls back to the diffusers implementation of these. A method importing pdiff_hf that is not listed
# here stops the bundling with RemoteCodeError.
DROPPABLE_METHODS = ("from_pretrained", "push_to_hub", "save_pretrained", "download")
_STUB_BASE = "_PDiffComponentModel"


@dataclass
class _Module:
    name: str
    path: Path
    source: str
    tree: ast.Module
    deps: List[str] = field(default_factory=list)


def _module_name_of(node: ast.ImportFrom, current: str, is_package: bool) -> Optional[str]:
    """Absolute module name of an ``ImportFrom`` if it points into pdiff_hf, else ``None``."""
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))
    if node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        return node.module
    return None


def _load(name: str) -> _Module:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"expected a Python source file for module {name}, found {spec and spec.origin}")
    path = Path(spec.origin)
    source = path.read_text(encoding="utf-8")
    return _Module(name, path, source, ast.parse(source, filename=str(path)))


def _is_pdiff_import(node: ast.AST, module: _Module) -> bool:
    is_package = module.path.name == "__init__.py"
    if isinstance(node, ast.ImportFrom):
        return _module_name_of(node, module.name, is_package) is not None
    if isinstance(node, ast.Import):
        return any(a.name == PACKAGE or a.name.startswith(PACKAGE + ".") for a in node.names)
    return False


def _collect(entries: Sequence[str], stubs: Sequence[str]) -> List[_Module]:
    """Modules needed by ``entries`` in dependency order (dependencies first, each module once), excluding
    ``stubs``."""
    order: List[_Module] = []
    seen: Dict[str, Optional[_Module]] = {}

    def visit(name: str, chain: Tuple[str, ...]) -> None:
        if name in stubs:
            return
        if name in seen:
            if seen[name] is None:
                raise RemoteCodeError(f"circular pdiff_hf imports cannot be bundled: {' -> '.join(chain + (name,))}")
            return
        seen[name] = None
        module = _load(name)
        for node in module.tree.body:
            if isinstance(node, ast.Import) and _is_pdiff_import(node, module):
                raise RemoteCodeError(
                    f"{module.path}:{node.lineno}: `import {node.names[0].name}` cannot be bundled; "
                    "use `from <module> import <names>`"
                )
            if isinstance(node, ast.ImportFrom):
                target = _module_name_of(node, name, module.path.name == "__init__.py")
                if target is None:
                    continue
                spec = importlib.util.find_spec(target)
                if spec is None:
                    raise RemoteCodeError(f"{module.path}:{node.lineno}: module {target} not found")
                if spec.submodule_search_locations:  # a package: `from . import module` would bind a module
                    submodules = [a.name for a in node.names if importlib.util.find_spec(f"{target}.{a.name}")]
                    if submodules:
                        raise RemoteCodeError(
                            f"{module.path}:{node.lineno}: importing modules ({submodules} from {target}) cannot be "
                            "bundled; import names from the module that defines them"
                        )
                module.deps.append(target)
                visit(target, chain + (name,))
        seen[name] = module
        order.append(module)

    for entry in entries:
        visit(entry, ())
    return order


def _defined_names(tree: ast.Module) -> List[str]:
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return [n for n in names if n not in ("__all__", "logger")]


def _rewrite(module: _Module, stubs: Sequence[str]) -> Tuple[str, bool]:
    """Source of ``module`` with its pdiff_hf imports replaced (aliases become assignments, stubbed classes become
    the component base class) and droppable methods that import pdiff_hf removed. Returns (source, uses_future)."""
    lines = module.source.splitlines()
    edits: List[Tuple[int, int, List[str]]] = []  # (first line, last line) 1-based inclusive -> replacement
    uses_future = False
    is_package = module.path.name == "__init__.py"
    for node in module.tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            uses_future = uses_future or any(a.name == "annotations" for a in node.names)
            edits.append((node.lineno, node.end_lineno, []))
        elif isinstance(node, ast.ImportFrom) and _module_name_of(node, module.name, is_package) is not None:
            target = _module_name_of(node, module.name, is_package)
            replacement = []
            for alias in node.names:
                if alias.name == "*":
                    raise RemoteCodeError(f"{module.path}:{node.lineno}: star imports cannot be bundled")
                if target in stubs:
                    replacement.append(f"{alias.asname or alias.name} = {_STUB_BASE}  # class of a pipeline component")
                elif alias.asname and alias.asname != alias.name:
                    replacement.append(f"{alias.asname} = {alias.name}")
            edits.append((node.lineno, node.end_lineno, replacement))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if any(_is_pdiff_import(sub, module) for sub in ast.walk(item)):
                    if item.name not in DROPPABLE_METHODS:
                        raise RemoteCodeError(
                            f"{module.path}:{item.lineno}: {node.name}.{item.name} imports pdiff_hf inside a method; "
                            "remote code cannot import pdiff_hf"
                        )
                    first = min([item.lineno] + [d.lineno for d in item.decorator_list])
                    edits.append((first, item.end_lineno, []))
    for first, last, replacement in sorted(edits, reverse=True):
        indent = lines[first - 1][: len(lines[first - 1]) - len(lines[first - 1].lstrip())]
        lines[first - 1 : last] = [indent + r for r in replacement]
    text = "\n".join(lines).strip("\n")
    leftover = [n for n in ast.walk(ast.parse(text)) if _is_pdiff_import(n, module)]
    if leftover:
        raise RemoteCodeError(f"{module.path}:{leftover[0].lineno}: a nested pdiff_hf import cannot be bundled")
    return text, uses_future


def bundle(entry: Union[str, Sequence[str]], stubs: Sequence[str] = (), title: str = "") -> str:
    """Concatenate ``entry`` and the pdiff_hf modules it imports into one self-contained module source.

    Args:
        entry: module name, e.g. ``"pdiff_hf.models.autoencoder"``, or several module names (one file defining the
            classes of all of them; a module they share is included once).
        stubs: pdiff_hf modules whose imported names are bound to diffusers' ``ModelMixin`` instead of being bundled
            (the pipeline module only annotates its components with their classes; the classes themselves come from
            the component folders).
    """
    from .. import __version__

    entries = (entry,) if isinstance(entry, str) else tuple(entry)
    modules = _collect(entries, stubs)
    owners: Dict[str, str] = {}
    parts, future = [], False
    for module in modules:
        for name in _defined_names(module.tree):
            if name in owners:
                raise RemoteCodeError(f"{name!r} is defined in both {owners[name]} and {module.name}; cannot bundle")
            owners[name] = module.name
        text, uses_future = _rewrite(module, stubs)
        future = future or uses_future
        rel = module.name.replace(".", "/") + ".py"
        parts.append(f"# {'-' * 100}\n# {rel}\n# {'-' * 100}\n{text}\n")
    header = [
        f'"""{title or ", ".join(entries)} — generated by pdiff_hf {__version__} from {", ".join(m.name for m in modules)}.',
        "",
        "Self-contained (torch, diffusers and the standard library only) so that",
        "`DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` works without pdiff_hf installed.",
        '"""',
    ]
    if future:
        header.append("from __future__ import annotations")
    if stubs:
        header.append(f"from diffusers.models.modeling_utils import ModelMixin as {_STUB_BASE}")
    source = _guard_import_scan("\n".join(header) + "\n\n" + "\n\n".join(parts))
    compile(source, f"<bundle of {', '.join(entries)}>", "exec")
    return source


# diffusers finds a remote module's requirements with these regexes (diffusers/utils/dynamic_modules_utils.py
# check_imports / get_relative_imports) and imports every top-level package they name, docstrings included.
_IMPORT_LINE = re.compile(r"^(\s*)(import\s+\S+\s*$|from\s+\S+\s+import)")


def _guard_import_scan(source: str) -> str:
    """Make sure diffusers' import scan finds no pdiff_hf or relative import: such lines can only be left in
    docstrings (real imports were removed); they get a ``>>> `` prompt so the scan skips them."""
    tree = ast.parse(source)
    in_string = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            in_string.update(range(node.lineno, node.end_lineno + 1))
    lines = source.split("\n")
    for i, line in enumerate(lines, start=1):
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        module = match.group(2).split()[1]
        if module.startswith(".") or module.split(".")[0] == PACKAGE:
            if i not in in_string:
                raise RemoteCodeError(f"line {i} of the bundle still imports {module}: {line.strip()!r}")
            lines[i - 1] = match.group(1) + ">>> " + line[len(match.group(1)) :]
    return "\n".join(lines)


def _target_code_module(target) -> Optional[str]:
    """The module whose source becomes ``target/pdiff_target.py``: ``None`` for no target or a transformers /
    diffusers class (stock libraries load those by name), else the module defining the target's class (a
    ``ModelMixin`` of pdiff_hf's tasks or of the user, bundled like pdiff_hf's own models)."""
    if target is None:
        return None
    module = type(target).__module__
    if module.split(".")[0] in ("transformers", "diffusers"):
        return None
    if module == "__main__" or importlib.util.find_spec(module) is None:
        raise RemoteCodeError(
            f"expected the target's class {type(target).__name__} to be defined in an importable module (its source "
            f"is uploaded as target/{TARGET_MODULE}.py), found module {module!r}; move the class into a .py file, "
            "or save with remote_code=False"
        )
    return module


def remote_code_files(target=None) -> Dict[str, str]:
    """``{path in repo: source}`` of the code files of a pushed pipeline; with a ``target`` network whose class is
    not a transformers or diffusers class, also its code as ``target/pdiff_target.py``."""
    files = {
        f"{PIPELINE_MODULE}.py": bundle(
            "pdiff_hf.pipelines.pipeline_pdiff",
            stubs=("pdiff_hf.models.autoencoder", "pdiff_hf.models.denoiser"),
            title="PDiffPipeline (p-diff, arXiv 2402.13144)",
        ),
        # one file defines every autoencoder class (their shared base once): the class name in model_index.json
        # picks one
        f"autoencoder/{AUTOENCODER_MODULE}.py": bundle(
            AUTOENCODER_ENTRIES, title="ParameterAutoencoder, TokenParameterAutoencoder, LinearParameterAutoencoder"
        ),
        f"denoiser/{DENOISER_MODULE}.py": bundle("pdiff_hf.models.denoiser", title="LatentUNet1DModel"),
    }
    module = _target_code_module(target)
    if module is not None:
        files[f"target/{TARGET_MODULE}.py"] = bundle(module, title=f"{type(target).__name__} (target network)")
    return files


def remote_model_index(model_index: Dict, target=None) -> Dict:
    """``model_index.json`` of a pushed pipeline: the pipeline and model classes point at the uploaded code files,
    schedulers (and transformers / diffusers target classes) stay library classes."""
    out = dict(model_index)
    out["_class_name"] = [PIPELINE_MODULE, "PDiffPipeline"]
    out["autoencoder"] = [AUTOENCODER_MODULE, (out.get("autoencoder") or [None, "ParameterAutoencoder"])[1]]
    out["denoiser"] = [DENOISER_MODULE, "LatentUNet1DModel"]
    if _target_code_module(target) is not None:
        out["target"] = [TARGET_MODULE, type(target).__name__]
    return out


__all__ = ["TARGET_MODULE", "RemoteCodeError", "bundle", "remote_code_files", "remote_model_index"]
