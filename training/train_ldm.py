#!/usr/bin/env python
"""Train p-diff end to end with Accelerate: the parameter autoencoder (unless ``--pretrained_autoencoder``), then
the latent denoiser, and save a complete ``PDiffPipeline``.

    accelerate launch training/train_ldm.py \
        --checkpoint_dataset pdiff-checkpoints --output_dir pdiff-ldm \
        --ae_max_train_steps 2000 --max_train_steps 2000 --use_ema --checkpointing_steps 500

    # data parallel on a CPU-only machine (two gloo processes):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_ldm.py ...

Output folder:

* ``pipeline/`` — the ``PDiffPipeline`` (``PDiffPipeline.from_pretrained(<output_dir>/pipeline)``) with a
  DPM-Solver++ sampling scheduler; written to a hidden sibling folder and renamed into place at the very end, so it
  exists only when complete.
* ``autoencoder/`` — the trained autoencoder (when trained here); ``autoencoder_checkpoints/checkpoint-<step>`` —
  its resumable checkpoints.
* ``checkpoint-<step>`` — resumable checkpoints of the denoiser (``--resume_from_checkpoint latest`` resumes
  whichever stage was running).
* ``logs/`` — TensorBoard logs (``--report_to tensorboard``).

Also runs as plain ``python training/train_ldm.py ...`` (one process).
"""

import sys
from pathlib import Path
from typing import List, Optional

import torch
from accelerate.logging import get_logger

from pdiff_hf.accelerate_loop import (
    ArgumentParser,
    TrainingScriptError,
    add_accelerate_args,
    add_autoencoder_model_args,
    add_data_args,
    add_hub_args,
    add_stage_args,
    load_checkpoint_dataset,
    load_pretrained_autoencoder,
    make_accelerator,
    push_to_hub,
    read_checkpoint_marker,
    resolve_resume,
    run_autoencoder_stage,
    run_denoiser_stage,
    run_script,
    save_pretrained_atomically,
    stage_config,
    validate_args,
)

logger = get_logger(__name__)


