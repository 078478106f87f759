"""Which entries of an existing folder a pipeline save owns, for the all-or-nothing ``save_pretrained``
(:func:`pdiff_hf.utils.atomic_dir.atomic_folder`): the pipeline's files are replaced as one set, everything else in
the folder (a user's notes, checkpoints, the weights of another variant) is kept."""

import re
from typing import Callable, Optional

# top-level entries a pipeline save writes (model_index.json, card, layout, results, components, code files)
PIPELINE_ENTRIES = frozenset({
    "model_index.json", "README.md", "param_layout.json", "results.json", "target_fingerprint.json",
    "autoencoder", "denoiser", "scheduler", "target",
})  # fmt: skip
_WEIGHTS = re.compile(
    r"^(?:diffusion_pytorch_model|model)(?:-\d{5}-of-\d{5})?(?:\.(?P<v1>[^./]+))?\.safetensors$"
    r"|^(?:diffusion_pytorch_model|model)\.safetensors\.index(?:\.(?P<v2>[^./]+))?\.json$"
)


def pipeline_owns(variant: Optional[str] = None) -> Callable[[str], bool]:
    """``owns(rel)`` for a pipeline save of weights ``variant``: the top-level pipeline entries and code files, and
    everything inside a component folder except the weights of another variant (``save_pretrained(variant="fp16")``
    into a folder keeps its float32 weights, as diffusers does)."""

    def owns(rel: str) -> bool:
        top, _, inner = rel.partition("/")
        if not inner:
            return top in PIPELINE_ENTRIES or top.endswith(".py")
        if top not in PIPELINE_ENTRIES:
            return False
        match = _WEIGHTS.match(inner.rsplit("/", 1)[-1]) if "/" not in inner else None
        if match is not None and (match.group("v1") or match.group("v2")) != variant:
            return False  # weights of another variant
        return True

    return owns
