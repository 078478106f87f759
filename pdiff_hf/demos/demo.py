"""The end-to-end demo: p-diff on MNIST-1D, from data generation to an evaluated, novelty-checked report.

``pdiff-hf demo --output-dir DIR`` calls :func:`run_demo`. Stages (each with a progress bar):

1. data — MNIST-1D generated locally (4000 train, 1000 test, length 40; the last 500 training samples validate);
2. target — :class:`~pdiff_hf.tasks.MNIST1DCNN` trained on the training split;
3. collect — keep training only the selection (the last two BatchNorm layers by default) with SGD and save one
   checkpoint per step. The step size (0.2 for BatchNorm, see :data:`COLLECT_LR`) is chosen so that consecutive
   checkpoints differ in accuracy and predictions instead of being near-identical copies;
4. autoencoder, 5. denoiser — trained on the checkpoints;
6. generate — ``num_models`` parameter vectors with a few-step DPM-Solver;
7. evaluate — test accuracy of originals and generated models, plus novelty against simple baselines; the
   reconstruction gate (:mod:`pdiff_hf.novelty.reconstruction`) on ``heldout_checkpoints`` checkpoints spread evenly
   through each run (every 11th of 220 by default) and never trained on; with ``recalibration_batches``, the
   generated models' accuracy after BatchNorm recalibration beside it;
8. generalization — the held-out generalization test (:mod:`pdiff_hf.novelty.generalization`): generated models vs
   the held-out checkpoints vs the training checkpoints vs every baseline; its three-line summary opens ``report.md``.

``branches > 0`` collects with :func:`~pdiff_hf.checkpoints.collect_runs.collect_branches` instead (a ``trunk_epochs`` target, then
``branches`` branches of ``branch_epochs`` with their own data orders). Measured on the whole network (seeds 0 and 1):
the generated models become functionally novel (18-46% good and novel vs 1-6% for the Gaussian baseline) but fall
below the originals (median 0.6-1.3 pp lower, min 91.9-93.9) until recalibrated, and recalibrated they are no longer
novel; the default stays p-diff's one-run recipe.

The folder gets ``target/``, ``checkpoints/``, ``heldout/`` (the held-out checkpoints, for ``pdiff-hf evaluate
--heldout``), ``pipeline/``, then ``plots/``, ``report.md`` and ``results.json`` (last)
from :func:`pdiff_hf.novelty.write_report`, the report writer ``pdiff-hf evaluate`` uses too.
"""

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..checkpoints.collect import collect_checkpoints, train_classifier
from ..checkpoints.collect_runs import collect_branches, collect_from_runs
from ..checkpoints.dataset import checkpoint_params, get_layout, set_layout
from ..errors import DemoConfigError, GeneralizationTestError
from ..evaluation.batched import (
    evaluate_parameters,
    predict_with_parameters,
    summarize_accuracies,
)
from ..layout import ParamLayout
from .demo_report import (
    nearest_neighbour_distances,
    recalibration_effect,
    recalibration_lines,
    report_intro,
    spread_lines,
)
from ..novelty import analyze_novelty, write_report
from ..novelty.generalization import heldout_split
from ..novelty.generalization_network import generalization_from_report
from ..novelty.generalization_report import MIN_HELDOUT, MIN_TRAINING, summary_markdown
from ..novelty.report import PLOTS_DIR
from ..novelty.reconstruction import reconstruction_lines, reconstruction_report
from ..tasks.mnist1d import MNIST1DCNN, load_mnist1d
from ..training.config import PDiffConfig
from ..training.fit import fit_pdiff
from ..utils.io_utils import atomic_directory, locked_dir

# SGD step size on the selection during collection, per selection: large enough that checkpoints differ.
# "whole" (every parameter + BatchNorm statistics, D = 23,690), measured with
# `OMP_NUM_THREADS=1 python benchmarks/bench_collect_spread.py --selection whole --learning_rate 0.002 0.005 0.01 0.02 0.05`
# (200 checkpoints, 15-epoch target; test acc mean / std pp / best-min pp / distinct prediction sets):
#   0.002: 96.59 / 0.18 / 0.9 / 145;  0.005: 96.48 / 0.22 / 1.2 / 183;  0.01: 96.07 / 0.41 / 2.4 / 196;
#   0.02: 91.87 / 8.7 / 49.2 / 200 (drifting off);  0.05: 85.94 / 19.8 / 82.1 / 200 (diverging).
COLLECT_LR = {"norm": 0.2, "classifier": 0.05, "whole": 0.005}
SELECTIONS = ("norm", "classifier", "whole")
RECIPES = ("pdiff", "aligned-runs")


