"""``pdiff-hf push DIR --repo-id owner/name``: push a finished demo or training folder to the Hugging Face Hub.

``DIR`` is a demo folder — ``pipeline/`` (``PDiffPipeline.save_pretrained``), ``checkpoints/`` (a checkpoint dataset
saved with ``save_to_disk``) and optionally ``results.json`` (``original`` / ``generated`` accuracy summaries, optional
``baselines`` / ``novelty``) and ``training_args.json`` — or a training script's ``--output_dir`` (the pipeline itself;
name its checkpoint dataset folder with ``--checkpoints``). The checkpoints go to a dataset repo (parquet shards, one
config per architecture / selection), then the pipeline, with its target network, goes to a model repo whose card
links the dataset.

The token comes from ``--token``, ``HF_TOKEN`` or the saved login, and is never printed.
"""

import argparse
import json
from pathlib import Path

from ..errors import CheckpointDatasetError, LayoutMismatchError, PushError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="push a demo / training folder (pipeline + checkpoint dataset) to the Hugging Face Hub",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("folder", help="folder with pipeline/, checkpoints/ and optionally results.json, training_args.json "
                   "(a demo), or a training script's --output_dir (a saved pipeline)")
    p.add_argument("--checkpoints", default=None,
                   help="checkpoint dataset folder (save_to_disk) to push with the pipeline (default: DIR/checkpoints)")
    p.add_argument("--repo-id", "--repo_id", "--hub-model-id", "--hub_model_id", dest="repo_id", required=True,
                   help="model repo for the pipeline, 'owner/name'")
    p.add_argument("--dataset-repo-id", "--dataset_repo_id", dest="dataset_repo_id", default=None,
                   help="dataset repo for the checkpoints (default: <repo-id>-checkpoints)")
    p.add_argument("--config-name", "--config_name", dest="config_name", default=None,
                   help="dataset config of this architecture / selection (default: derived from the layout)")
    p.add_argument("--architecture", default=None, help="description of the target network, shown on the cards")
    p.add_argument("--no-dataset", "--no_dataset", dest="no_dataset", action="store_true",
                   help="push only the pipeline")
    p.add_argument("--private", action="store_true", help="create the repos private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--max-shard-size", "--max_shard_size", dest="max_shard_size", default=None,
                   help="largest parquet shard of the checkpoint dataset, e.g. 500MB")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--commit-message", "--commit_message", dest="commit_message", default=None)
    p.add_argument("--no-remote-code", "--no_remote_code", dest="no_remote_code", action="store_true",
                   help="do not upload the code files used by DiffusionPipeline.from_pretrained(trust_remote_code=True)")
    p.set_defaults(func=run)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PushError(f"expected {what} as JSON in {path}, found an unreadable file ({type(err).__name__}: {err})") from None


def _target_architecture(target_dir: Path):
    """``ClassName(config)`` of a target network saved with ``save_pretrained`` in ``DIR/target`` (as the demo does)."""
    config_path = target_dir / "config.json"
    if not config_path.is_file():
        return None
    config = _read_json(config_path, "the target network's config")
    if not isinstance(config, dict) or "_class_name" not in config:
        return None
    items = ", ".join(f"{k}={v!r}" for k, v in config.items() if not k.startswith("_"))
    return f"{config['_class_name']}({items})"


def run(args: argparse.Namespace) -> int:
    import datasets

    from ..checkpoints.dataset import get_layout
    from ..hub import push_checkpoint_dataset, push_pipeline
    from ..pipelines import PDiffPipeline

    folder = Path(args.folder)
    if not folder.is_dir():
        raise PushError(f"expected a folder made by `pdiff-hf demo` or a training script, found no folder {folder}")
    is_training_dir = (folder / "model_index.json").is_file()  # train_ldm.py --output_dir: the pipeline itself
    pipeline_dir = folder if is_training_dir else folder / "pipeline"
    if not (pipeline_dir / "model_index.json").is_file():
        raise PushError(
            f"expected a saved pipeline in {pipeline_dir} (model_index.json) or in {folder} (a training script's "
            "--output_dir), found none"
        )
    checkpoints_dir = Path(args.checkpoints) if args.checkpoints else folder / "checkpoints"
    if is_training_dir and not args.checkpoints and not args.no_dataset:
        # the script's checkpoint-* folders are training states, not the checkpoint dataset
        print(f"{folder} is a training script's --output_dir: pushing the pipeline only (pass --checkpoints DIR, the "
              "script's --dataset_name folder, to push its checkpoint dataset too)")
        args.no_dataset = True
    if not args.no_dataset and not checkpoints_dir.is_dir():
        raise PushError(f"expected a checkpoint dataset in {checkpoints_dir} (save_to_disk), found none; or pass --no-dataset")
    results_path = next((p / "results.json" for p in (folder, pipeline_dir) if (p / "results.json").is_file()), None)
    results = _read_json(results_path, "evaluation results") if results_path else None
    training_args = (
        _read_json(folder / "training_args.json", "training settings") if (folder / "training_args.json").is_file() else None
    )

    pipe = PDiffPipeline.from_pretrained(str(pipeline_dir))
    if args.architecture:
        architecture = args.architecture
    elif pipe.target is not None:  # the pipeline's own target, as its saved card describes it
        from ..hub.cards import describe_architecture

        architecture = describe_architecture(pipe.target)
    else:
        architecture = _target_architecture(folder / "target")
    dataset_id = config_name = None
    if not args.no_dataset:
        try:
            checkpoints = datasets.load_from_disk(str(checkpoints_dir))
        except (FileNotFoundError, ValueError) as err:
            raise PushError(f"expected a dataset saved with save_to_disk in {checkpoints_dir} ({err})") from None
        parts = checkpoints.values() if isinstance(checkpoints, datasets.DatasetDict) else [checkpoints]
        for part in parts:
            if pipe.layout is not None and get_layout(part) != pipe.layout:
                raise LayoutMismatchError(
                    f"the checkpoints in {checkpoints_dir} [{get_layout(part).describe()}] do not have the parameter "
                    f"layout of the pipeline in {pipeline_dir} [{pipe.layout.describe()}]"
                )
        if not parts:
            raise CheckpointDatasetError(f"expected at least one split in {checkpoints_dir}, found none")
        dataset_id = args.dataset_repo_id or f"{args.repo_id}-checkpoints"
        info = push_checkpoint_dataset(
            checkpoints,
            dataset_id,
            config_name=args.config_name,
            token=args.token,
            private=args.private,
            architecture=architecture,
            max_shard_size=args.max_shard_size,
            revision=args.revision,
            license=args.license,
        )
        config_name = info.config_name
        print(f"pushed {sum(len(p) for p in parts)} checkpoints to dataset {dataset_id} (config {config_name}): {info.commit_url}")
    info = push_pipeline(
        pipe,
        args.repo_id,
        token=args.token,
        private=args.private,
        checkpoint_dataset_id=dataset_id,
        checkpoint_dataset_config=config_name,
        results=results,
        training_args=training_args,
        commit_message=args.commit_message or "Upload p-diff pipeline",
        target_architecture=architecture,
        revision=args.revision,
        license=args.license,
        remote_code=not args.no_remote_code,
    )
    print(f"pushed the pipeline to {args.repo_id}: {info.commit_url}")
    return 0
