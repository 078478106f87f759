"""Reading files of an untrusted folder safely: every path resolves inside the folder (a symlink or a name leaving
it is a :class:`HubError`; a Hub snapshot's links only into its repo's ``blobs/``), JSON with a size and nesting
limit checked on the text before parsing, and safetensors headers (names and shapes, no tensor read). The checks
built on them are in :mod:`pdiff_hf.hub.validate`."""

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import HubError

MAX_JSON_BYTES = 16 * 2**20  # a whole network's parameter layout is tens of KB
MAX_JSON_DEPTH = 32
# config keys that are not sizes but may legitimately exceed a tiny file's value count
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


# ------------------------------------------------------------------------------------------------ paths
def allowed_roots(folder: Path) -> Tuple[Path, ...]:
    """Where the files of ``folder`` may resolve to: the folder itself, and for a Hub cache snapshot
    (``…/models--o--n/snapshots/<commit>``) the same repo's ``blobs/`` folder."""
    folder = Path(folder)
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        roots.append((folder.parent.parent / "blobs").resolve())
    return tuple(roots)


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_inside(folder: Path, name: str, label: str, roots: Optional[Tuple[Path, ...]] = None) -> Path:
    """The resolved path of ``name`` (relative to ``folder``); :class:`HubError` if it is absolute, climbs out with
    ``..``, or is (or passes through) a symlink that resolves outside the folder."""
    roots = roots or allowed_roots(folder)
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise HubError(f"{label}: expected a file name inside the folder, found {name!r}")
    parts = Path(name).parts
    if ".." in parts:
        raise HubError(f"{label}: expected a file name inside the folder, found {name!r}, which leaves it")
    resolved = (Path(folder) / name).resolve()
    if not _inside(resolved, roots):
        raise HubError(
            f"{label}: expected {name} to be a file inside the folder, found a link to {resolved}, outside it"
        )
    return resolved


def check_folder_paths(folder: Path, label: str, max_entries: int = 100_000) -> None:
    """Every entry below ``folder`` (not following links) resolves inside it (or a Hub snapshot's ``blobs/``);
    :class:`HubError` naming the first link that leaves, and for more than ``max_entries`` entries."""
    folder = Path(folder)
    roots = allowed_roots(folder)
    count = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        for entry in dirs + files:
            count += 1
            if count > max_entries:
                raise HubError(f"{label}: expected at most {max_entries} files in the folder, found more")
            path = Path(top) / entry
            if path.is_symlink() and not _inside(path.resolve(), roots):
                rel = path.relative_to(folder).as_posix()
                raise HubError(
                    f"{label}: expected {rel} to be a file inside the folder, found a link to {path.resolve()}, "
                    "outside it (links are never followed out of a folder being loaded)"
                )


# ------------------------------------------------------------------------------------------------ JSON
def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def read_json_limited(path: Path, label: str, rel: Optional[str] = None, max_bytes: int = MAX_JSON_BYTES,
                      max_depth: int = MAX_JSON_DEPTH) -> Any:  # fmt: skip
    """The JSON value in ``path``, read only if it has at most ``max_bytes`` bytes and ``max_depth`` levels of
    nesting; :class:`HubError` naming ``rel`` (the name in the folder) otherwise or when it is not JSON."""
    rel = rel or Path(path).name
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise HubError(f"{label}: expected {rel} to have at most {max_bytes} bytes, found {size}")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HubError(f"{label}: expected {rel} to be a readable UTF-8 JSON file, found {err}") from None
    if len(raw) > max_bytes:  # grew since stat
        raise HubError(f"{label}: expected {rel} to have at most {max_bytes} bytes, found more")
    depth = json_depth(text)
    if depth > max_depth:
        raise HubError(f"{label}: expected {rel} to nest at most {max_depth} levels deep, found {depth}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise HubError(f"{label}: expected {rel} to be a JSON file, found unreadable content ({err})") from None


# ------------------------------------------------------------------------------------------------ safetensors
def weight_files(sub: Path, label: str, variant: Optional[str] = None, base: str = "diffusion_pytorch_model",
                 roots: Optional[Tuple[Path, ...]] = None) -> List[Path]:  # fmt: skip
    """The safetensors files ``from_pretrained`` reads in component folder ``sub``: ``<base>[.variant].safetensors``,
    or the shards its ``.safetensors.index[.variant].json`` names (each resolved inside the folder)."""
    single = f"{base}.{variant}.safetensors" if variant else f"{base}.safetensors"
    index = f"{base}.safetensors.index.{variant}.json" if variant else f"{base}.safetensors.index.json"
    folder = sub.parent
    if variant and not any((sub / n).exists() for n in (single, index)):  # as the loader: variant where present
        return weight_files(sub, label, None, base, roots)
    if (sub / single).exists() or (sub / single).is_symlink():
        return [resolve_inside(folder, f"{sub.name}/{single}", label, roots)]
    if (sub / index).is_file():
        document = read_json_limited(resolve_inside(folder, f"{sub.name}/{index}", label, roots), label,
                                     f"{sub.name}/{index}")  # fmt: skip
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise HubError(f"{label}: expected {sub.name}/{index} to hold a weight_map, found {type(weight_map).__name__}")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or "/" in name:
                raise HubError(f"{label}: expected shard file names in {sub.name}/{index}, found {name!r}")
        return [resolve_inside(folder, f"{sub.name}/{name}", label, roots) for name in names]
    raise HubError(f"{label}: expected {sub.name}/{single}, found none")


def safetensors_header(paths: Iterable[Path], label: str) -> Dict[str, Tuple[int, ...]]:
    """Tensor name -> shape over the safetensors files ``paths``, from their headers only (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    shapes: Dict[str, Tuple[int, ...]] = {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    if key in shapes:
                        raise HubError(f"{label}: expected each tensor in one file, found {key!r} twice")
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (OSError, SafetensorError) as err:
            raise HubError(f"{label}: expected {path.name} to be a complete safetensors file, found one that is not "
                           f"({err})") from None  # fmt: skip
    return shapes


def value_count(shapes: Dict[str, Tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


