"""The conditional demo: one p-diff pipeline for several MNIST-1D tasks, each generated head scored on its task.

``pdiff-hf demo --conditional --output-dir DIR`` calls :func:`run_conditional_demo`. Stages:

1. tasks — MNIST-1D generated locally; a backbone :class:`~pdiff_hf.tasks.MNIST1DCNN` trained on the original labels
   and frozen; ``num_tasks`` tasks relabel the classes ``y -> (y + t) mod 10`` on its pooled features
   (:mod:`pdiff_hf.tasks.mnist1d_tasks`);
2. collect — per task, a new :class:`~pdiff_hf.tasks.MNIST1DHead` (D = 330) trained on the task, then
   ``checkpoints_per_task`` SGD checkpoints of it: one dataset with a ``condition`` column;
3. train — ``fit_pdiff(..., conditions=...)``: a shared autoencoder and a denoiser conditional on the task;
4. control — the same training with the conditions permuted across rows (:func:`~pdiff_hf.training.shuffled_control.fit_shuffled_control`);
5. generate — ``models_per_task`` heads per task at every guidance scale of the sweep (and for the control);
6. evaluate — every model on every task (validation and test): per-task originals vs generated, the cross-task
   matrix, the control, novelty within each task's checkpoints. The guidance scale of the headline figures is chosen
   on validation accuracy; every figure reported is on the test split.

The folder gets ``backbone/``, ``checkpoints/``, ``pipeline/`` (with the head as target), ``report.md`` and
``results.json`` (last).
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

from ..checkpoints.conditional import collect_conditional_checkpoints
from ..checkpoints.dataset import checkpoint_conditions, checkpoint_params
from ..errors import DemoConfigError
from ..evaluation.conditional import (
    cross_task_matrix,
    generate_per_condition,
    per_condition_summary,
    solved_shares,
    task_accuracies,
)
from ..layout import ParamLayout
from ..novelty.conditional import novelty_per_condition
from ..tasks.mnist1d_tasks import MNIST1DHead, load_mnist1d_tasks
from ..training.config import PDiffConfig
from ..training.fit import fit_pdiff
from ..training.shuffled_control import fit_shuffled_control
from ..utils.io_utils import atomic_directory, locked_dir
from .conditional_report import (
    check_targets,
    within_task_diversity,
    write_conditional_report,
)


@dataclass
class ConditionalDemoConfig:
    """Sizes and seeds of the conditional demo. Defaults are the documented default run."""

    output_dir: str = "pdiff_conditional_demo"
    num_tasks: int = 4
    seed: int = 0
    data_seed: int = 42
    backbone_epochs: int = 15
    head_epochs: int = 10
    checkpoints_per_task: int = 200
    collect_learning_rate: float = 0.2
    ae_steps: int = 300
    # measured on this demo (4 tasks, D = 330), generated vs originals' pairwise error-set IoU per task as the
    # diversity within a task: 400 steps at lr 3e-3 left every task collapsed (generated IoU 0.96-0.999 vs 0.79-0.82),
    # 1200 at 3e-3 and 700 at 6e-3 kept two or more tasks diverse; 700 at 6e-3 fits the 180 s budget
    denoiser_steps: int = 700
    denoiser_learning_rate: float = 6e-3
    condition_dropout: float = PDiffConfig.condition_dropout
    models_per_task: int = 50
    num_inference_steps: int = 25
    guidance_scales: Tuple[float, ...] = (1.0, 2.0, 4.0)
    num_threads: int = 1
    novelty: bool = True

    def validate(self) -> None:
        positive = {
            "--num-tasks": self.num_tasks,
            "--target-epochs": self.backbone_epochs,
            "--head-epochs": self.head_epochs,
            "--num-checkpoints": self.checkpoints_per_task,
            "--ae-steps": self.ae_steps,
            "--denoiser-steps": self.denoiser_steps,
            "--num-models": self.models_per_task,
            "--num-inference-steps": self.num_inference_steps,
            "--num-threads": self.num_threads,
        }
        bad = {k: v for k, v in positive.items() if v < 1}
        if bad:
            raise DemoConfigError(f"expected positive values, found {bad}")
        if not 2 <= self.num_tasks <= 10:
            raise DemoConfigError(f"expected --num-tasks in [2, 10] (one class shift per task), found {self.num_tasks}")
        if self.checkpoints_per_task < 2:
            raise DemoConfigError(f"expected --num-checkpoints >= 2 per task, found {self.checkpoints_per_task}")
        if not self.denoiser_learning_rate > 0 or not self.collect_learning_rate > 0:
            raise DemoConfigError(
                f"expected learning rates > 0, found denoiser {self.denoiser_learning_rate}, collection "
                f"{self.collect_learning_rate}"
            )
        if not self.guidance_scales or any(not s >= 1.0 for s in self.guidance_scales):
            raise DemoConfigError(f"expected guidance scales >= 1, found {list(self.guidance_scales)}")
        if not 0.0 < self.condition_dropout < 1.0:
            raise DemoConfigError(
                f"expected a condition dropout in (0, 1) (guidance needs the null condition), found {self.condition_dropout}"
            )
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise DemoConfigError(f"expected --output-dir to be a folder, found a file: {out}")

    def pdiff_config(self) -> PDiffConfig:
        return PDiffConfig(
            ae_steps=self.ae_steps,
            denoiser_steps=self.denoiser_steps,
            denoiser_learning_rate=self.denoiser_learning_rate,
            condition_dropout=self.condition_dropout,
            seed=self.seed,
        )


def run_conditional_demo(config: ConditionalDemoConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the conditional demo and return the content of ``results.json``. Options are validated and the output
    folder locked before any work (as :func:`pdiff_hf.demos.demo.run_demo`)."""
    config.validate()
    with locked_dir(config.output_dir, "--output-dir") as out:
        return _run(config, out, log)


