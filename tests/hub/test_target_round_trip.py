"""A pipeline with a target network makes the Hub round trip: pushed with its target, pulled in a fresh process with
nothing but the repo id, its ``out.models[i]`` score exactly what the in-memory models scored before the push.

Two processes run against one server (see ``hub_client.py``):

* ``client``: builds pipelines with a tiny transformers target (ViT head), a tiny diffusers target (the MNIST-1D CNN,
  pushed with its bundled source), a ``PyTorchModelHubMixin`` MLP and a plain ``nn.Sequential`` (their weights only:
  no code is pushed or imported), scores the generated models in memory, pushes, then drops the pipelines and their
  targets;
* ``puller``: a fresh process that waits for the pushes, pulls with ``PDiffPipeline.from_pretrained(repo_id)`` (with
  ``target_class=MixMLP`` for the Hub mixin, ``target=`` an untrained ``nn.Sequential`` for the plain module, which is
  filled from the repo) and scores ``out.models[i]`` with the same seed and data.
"""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub_client import TIMEOUT, USER, Recorder, hub_session, shared_conftest, step  # noqa: E402

REPOS = {"vit": f"{USER}/pdiff-vit-head", "cnn": f"{USER}/pdiff-cnn-norms", "mix": f"{USER}/pdiff-mix-mlp",
         "plain": f"{USER}/pdiff-plain-mlp"}
NUM_MODELS, STEPS, SEED = 4, 5, 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with hub_session(tmp_path_factory.mktemp("hub-target"), __file__, roles=("puller", "client")) as records:
        yield records


@pytest.mark.parametrize("kind", sorted(REPOS))
def test_pulled_models_score_exactly_what_the_in_memory_models_scored(run, kind):
    before = step(run, "client", kind)
    after = step(run, "puller", kind)
    assert after["target_class"] == before["target_class"] and after["num_models"] == NUM_MODELS
    assert after["accuracy"] == before["accuracy"] == before["batched_accuracy"]  # exact: equal percentages
    assert after["logits"] == before["logits"]  # bit-identical outputs of every generated network
    assert after["params"] == before["params"]
    assert "target/config.json" in before["repo_files"] or kind == "plain"  # a plain module has no config
    assert any(f.startswith("target/") and f.endswith(".safetensors") for f in before["repo_files"])
    assert before["target_dropped"]


def test_hub_mixin_and_plain_targets_travel_as_weights_only(run):
    for kind, card_load in (("mix", "target_class=MixMLP"), ("plain", "target=Sequential(...)")):
        before = step(run, "client", kind)
        files = before["repo_files"]
        assert "target/model.safetensors" in files and "target_fingerprint.json" in files
        assert not [f for f in files if f.startswith("target/") and f.endswith(".py")]  # no code for the target
        assert card_load in before["card"]
    assert "target/config.json" in step(run, "client", "mix")["repo_files"]  # the mixin's init arguments
    plain = step(run, "puller", "plain")
    assert plain["filled_given_instance"] and plain["target_module"] == "torch.nn.modules.container"
    assert step(run, "puller", "mix")["target_module"] == "__main__"  # the caller's class, never the repo's


def test_pulled_target_is_a_fresh_module_with_its_own_weights(run):
    after = step(run, "puller", "vit")
    assert after["target_module"].startswith("transformers.")
    cnn = step(run, "puller", "cnn")
    assert cnn["target_module"] == "pdiff_hf.tasks.mnist1d_cnn"  # the safe loader uses pdiff_hf's own class
    card = step(run, "client", "vit")["card"]
    assert f'PDiffPipeline.from_pretrained("{REPOS["vit"]}")' in card and "net = out.models[0]" in card
    assert run["seconds"] < TIMEOUT


# ==================================================================================================== both sides
def _mix_class():
    """A ``PyTorchModelHubMixin`` MLP class, defined in the process that runs this file (``__main__``)."""
    from huggingface_hub import PyTorchModelHubMixin
    from torch import nn

    class MixMLP(nn.Module, PyTorchModelHubMixin):
        def __init__(self, in_features: int = 12, hidden: int = 16, num_classes: int = 3):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.ReLU())
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    MixMLP.__module__ = "__main__"
    return MixMLP


