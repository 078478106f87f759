"""Every demo folder is a self-contained repo: ``pdiff-hf push DIR`` uploads the pipeline with its target network, a
card naming the target architecture, the checkpoint dataset and the results, and ``results.json``; a fresh process
with nothing but the repo id gets working networks with ``output_type="model"``.

Two processes run against one server (see ``hub_client.py``):

* ``client``: runs ``pdiff-hf demo`` on tiny settings for ``--selection norm|classifier|whole`` and ``--conditional``,
  pushes each folder with ``pdiff-hf push``, scores the networks of its local ``pipeline/`` folder, and pushes a
  pipeline folder as a training script leaves it (``--output_dir``, with and without ``--checkpoints``);
* ``puller``: a fresh process that waits for each push, pulls with ``PDiffPipeline.from_pretrained(repo_id)`` alone
  and scores ``out.models`` with the same seed and inputs (MNIST-1D's test split for the CNN demos).
"""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hub_client  # noqa: E402
from hub_client import USER, Recorder, hub_session, step  # noqa: E402

hub_client.TIMEOUT = TIMEOUT = 900  # four tiny demos, one after the other, on a 2-core machine
TINY = [
    "--num-checkpoints", "12", "--ae-steps", "5", "--denoiser-steps", "5", "--num-models", "6", "--target-epochs", "1",
    "--num-inference-steps", "4",
]  # fmt: skip
DEMOS = {
    "norm": ["--selection", "norm"] + TINY,
    "classifier": ["--selection", "classifier", "--no-novelty"] + TINY,
    "whole": ["--selection", "whole", "--no-novelty", "--recalibration-batches", "0"] + TINY,
    "conditional": [
        "--conditional", "--num-tasks", "2", "--num-checkpoints", "6", "--ae-steps", "4", "--denoiser-steps", "4",
        "--num-models", "4", "--target-epochs", "1", "--num-inference-steps", "3", "--guidance-scales", "1", "--no-novelty",
    ],
}  # fmt: skip
NUM_MODELS, STEPS = 3, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with hub_session(tmp_path_factory.mktemp("hub-demos"), __file__, roles=("puller", "client")) as records:
        yield records


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_pulled_demo_repo_gives_working_networks(run, demo):
    before = step(run, "client", demo)
    after = step(run, "puller", demo)
    assert after["target_class"] == before["target_class"] and after["num_models"] == NUM_MODELS
    assert after["logits"] == before["logits"]  # bit-identical networks from the repo alone
    assert after["accuracy"] == before["accuracy"]
    if demo != "conditional":  # CNNs on MNIST-1D's test split: far above chance (10%)
        assert min(after["accuracy"]) > 20.0
    if demo in ("norm", "classifier"):  # the fingerprint travels: other weights outside the selection are refused
        assert after["fresh_target_refused"].startswith("TargetMismatchError: expected the target")
    else:  # every tensor of the target is generated (whole network, conditional head): nothing outside to check
        assert after["fresh_target_refused"] == "no error"
    files = set(before["repo_files"])
    assert {"target/config.json", "target_fingerprint.json", "results.json", "README.md"} <= files
    assert any(f.startswith("target/") and f.endswith(".safetensors") for f in files)


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_demo_card_names_target_dataset_and_results(run, demo):
    record = step(run, "client", demo)
    card, local = record["card"], record["local_card"]
    architecture = "MNIST1DHead(" if demo == "conditional" else "MNIST1DCNN(in_length=40"
    assert f"| Target architecture | {architecture}" in card and f"| Target architecture | {architecture}" in local
    dataset = f"{USER}/pdiff-demo-{demo}-checkpoints"
    assert f"Trained on the checkpoints in the dataset\n[`{dataset}`]" in card
    assert "local `datasets` folder `../checkpoints`" in local  # the saved folder names its checkpoints too
    assert "p-diff generated" in card and "No evaluation results were recorded" not in card
    assert "p-diff generated" in local
    if demo == "norm":
        assert "### Verdict" in card and "### Verdict" in local
    assert 'net = out.models[0]' in card


def test_training_output_dir_pushes_as_is(run):
    record = step(run, "client", "training_dir")
    assert "pushing the pipeline only" in record["note"]
    assert "target_fingerprint.json" in record["repo_files"] and "target/config.json" in record["repo_files"]
    with_data = step(run, "client", "training_dir_with_checkpoints")
    assert with_data["dataset_rows"] == 12
    after = step(run, "puller", "training_dir")
    assert after["logits"] == step(run, "client", "norm")["logits"]
    assert run["seconds"] < TIMEOUT