def _reset_head(seed: int) -> Callable[[MNIST1DHead, int], None]:
    def reset(head: MNIST1DHead, task: int) -> None:
        torch.manual_seed(seed + 100 + task)
        head.classifier.reset_parameters()

    return reset


def _evaluate(head, layout, params, tasks) -> Dict[str, torch.Tensor]:
    return {split: task_accuracies(head, layout, params, tasks.splits, split) for split in ("val", "test")}


def _run(config: ConditionalDemoConfig, out: Path, log: Callable[[str], None]) -> Dict:
    torch.set_num_threads(config.num_threads)
    if (out / "results.json").exists():
        (out / "results.json").unlink()  # a folder without results.json is visibly incomplete while we run
    timings: Dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 3)
        return time.perf_counter()

    t = time.perf_counter()
    tasks = load_mnist1d_tasks(
        config.num_tasks, seed=config.data_seed, backbone_epochs=config.backbone_epochs, backbone_seed=config.seed,
        progress=True,
    )  # fmt: skip
    names = tasks.names
    t = timed("tasks", t)
    log(f"tasks: {', '.join(names)} on {tasks.splits[0].train_x.shape[1]} pooled backbone features")

    head = MNIST1DHead(in_features=int(tasks.splits[0].train_x.shape[1]), num_classes=int(tasks.permutations.shape[1]))
    layout = ParamLayout.from_module(head)
    dataset = collect_conditional_checkpoints(
        head, tasks.splits, layout, names, reset=_reset_head(config.seed), seed=config.seed,
        num_checkpoints=config.checkpoints_per_task, learning_rate=config.collect_learning_rate,
        train_epochs=config.head_epochs, train_learning_rate=1e-2, progress=True,
    )  # fmt: skip
    params, conditions = checkpoint_params(dataset, check=False), checkpoint_conditions(dataset)  # checked when collected
    with atomic_directory(out / "checkpoints") as tmp:
        dataset.save_to_disk(str(tmp))
    with atomic_directory(out / "backbone") as tmp:
        tasks.backbone.save_pretrained(tmp)
    t = timed("collect", t)
    log(f"collected {len(dataset)} checkpoints ({config.checkpoints_per_task} per task) of {layout.describe()}")

    pdiff_config = config.pdiff_config()
    pipe = fit_pdiff(dataset, layout, pdiff_config, progress=True, target=head, conditions=conditions, condition_names=names)
    with atomic_directory(out / "pipeline") as tmp:
        pipe.save_pretrained(tmp)
    t = timed("train", t)
    control, shuffled = fit_shuffled_control(pipe, params, conditions, pdiff_config, seed=config.seed, progress=True)
    t = timed("train_control", t)

    generated = {}
    for scale in config.guidance_scales:
        generated[scale] = generate_per_condition(
            pipe, config.models_per_task, seed=config.seed, guidance_scale=scale,
            num_inference_steps=config.num_inference_steps,
        )  # fmt: skip
    t = timed("generate", t)

    original_acc = _evaluate(head, layout, params, tasks)
    sweep, accs = {}, {}
    for scale, (gen, gen_cond) in generated.items():
        accs[scale] = _evaluate(head, layout, gen, tasks)
        sweep[scale] = {
            "per_task": per_condition_summary(accs[scale]["test"], gen_cond, names, accs[scale]["val"]),
            "val_median": per_condition_summary(accs[scale]["val"], gen_cond, names),
            "cross_task": cross_task_matrix(accs[scale]["test"], gen_cond).tolist(),
        }
    original_val = per_condition_summary(original_acc["val"], conditions, names)
    # the headline guidance scale: the best worst-task margin of the generated validation median over the originals'
    selected = max(
        config.guidance_scales,
        key=lambda s: min(sweep[s]["val_median"][n]["median"] - original_val[n]["median"] for n in names),
    )
    gen, gen_cond = generated[selected]
    control_params, control_cond = generate_per_condition(
        control, config.models_per_task, seed=config.seed, guidance_scale=selected,
        num_inference_steps=config.num_inference_steps,
    )  # fmt: skip
    control_test = task_accuracies(head, layout, control_params, tasks.splits, "test")
    results = {
        "config": {**asdict(config), "guidance_scales": list(config.guidance_scales)},
        "tasks": {"names": names, "label_maps": tasks.permutations.tolist(), "rule": "y -> (y + t) mod 10"},
        "selection": {"name": "MNIST1DHead on pooled MNIST1DCNN features", "D": layout.dim, "layout": layout.to_list()},
        "guidance_scale": selected,
        "original": per_condition_summary(original_acc["test"], conditions, names, original_acc["val"]),
        "generated": sweep[selected]["per_task"],
        "cross_task": {
            "original": cross_task_matrix(original_acc["test"], conditions).tolist(),
            "generated": sweep[selected]["cross_task"],
        },
        "solved": {
            "original": solved_shares(original_acc["test"], conditions),
            "generated": solved_shares(accs[selected]["test"], gen_cond),
        },
        "shuffled_control": {
            "guidance_scale": selected,
            "rows_keeping_their_id": round(float((shuffled == conditions).float().mean()), 4),
            "per_task": per_condition_summary(control_test, control_cond, names),
            "cross_task": cross_task_matrix(control_test, control_cond).tolist(),
            "solved": solved_shares(control_test, control_cond),
        },
        "guidance_sweep": {str(s): {"per_task": v["per_task"], "cross_task": v["cross_task"]} for s, v in sweep.items()},
    }
    if config.novelty:
        reports = novelty_per_condition(
            head, layout, params, conditions, gen, gen_cond, tasks.splits, names, seed=config.seed
        )
        results["novelty"] = {name: report.to_dict() for name, report in reports.items()}
        results["diversity"] = within_task_diversity(results)
    results["targets"] = check_targets(results)
    timed("evaluate", t)
    results["timings_s"] = timings
    with atomic_directory(out / "pipeline") as tmp:  # again: now its card has the checkpoints and the results
        pipe.save_pretrained(tmp, results=results, checkpoint_dataset_path="../checkpoints")
    write_conditional_report(out, results, started)
    return results