@dataclass
class DemoConfig:
    """Sizes and seeds of the demo. Defaults are the documented default run."""

    output_dir: str = "pdiff_demo"
    selection: str = "norm"
    seed: int = 0
    data_seed: int = 42
    target_epochs: int = 15
    num_checkpoints: int = 200
    save_every: int = 1
    collect_learning_rate: Optional[float] = None
    ae_steps: int = PDiffConfig.ae_steps
    denoiser_steps: int = PDiffConfig.denoiser_steps
    num_models: int = 100
    num_inference_steps: int = 25
    num_threads: int = 1
    novelty: bool = True
    # held-out checkpoints for the reconstruction gate and the generalization test: collected with the training ones
    # and spread evenly through each run (exchangeable with them), never trained on; 0 skips both
    heldout_checkpoints: int = 20
    # collection recipe: 0 = p-diff's (one run from the trained target); B > 0 = B branches of a target trained for
    # trunk_epochs, each trained branch_epochs more with its own data order (pdiff_hf.checkpoints.collect_runs.collect_branches)
    branches: int = 0
    trunk_epochs: int = 5
    branch_epochs: int = 10
    # BatchNorm recalibration of the generated models on this many training batches (0: off); measured and reported
    # beside the generated models, which are left as generated (needs a selection with the running statistics)
    recalibration_batches: int = 0
    # "pdiff": the checkpoints of one target (or its branches); "aligned-runs": `runs` independent runs of the whole
    # network (trained target_epochs, in num_processes processes), aligned to one another (collect_from_runs(align=True),
    # MergeMany), their last checkpoints generated with the linear autoencoder; channels: MNIST1DCNN's width
    recipe: str = "pdiff"
    runs: int = 8
    channels: int = 32  # aligned runs average well only when wide: 128 or more (benchmarks/bench_aligned_runs.py)
    num_processes: int = 1
    # the generator: PDiffConfig's autoencoder_type ("auto": the linear code with 200 checkpoints; "learned": p-diff's
    # conv autoencoder, the paper's recipe) and objective ("ddpm" or "flow_matching")
    autoencoder_type: str = PDiffConfig.autoencoder_type
    objective: str = PDiffConfig.objective

    def validate(self) -> None:
        if self.selection not in SELECTIONS:
            raise DemoConfigError(f"expected --selection in {SELECTIONS}, found {self.selection!r}")
        if self.recipe not in RECIPES:
            raise DemoConfigError(f"expected --recipe in {RECIPES}, found {self.recipe!r}")
        PDiffConfig(autoencoder_type=self.autoencoder_type, objective=self.objective).validate()  # PDiffConfigError
        if self.recipe == "aligned-runs" and (self.selection != "whole" or self.branches or self.runs < 2):
            raise DemoConfigError(
                f"expected --selection whole, no --branches and --runs >= 2 with --recipe aligned-runs, found "
                f"selection {self.selection!r}, branches {self.branches}, runs {self.runs}"
            )
        if self.recipe == "aligned-runs" and self.num_checkpoints < 2 * PDiffConfig.latent_channels + 1:
            raise DemoConfigError(
                f"expected --num-checkpoints >= {2 * PDiffConfig.latent_channels + 1} with --recipe aligned-runs (the "
                f"linear autoencoder keeps at most N - 1 components), found {self.num_checkpoints}"
            )
        positive = {
            "--target-epochs": self.target_epochs,
            "--num-checkpoints": self.num_checkpoints,
            "--save-every": self.save_every,
            "--ae-steps": self.ae_steps,
            "--denoiser-steps": self.denoiser_steps,
            "--num-models": self.num_models,
            "--num-inference-steps": self.num_inference_steps,
            "--num-threads": self.num_threads,
            "--channels": self.channels,
            "--num-processes": self.num_processes,
        }
        bad = {k: v for k, v in positive.items() if v < 1}
        if bad:
            raise DemoConfigError(f"expected positive values, found {bad}")
        counts = {
            "heldout_checkpoints": self.heldout_checkpoints,
            "branches": self.branches,
            "branch_epochs": self.branch_epochs,
            "recalibration_batches": self.recalibration_batches,
        }
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative or (self.branches and self.trunk_epochs < 1):
            raise DemoConfigError(
                f"expected non-negative counts and trunk_epochs >= 1 with branches, found {negative or self.trunk_epochs}"
            )
        if self.branches and self.num_checkpoints < 2 * self.branches:
            raise DemoConfigError(
                f"expected at least 2 checkpoints per branch, found {self.num_checkpoints} for {self.branches} branches"
            )
        if self.recalibration_batches and self.selection != "whole":
            raise DemoConfigError(
                f"expected --selection whole for BatchNorm recalibration (its running statistics are generated), found "
                f"{self.selection!r}"
            )
        if self.num_checkpoints < 2:
            raise DemoConfigError(f"expected --num-checkpoints >= 2 to learn a distribution, found {self.num_checkpoints}")
        if self.novelty and self.heldout_checkpoints and (
            self.heldout_checkpoints < MIN_HELDOUT or self.num_checkpoints < MIN_TRAINING
        ):
            raise GeneralizationTestError(
                f"expected --num-checkpoints >= {MIN_TRAINING} and --heldout-checkpoints >= {MIN_HELDOUT} for the "
                f"held-out generalization test (or --heldout-checkpoints 0, or --no-novelty), found "
                f"{self.num_checkpoints} and {self.heldout_checkpoints}"
            )
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise DemoConfigError(f"expected --output-dir to be a folder, found a file: {out}")

    @property
    def collect_lr(self) -> float:
        return self.collect_learning_rate if self.collect_learning_rate is not None else COLLECT_LR[self.selection]

    def pdiff_config(self, dim: int) -> PDiffConfig:
        """Model sizes for a selection of ``dim`` entries. Long vectors are cut into patches (``patch_size`` entries
        per position, about 512 positions) so the convolutions stay wide and short: D = 12,810 → patches of 32 →
        latent (4, 26)."""
        patch = 2 ** math.ceil(math.log2(dim / 512)) if dim > 1024 else 1
        if self.recipe == "aligned-runs":  # whitened PCA code of K = latent_channels * length <= N - 1 components
            length = min(PDiffConfig.ae_linear_latent_length, (self.num_checkpoints - 1) // PDiffConfig.latent_channels)
            return PDiffConfig(
                autoencoder_type="linear",
                ae_linear_latent_length=length - length % 2,  # even: the denoiser halves it once
                denoiser_steps=self.denoiser_steps,
                seed=self.seed,
                objective=self.objective,
            )
        config = PDiffConfig(
            ae_block_out_channels=(32, 64, 64, 64) if patch > 1 else PDiffConfig.ae_block_out_channels,
            ae_patch_size=patch,
            ae_steps=self.ae_steps,
            denoiser_steps=self.denoiser_steps,
            seed=self.seed,
            autoencoder_type=self.autoencoder_type,
            objective=self.objective,
        )
        return config.validate(dim=dim)  # a bad --autoencoder-type / --objective is a PDiffConfigError


def select_layout(model: torch.nn.Module, selection: str) -> ParamLayout:
    """The demo's selections: the last two BatchNorm layers (D=128), the final linear layer (D=12,810), or the whole
    network: every parameter plus the BatchNorm running statistics (``num_batches_tracked`` is never selected)."""
    if selection == "norm":
        return ParamLayout.from_module(model, last_norm_layers=2)
    if selection == "whole":
        return ParamLayout.from_module(model, include_buffers=True)
    return ParamLayout.from_module(model, include="classifier.*")


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the whole demo and return the content of ``results.json``.

    Before any work: the options are validated, the output folder is created and written to once
    (:class:`~pdiff_hf.errors.OutputFolderError` if it cannot be), and its lock is taken for the whole run (a second
    run on the same folder gets :class:`~pdiff_hf.errors.OutputFolderInUseError` at once)."""
    config.validate()
    with locked_dir(config.output_dir, "--output-dir") as out:
        return _run_demo(config, out, log)


def _run_demo(config: DemoConfig, out: Path, log: Callable[[str], None]) -> Dict:
    torch.set_num_threads(config.num_threads)
    results_path = out / "results.json"
    if results_path.exists():
        results_path.unlink()  # a folder without results.json is visibly incomplete while we run
    timings: Dict[str, float] = {}

    def stage(name: str):
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 3)

    total_start = time.perf_counter()
    stage("data")
    data = load_mnist1d(seed=config.data_seed)
    done("data")
    log(f"data: MNIST-1D train {len(data.train_y)}, val {len(data.val_y)}, test {len(data.test_y)}")

    stage("target")
    torch.manual_seed(config.seed)
    model = MNIST1DCNN(channels=config.channels)
    epochs = config.trunk_epochs if config.branches else config.target_epochs
    if config.recipe == "pdiff":  # aligned-runs: every run is trained in the collect stage
        train_classifier(model, data, epochs=epochs, seed=config.seed, progress=True)
    done("target")

    stage("collect")
    layout = select_layout(model, config.selection)
    runs = config.runs if config.recipe == "aligned-runs" else max(config.branches, 1)
    held_per_run = math.ceil(config.heldout_checkpoints / runs)
    per_run = math.ceil(config.num_checkpoints / runs)
    common = dict(
        save_every=config.save_every,
        learning_rate=config.collect_lr,
        evaluate=not config.novelty,  # the novelty analysis evaluates every checkpoint anyway
    )
    if config.recipe == "aligned-runs":
        collected = collect_from_runs(
            model, data, layout, seeds=[config.seed + r for r in range(runs)], align=True,
            num_processes=config.num_processes,
            num_checkpoints=per_run + held_per_run, train_epochs=config.target_epochs, progress=True, **common,
        )  # fmt: skip
    elif config.branches:
        collected = collect_branches(
            model, data, layout, num_branches=config.branches, checkpoints_per_branch=per_run + held_per_run,
            trunk_epochs=0, branch_epochs=config.branch_epochs, seed=config.seed, progress=True, **common,
        )  # fmt: skip
    else:
        collected = collect_checkpoints(
            model, data, layout, num_checkpoints=config.num_checkpoints + held_per_run, seed=config.seed,
            progress=True, **common,
        )  # fmt: skip
    dataset, heldout = split_heldout(collected, per_run, config.num_checkpoints)
    train_params = checkpoint_params(dataset, check=False)  # every row was checked when it was collected
    model.save_pretrained(out / "target")
    done("collect")
    log(f"collected {len(dataset)} checkpoints of {layout.describe()}" + (f" in {runs} branches" if config.branches else ""))

    stage("train")
    pipe = fit_pdiff(dataset, layout, config.pdiff_config(layout.dim), progress=True, target=model)
    with atomic_directory(out / "pipeline") as tmp:
        pipe.save_pretrained(tmp)
    done("train")

    stage("generate")
    generator = torch.Generator().manual_seed(config.seed)
    generated = pipe(
        num_models=config.num_models, num_inference_steps=config.num_inference_steps, generator=generator
    ).params
    done("generate")

    stage("evaluate")
    normalized = pipe.autoencoder.normalize(train_params)
    results = {
        "config": asdict(config),
        "selection": {"name": config.selection, "D": layout.dim, "layout": layout.to_list()},
    }
    sections = {}
    if heldout is not None:
        results["reconstruction"] = reconstruction_report(
            model, layout, pipe.autoencoder, train_params, checkpoint_params(heldout, check=False), data
        )
        sections["Reconstruction of held-out checkpoints"] = reconstruction_lines(results["reconstruction"])
    if config.recalibration_batches:
        results["recalibration"] = recalibration_effect(
            model, layout, generated, train_params, data, config.recalibration_batches
        )
        sections["BatchNorm recalibration"] = recalibration_lines(results["recalibration"])
    report, test_accuracies = None, None
    if config.novelty:
        report = analyze_novelty(
            model, layout, train_params, generated, data, normalizer=pipe, seed=config.seed, pca_gaussian=True,
            resampled=True,
        )
        results.update(report.to_dict())
        orig_val, orig_test = report.original.val_accuracy, report.original.test_accuracy
        agreement = float(report.original.nn_agreement.median())
    else:
        orig_val = torch.tensor(dataset["val_accuracy"])
        orig_test = torch.tensor(dataset["test_accuracy"])
        gen_test = evaluate_parameters(model, layout, generated, data.test_x, data.test_y)
        results["original"] = summarize_accuracies(orig_test)
        results["generated"] = summarize_accuracies(gen_test)
        test_accuracies = (orig_test, gen_test)
        preds = predict_with_parameters(model, layout, train_params, data.test_x)
        agreement = float((preds[1:] == preds[:-1]).float().mean(1).median())
    results["original_spread"] = {
        "best_minus_min_accuracy": round(float(orig_test.max() - orig_test.min()), 4),
        "mean_nn_distance_normalized": round(float(nearest_neighbour_distances(normalized).mean()), 6),
        "mean_nn_distance_raw": round(float(nearest_neighbour_distances(train_params).mean()), 6),
        "median_nn_prediction_agreement": round(agreement, 6),
    }
    if config.novelty:
        dataset = dataset.add_column("val_accuracy", orig_val.tolist()).add_column("test_accuracy", orig_test.tolist())
        set_layout(dataset, layout)
    with atomic_directory(out / "checkpoints") as tmp:
        dataset.save_to_disk(str(tmp))
    if heldout is not None:
        with atomic_directory(out / "heldout") as tmp:
            heldout.save_to_disk(str(tmp))
    done("evaluate")
    with atomic_directory(out / "pipeline") as tmp:  # again: now its card has the checkpoints and the results
        pipe.save_pretrained(tmp, results=results, checkpoint_dataset_path="../checkpoints")

    summary = []
    if report is not None and heldout is not None:
        stage("generalization")
        result = generalization_from_report(model, layout, report, checkpoint_params(heldout), data, pipe, config.seed)
        results["generalization"] = result.to_dict()
        plots = {k: p.relative_to(out).as_posix() for k, p in result.save_plots(out / PLOTS_DIR).items()}
        results["generalization"]["plots"] = plots
        sections["Held-out generalization test"] = result.markdown(plots, heading=False, summary=False).splitlines()
        summary = summary_markdown(result.summary) + [""]
        done("generalization")

    results["timings_s"] = timings
    write_report(
        out,
        results,
        title="p-diff on MNIST-1D",
        intro=summary + report_intro(results, config.collect_lr),
        sections={"Spread of the original checkpoints": spread_lines(results["original_spread"]), **sections},
        novelty=report,
        test_accuracies=test_accuracies,
        started=total_start,
    )
    return results


def split_heldout(collected, per_run: int, total: int):
    """``(training, held-out)`` checkpoint datasets. Within each run (by ``step``), the checkpoints beyond ``per_run``
    are held out spread evenly through the run (every k-th, ``k = run length / held-out count``, possibly fractional:
    :func:`~pdiff_hf.novelty.heldout_split`), so that training and held-out checkpoints are exchangeable; the others
    train, at most ``total`` in all (the extra ones join the held-out). ``None`` when nothing is held out."""
    run_ids, steps = collected["run_id"], collected["step"]
    order = sorted(range(len(collected)), key=lambda i: (run_ids[i], steps[i]))
    run_length = max(Counter(run_ids).values()) if order else 0
    held = set()
    if run_length > per_run:
        every = Fraction(run_length, run_length - per_run)
        held = set(heldout_split(len(collected), every, run_ids, steps, min_training=0, min_heldout=0)[1].tolist())
    train_idx = [i for i in order if i not in held]
    held_idx = [i for i in order if i in held]
    train_idx, held_idx = train_idx[:total], held_idx + train_idx[total:]
    layout = get_layout(collected)
    train = set_layout(collected.select(train_idx), layout)
    return train, (set_layout(collected.select(held_idx), layout) if held_idx else None)