def parse_args(argv: Optional[List[str]] = None):
    parser = ArgumentParser(
        prog="train_ldm.py", description="Train a p-diff latent diffusion model and save a PDiffPipeline (Accelerate)."
    )
    add_data_args(parser, default_output_dir="pdiff-ldm")
    parser.add_argument(
        "--pretrained_autoencoder",
        type=str,
        default=None,
        help="Folder of a trained ParameterAutoencoder (e.g. from train_autoencoder.py); otherwise one is trained first.",
    )
    add_autoencoder_model_args(parser)
    group = parser.add_argument_group("denoiser model and diffusion objective")
    group.add_argument("--denoiser_block_out_channels", type=int, nargs="+", default=[32, 64])
    group.add_argument("--layers_per_block", type=int, default=1)
    group.add_argument("--num_train_timesteps", type=int, default=1000)
    group.add_argument("--beta_schedule", type=str, default="linear", choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    group.add_argument(
        "--prediction_type", type=str, default="sample", choices=["epsilon", "sample", "v_prediction"],
        help="What the denoiser predicts; 'sample' (x0) kept every demo sample on the checkpoint manifold after short "
        "training, where 'epsilon' left about 8%% off it.",
    )
    group.add_argument(
        "--num_validation_models",
        type=int,
        default=4,
        help="Parameter vectors sampled from the finished pipeline as a sanity check (0 to skip).",
    )
    group.add_argument("--num_inference_steps", type=int, default=25, help="Sampling steps for the sanity check.")
    add_stage_args(parser, what="denoiser", learning_rate=1e-3, max_train_steps=2000, lr_warmup_steps=50)
    add_stage_args(
        parser, prefix="ae_", what="autoencoder", learning_rate=1e-3, max_train_steps=2000, lr_warmup_steps=50, full=False
    )
    add_accelerate_args(parser)
    add_hub_args(parser)
    args = parser.parse_args(argv)
    validate_args(args, stage_prefixes=("", "ae_"))
    if args.num_train_timesteps < 1 or args.num_inference_steps < 1 or args.num_validation_models < 0:
        raise TrainingScriptError("--num_train_timesteps and --num_inference_steps must be >= 1, --num_validation_models >= 0")
    return args


def plan_stages(args, layout):
    """Decide where the autoencoder comes from and which checkpoints each stage resumes from.

    Returns ``(autoencoder or None, ae_resume, denoiser_resume)``; ``autoencoder`` is None when it is trained here.
    """
    out = Path(args.output_dir)
    ae_dir, ae_ckpts = out / "autoencoder", out / "autoencoder_checkpoints"
    resume = args.resume_from_checkpoint
    if args.pretrained_autoencoder:
        ae = load_pretrained_autoencoder(args.pretrained_autoencoder, layout)
        if resume and resume != "latest":
            path = resolve_resume(resume, str(out))
            if read_checkpoint_marker(path).get("stage") != "denoiser":
                raise TrainingScriptError(
                    f"--resume_from_checkpoint {resume!r} is an autoencoder checkpoint, but --pretrained_autoencoder "
                    "is given; resume a denoiser checkpoint-<step> instead"
                )
            return ae, None, path
        return ae, None, resolve_resume(resume, str(out))
    if not resume:
        return None, None, None
    finished_ae = (ae_dir / "config.json").is_file()
    if resume == "latest":
        if finished_ae:
            return load_pretrained_autoencoder(str(ae_dir), layout), None, resolve_resume("latest", str(out))
        return None, resolve_resume("latest", str(ae_ckpts)), None
    candidates = [Path(resume), out / resume, ae_ckpts / resume]
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        raise TrainingScriptError(
            f"--resume_from_checkpoint {resume!r} does not exist (looked at {', '.join(str(c) for c in candidates)}); "
            "pass 'latest' or an existing checkpoint-<step> folder"
        )
    stage = read_checkpoint_marker(path).get("stage")
    if stage == "autoencoder":
        return None, path, None
    if not finished_ae:
        raise TrainingScriptError(
            f"--resume_from_checkpoint {resume!r} is a denoiser checkpoint, but {ae_dir} does not exist; pass the "
            "autoencoder it was trained with as --pretrained_autoencoder"
        )
    return load_pretrained_autoencoder(str(ae_dir), layout), None, path


def main(args) -> int:
    from pdiff_hf.pipelines import PDiffPipeline
    from pdiff_hf.training import sampling_scheduler_for

    _, params, layout = load_checkpoint_dataset(args.checkpoint_dataset, args.checkpoint_dataset_split)
    ae, ae_resume, denoiser_resume = plan_stages(args, layout)

    accelerator = make_accelerator(args, "pdiff_ldm")
    logger.info("checkpoint dataset %s: %d checkpoints, %s", args.checkpoint_dataset, params.shape[0], layout.describe())
    if args.resume_from_checkpoint == "latest" and ae_resume is None and denoiser_resume is None:
        logger.info("no checkpoint to resume from in %s; starting the remaining stages from scratch", args.output_dir)

    out = Path(args.output_dir)
    if ae is None:
        ae_cfg = stage_config(args, "autoencoder", checkpoint_dir=str(out / "autoencoder_checkpoints"), prefix="ae_")
        ae_cfg.resume_from = ae_resume
        ae = run_autoencoder_stage(accelerator, args, params, layout, ae_cfg, str(out / "autoencoder"))
    else:
        source = args.pretrained_autoencoder or out / "autoencoder"
        logger.info("using the trained autoencoder %s (training the denoiser only)", source)

    dn_cfg = stage_config(args, "denoiser", checkpoint_dir=str(out))
    dn_cfg.resume_from = denoiser_resume
    denoiser = run_denoiser_stage(accelerator, args, ae, params, dn_cfg)

    if accelerator.is_main_process:
        ae.to("cpu")
        denoiser.to("cpu")
        pipe = PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser, "dpm"))
        pipe.set_progress_bar_config(disable=True)
        if args.num_validation_models:
            generated = pipe(
                num_models=args.num_validation_models,
                num_inference_steps=args.num_inference_steps,
                generator=torch.Generator().manual_seed(args.seed),
            ).params
            dist = torch.cdist(generated, params).min(dim=1).values
            logger.info(
                "sampled %d parameter vectors: finite, mean distance to the nearest training checkpoint %.4g",
                generated.shape[0],
                float(dist.mean()),
            )
        pipeline_dir = save_pretrained_atomically(pipe, str(out / "pipeline"))
        logger.info("saved the PDiffPipeline to %s", pipeline_dir)
        if args.push_to_hub:
            push_to_hub(pipe, args)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def cli(argv: Optional[List[str]] = None) -> int:
    return run_script(main, parse_args, argv, prog="train_ldm.py")


if __name__ == "__main__":
    sys.exit(cli())