def _plain_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _target_and_data(kind: str):
    """``(target, layout, inputs, labels)``: a tiny target network and fixed data, equal in every process."""
    import torch

    from pdiff_hf import ParamLayout

    gen = torch.Generator().manual_seed(1)
    if kind in ("mix", "plain"):
        torch.manual_seed(0)
        target = (_mix_class()(hidden=16) if kind == "mix" else _plain_mlp()).eval()
        layout = ParamLayout.from_module(target, include="head.*" if kind == "mix" else "3.*")
        inputs = torch.randn(32, 12, generator=gen)
    elif kind == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        torch.manual_seed(0)
        config = ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, num_labels=3)  # fmt: skip
        target = ViTForImageClassification(config).eval()
        layout = ParamLayout.from_module(target, include="classifier.*")
        inputs = torch.randn(32, 3, 8, 8, generator=gen)
    else:
        from pdiff_hf.tasks import MNIST1DCNN

        torch.manual_seed(0)
        target = MNIST1DCNN(in_length=12, channels=4, num_classes=3).eval()
        layout = ParamLayout.from_module(target, last_norm_layers=2, include_buffers=True)
        inputs = torch.randn(32, 1, 12, generator=gen)
    return target, layout, inputs, torch.randint(0, 3, (32,), generator=gen)


def _score(models, inputs, labels) -> dict:
    """Accuracy (%) and logits of each network of ``out.models``."""
    import torch

    accuracy, logits = [], []
    with torch.no_grad():
        for model in models:
            out = model(inputs)
            out = getattr(out, "logits", out)
            accuracy.append(float((out.argmax(-1) == labels).float().mean() * 100.0))
            logits.append(out.tolist())
    return {"accuracy": accuracy, "logits": logits}


def _generate(pipe):
    import torch

    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(SEED)
    return pipe(num_models=NUM_MODELS, num_inference_steps=STEPS, generator=gen, output_type="model")


# ==================================================================================================== client side
def client_main(work: Path) -> None:
    import gc
    import weakref

    import torch

    torch.set_num_threads(1)
    from huggingface_hub import HfApi, ModelCard

    from pdiff_hf import PDiffPipeline, evaluate_parameters

    rec = Recorder(work / "client.json")
    api = HfApi()
    for kind, repo in REPOS.items():
        with rec.step(kind) as r:
            target, layout, inputs, labels = _target_and_data(kind)
            pipe, _ = shared_conftest().make_tiny_pipeline(layout)
            pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, target=target)
            out = _generate(pipe)
            scores = _score(out.models, inputs, labels)
            vectors = out.models.vectors
            batched = evaluate_parameters(target, layout, vectors, inputs, labels)  # the vmap path, in memory
            pipe.push_to_hub(repo)
            target_class = type(target).__name__
            # drop every local reference to the target: the puller has nothing but the repo
            alive = weakref.ref(target)
            del pipe, out, target
            gc.collect()
            r.update(
                target_class=target_class,
                target_dropped=alive() is None,
                params=vectors.tolist(),
                batched_accuracy=batched.tolist(),
                repo_files=api.list_repo_files(repo),
                card=ModelCard.load(repo).text,
                **scores,
            )
        (work / f"{kind}.flag").write_text(repo)
    rec.save(finished=True)


# ==================================================================================================== puller side
def puller_main(work: Path) -> None:
    """A fresh process: nothing but the repo ids."""
    rec = Recorder(work / "puller.json")
    import torch

    torch.set_num_threads(1)
    from pdiff_hf import PDiffPipeline

    deadline = time.time() + TIMEOUT - 30
    for kind, repo in REPOS.items():
        while not (work / f"{kind}.flag").exists():
            client = json.loads((work / "client.json").read_text()) if (work / "client.json").exists() else {}
            if time.time() > deadline or "error" in client.get(kind, {}):
                rec.save(finished=True, waited=f"the client never pushed {kind}")
                return
            time.sleep(0.2)
        with rec.step(kind) as r:
            _, _, inputs, labels = _target_and_data(kind)  # the data only; the target comes from the repo
            if kind == "mix":
                pipe = PDiffPipeline.from_pretrained(repo, target_class=MIX_CLASS)
            elif kind == "plain":
                torch.manual_seed(123)
                given = _plain_mlp()  # untrained: filled from the repo's target/model.safetensors
                pipe = PDiffPipeline.from_pretrained(repo, target=given)
                r["filled_given_instance"] = pipe.target is given
            else:
                pipe = PDiffPipeline.from_pretrained(repo)
            out = _generate(pipe)
            r.update(
                target_class=type(pipe.target).__name__,
                target_module=type(pipe.target).__module__,
                num_models=len(out.models),
                params=out.models.vectors.tolist(),
                **_score(out.models, inputs, labels),
            )
    rec.save(finished=True)


if __name__ == "__main__":
    MIX_CLASS = _mix_class()
    role, work = sys.argv[1], Path(sys.argv[2])
    {"client": client_main, "puller": puller_main}[role](work)
