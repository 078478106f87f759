"""Conditional generation: condition ids and names, classifier-free guidance, errors, save/load (also by stock
diffusers with ``trust_remote_code=True``), and ``fit_pdiff(conditions=...)``."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pdiff_hf import ConditionError, ParamLayout, PDiffConfig, PDiffPipeline, fit_pdiff

CENTERS = torch.tensor([1.0, -1.0, 0.0])[:, None] * torch.linspace(0.5, 1.5, 16)[None]  # (3 conditions, D=16)
NAMES = ["pos", "neg", "zero"]


def _data(n: int = 60):
    conditions = torch.arange(n) % 3
    params = CENTERS[conditions] + 0.05 * torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
    return params, conditions


def _config(**kwargs):
    base = dict(ae_block_out_channels=(8, 8), latent_channels=2, denoiser_block_out_channels=(8, 16), ae_steps=100,
                denoiser_steps=150, lr_warmup_steps=10)  # fmt: skip
    return PDiffConfig(**{**base, **kwargs})


@pytest.fixture(scope="module")
def cond_pipe():
    params, conditions = _data()
    layout = ParamLayout.from_list([{"name": "w", "shape": [16]}])
    pipe = fit_pdiff(params, layout, _config(), progress=False, conditions=conditions, condition_names=NAMES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, n=12, seed=0, **kwargs):
    return pipe(num_models=n, num_inference_steps=10, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_conditional_pipeline_records_its_conditions(cond_pipe):
    assert cond_pipe.num_conditions == 3 and cond_pipe.condition_names == NAMES
    assert cond_pipe.denoiser.config.num_conditions == 3
    assert cond_pipe.get_condition_ids(["neg", 0, "zero"]) == [1, 0, 2]


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_generated_parameters_follow_the_requested_condition(cond_pipe, guidance_scale):
    for c in range(3):
        out = _sample(cond_pipe, condition=c, guidance_scale=guidance_scale)
        assert torch.equal(out.conditions, torch.full((12,), c))
        distances = torch.stack([(out.params - CENTERS[k]).abs().mean(dim=1) for k in range(3)])  # (3, 12)
        assert (distances.argmin(dim=0) == c).all(), (c, distances)


def test_names_lists_and_per_model_generators_agree(cond_pipe):
    by_id = _sample(cond_pipe, condition=1).params
    assert torch.equal(_sample(cond_pipe, condition="neg").params, by_id)
    assert torch.equal(_sample(cond_pipe, condition=torch.tensor(1)).params, by_id)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    mixed = cond_pipe(num_models=3, num_inference_steps=10, generator=gens, condition=[2, 0, "neg"])
    assert mixed.conditions.tolist() == [2, 0, 1]
    alone = cond_pipe(num_models=1, num_inference_steps=10, generator=[torch.Generator().manual_seed(2)],
                      condition=1).params  # fmt: skip
    torch.testing.assert_close(mixed.params[2:], alone, rtol=1e-4, atol=1e-5)


def test_guidance_combines_conditional_and_null_predictions(cond_pipe):
    """guidance_scale = 0 is exactly the null-condition prediction, so it samples what condition=None samples;
    guidance 4 moves samples further from the null mean than guidance 1."""
    null = _sample(cond_pipe).params
    zero = _sample(cond_pipe, condition=0, guidance_scale=0.0).params
    torch.testing.assert_close(zero, null, rtol=1e-4, atol=1e-5)
    assert _sample(cond_pipe).conditions is None
    g1 = _sample(cond_pipe, condition=0, guidance_scale=1.0).params
    g4 = _sample(cond_pipe, condition=0, guidance_scale=4.0).params
    assert not torch.allclose(g1, g4)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(condition=3), r"ids in \[0, 3\), found \[3\]"), (dict(condition=-1), r"ids in \[0, 3\), found \[-1\]"),
     (dict(condition="other"), r"name in \['pos', 'neg', 'zero'\]"), (dict(condition=1.5), "found float"),
     (dict(condition=[0, 1]), r"list of num_models \(4\)"), (dict(condition=[]), "at least one"),
     (dict(condition=torch.tensor([0.0, 1.0, 1.0, 1.0])), "integer tensor"),
     (dict(guidance_scale=2.0), "expected a condition for classifier-free guidance"),
     (dict(condition=0, guidance_scale=float("nan")), "finite number"),
     (dict(condition=0, guidance_scale=-1), "finite number"), (dict(condition=0, guidance_scale="2"), "finite")],
)  # fmt: skip
def test_bad_conditions_fail_before_any_step(cond_pipe, kwargs, match):
    calls = []
    with pytest.raises(ConditionError, match=match):
        cond_pipe(num_models=4, callback_on_step_end=lambda *a: calls.append(1) or {}, **kwargs)
    assert calls == []


def test_unconditional_pipeline_refuses_conditions_and_guidance(tiny_pipeline):
    assert tiny_pipeline.num_conditions == 0 and tiny_pipeline.condition_names is None
    with pytest.raises(ConditionError, match="unconditional pipeline"):
        tiny_pipeline(num_models=2, condition=0)
    with pytest.raises(ConditionError, match="unconditional pipeline"):
        tiny_pipeline(num_models=2, guidance_scale=3.0)
    assert tiny_pipeline(num_models=2, num_inference_steps=2).conditions is None


def test_fit_pdiff_refuses_bad_conditions():
    params, conditions = _data(12)
    layout = ParamLayout.from_list([{"name": "w", "shape": [16]}])
    cases = [
        (dict(conditions=conditions[:5]), r"one condition id per row \(12\), found 5"),
        (dict(conditions=conditions.float()), "integer tensor"),
        (dict(conditions=conditions - 1), r"ids in \[0, 2\), found \[-1\]"),
        (dict(conditions=conditions, config=_config(num_conditions=2)), r"ids in \[0, 2\), found \[2\]"),
        (dict(config=_config(num_conditions=2)), "expected conditions"),
        (dict(conditions=conditions, condition_names=["a"]), "expected 3 condition_names"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ConditionError, match=match):
            fit_pdiff(params, layout, **{"config": _config(), **kwargs}, progress=False)


STOCK_LOADER = """
import importlib.abc, json, sys, torch
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pdiff_hf" or name.startswith("pdiff_hf."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out = pipe(num_models=4, num_inference_steps=10, generator=torch.Generator().manual_seed(0), condition="neg",
           guidance_scale=2.0)
print(json.dumps({"params": out.params.tolist(), "conditions": out.conditions.tolist(),
                  "pdiff": [m for m in sys.modules if m.startswith("pdiff_hf")]}))
"""


def test_save_and_load_keep_the_conditioning(cond_pipe, tmp_path):
    cond_pipe.save_pretrained(tmp_path)
    loaded = PDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.num_conditions == 3 and loaded.condition_names == NAMES
    expected = _sample(cond_pipe, n=4, condition="neg", guidance_scale=2.0)
    assert torch.equal(_sample(loaded, n=4, condition="neg", guidance_scale=2.0).params, expected.params)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", STOCK_LOADER, str(tmp_path)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pdiff"] == [] and result["conditions"] == [1, 1, 1, 1]
    torch.testing.assert_close(torch.tensor(result["params"]), expected.params, rtol=0, atol=1e-6)
