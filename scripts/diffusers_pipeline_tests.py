#!/usr/bin/env python
"""Run diffusers' own generic pipeline tests (``PipelineTesterMixin`` of ``tests/pipelines/test_pipelines_common.py``)
against ``PDiffPipeline`` with tiny components.

diffusers does not ship its tests in the wheel, so this needs a checkout of the diffusers repository (any commit whose
test helpers import with the installed diffusers) and the test requirements ``parameterized`` and ``requests_mock``:

    python scripts/diffusers_pipeline_tests.py --diffusers-repo ../diffusers [-- extra pytest arguments]

The script copies the checkout's ``tests/`` helpers into a temporary folder, writes a test class with pdiff_hf's
components next to them (an untrained conditional pipeline: ``num_conditions=2``, so guidance is exercised), and runs
pytest there. Tests that need an accelerator are skipped by diffusers itself. pdiff_hf's own tests of the same
conventions are ``tests/pipelines/test_pipeline_conventions.py``.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HARNESS = '''
import sys
import unittest

import torch

sys.path.insert(0, {project_tests!r})
from conftest import make_bn_mlp, make_tiny_models  # noqa: E402  (pdiff_hf's tiny test components)

from pdiff_hf import ParamLayout, PDiffPipeline  # noqa: E402
from pdiff_hf.training.training_utils import sampling_scheduler_for  # noqa: E402

from ..test_pipelines_common import PipelineTesterMixin  # noqa: E402

torch.set_num_threads(1)


class PDiffPipelineFastTests(PipelineTesterMixin, unittest.TestCase):
    pipeline_class = PDiffPipeline
    params = frozenset(["num_models", "condition", "guidance_scale"])
    batch_params = frozenset(["condition"])
    required_optional_params = frozenset(
        ["num_inference_steps", "generator", "latents", "output_type", "return_dict", "callback_on_step_end",
         "callback_on_step_end_tensor_inputs"]
    )
    test_attention_slicing = False
    test_xformers_attention = False
    test_layerwise_casting = False
    test_group_offloading = False

    def get_dummy_components(self):
        layout = ParamLayout.from_module(make_bn_mlp(), last_norm_layers=2, include_buffers=True)
        ae, denoiser = make_tiny_models(layout, num_conditions=2)
        params = torch.rand(10, layout.dim, generator=torch.Generator().manual_seed(0)) + 0.5
        ae.fit_normalization(params)
        ae.set_latent_scaling(params)
        denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(params).abs().max()), 4))
        return {{"autoencoder": ae, "denoiser": denoiser, "scheduler": sampling_scheduler_for(denoiser), "target": None}}

    def get_dummy_inputs(self, device, seed=0):
        return {{"num_inference_steps": 2, "generator": torch.Generator().manual_seed(seed), "condition": 0,
                "guidance_scale": 2.0, "output_type": "np"}}
'''
# what test_pipelines_common.py imports from the checkout's tests/
NEEDED = ["__init__.py", "testing_utils.py", "pipelines/__init__.py", "pipelines/test_pipelines_common.py", "models",
          "others"]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusers-repo", required=True, help="a checkout of github.com/huggingface/diffusers")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    source = Path(args.diffusers_repo) / "tests"
    if not (source / "pipelines" / "test_pipelines_common.py").is_file():
        print(f"error: expected a diffusers checkout with tests/pipelines/test_pipelines_common.py, found none in "
              f"{args.diffusers_repo}", file=sys.stderr)  # fmt: skip
        return 2
    project_tests = str(Path(__file__).resolve().parent.parent / "tests")
    with tempfile.TemporaryDirectory(prefix="pdiff-diffusers-tests-") as tmp:
        root = Path(tmp)
        for rel in NEEDED:
            src, dst = source / rel, root / "tests" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
        harness = root / "tests" / "pipelines" / "pdiff"
        harness.mkdir()
        (harness / "__init__.py").write_text("")
        (harness / "test_pdiff_pipeline.py").write_text(HARNESS.format(project_tests=project_tests))
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-W", "ignore",
               "tests/pipelines/pdiff/test_pdiff_pipeline.py", *args.pytest_args]  # fmt: skip
        return subprocess.call(cmd, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