# ==================================================================================================== both sides
def _inputs(demo: str, pipe):
    """``(inputs, labels)``: MNIST-1D's test split for the CNN demos, fixed pooled features for the head."""
    import torch

    if demo == "conditional":
        in_features = pipe.target.config.in_features
        gen = torch.Generator().manual_seed(0)
        return torch.randn(64, in_features, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    from pdiff_hf.tasks import load_mnist1d

    data = load_mnist1d()
    return data.test_x, data.test_y


def _score(pipe, demo: str, inputs, labels) -> dict:
    import torch

    pipe.set_progress_bar_config(disable=True)
    kwargs = {"condition": 0} if demo == "conditional" else {}
    gen = torch.Generator().manual_seed(0)
    out = pipe(num_models=NUM_MODELS, num_inference_steps=STEPS, generator=gen, output_type="model", **kwargs)
    accuracy, logits = [], []
    with torch.no_grad():
        for model in out.models:
            y = model(inputs)
            accuracy.append(float((y.argmax(-1) == labels).float().mean() * 100.0))
            logits.append(y[:4].tolist())
    return {"accuracy": accuracy, "logits": logits, "num_models": len(out.models),
            "target_class": type(pipe.target).__name__}  # fmt: skip


def _fresh_target_error(pipe) -> str:
    import copy

    import torch

    fresh = copy.deepcopy(pipe.target)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(torch.randn_like(p))
    try:
        pipe.set_target(fresh)
    except Exception as err:  # noqa: BLE001 - recorded for the pytest side
        return f"{type(err).__name__}: {err}"
    return "no error"


# ==================================================================================================== client side
def client_main(work: Path) -> None:
    import contextlib
    import io

    import torch

    torch.set_num_threads(1)
    from huggingface_hub import HfApi, ModelCard

    from pdiff_hf import PDiffPipeline
    from pdiff_hf.cli import main

    rec = Recorder(work / "client.json")
    api = HfApi()
    for demo, flags in DEMOS.items():
        with rec.step(demo) as r:
            out = work / f"demo-{demo}"
            assert main(["demo", "--output-dir", str(out)] + flags) == 0
            repo = f"{USER}/pdiff-demo-{demo}"
            assert main(["push", str(out), "--repo-id", repo]) == 0
            local = PDiffPipeline.from_pretrained(out / "pipeline")
            inputs, labels = _inputs(demo, local)
            r.update(
                repo_files=api.list_repo_files(repo),
                card=ModelCard.load(repo).text,
                local_card=(out / "pipeline" / "README.md").read_text(),
                **_score(local, demo, inputs, labels),
            )
        (work / f"{demo}.flag").write_text(repo)
    norm = work / "demo-norm"
    with rec.step("training_dir") as r:  # a training script's --output_dir is the pipeline folder itself
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["push", str(norm / "pipeline"), "--repo-id", f"{USER}/pdiff-trained"]) == 0
        r.update(note=printed.getvalue(), repo_files=api.list_repo_files(f"{USER}/pdiff-trained"))
    (work / "training_dir.flag").write_text(f"{USER}/pdiff-trained")
    with rec.step("training_dir_with_checkpoints") as r:
        repo = f"{USER}/pdiff-trained-data"
        assert main(["push", str(norm / "pipeline"), "--repo-id", repo, "--checkpoints", str(norm / "checkpoints")]) == 0
        info = api.dataset_info(f"{repo}-checkpoints")
        from pdiff_hf import load_checkpoint_dataset

        r.update(dataset_rows=len(load_checkpoint_dataset(info.id)), card=ModelCard.load(repo).text)
    rec.save(finished=True)


# ==================================================================================================== puller side
def puller_main(work: Path) -> None:
    """A fresh process: nothing but the repo ids (and the evaluation data)."""
    rec = Recorder(work / "puller.json")
    import torch

    torch.set_num_threads(1)
    from pdiff_hf import PDiffPipeline

    deadline = time.time() + TIMEOUT - 30
    for demo in [*DEMOS, "training_dir"]:
        while not (work / f"{demo}.flag").exists():
            client = json.loads((work / "client.json").read_text()) if (work / "client.json").exists() else {}
            if time.time() > deadline or "error" in client.get(demo, {}):
                rec.save(finished=True, waited=f"the client never pushed {demo}")
                return
            time.sleep(0.5)
        with rec.step(demo) as r:
            pipe = PDiffPipeline.from_pretrained((work / f"{demo}.flag").read_text())
            inputs, labels = _inputs("norm" if demo == "training_dir" else demo, pipe)
            r.update(**_score(pipe, "norm" if demo == "training_dir" else demo, inputs, labels),
                     fresh_target_refused=_fresh_target_error(pipe))  # fmt: skip
    rec.save(finished=True)


if __name__ == "__main__":
    role, work = sys.argv[1], Path(sys.argv[2])
    {"client": client_main, "puller": puller_main}[role](work)
