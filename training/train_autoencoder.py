#!/usr/bin/env python
"""Train p-diff's parameter autoencoder on a checkpoint dataset with Accelerate.

    accelerate launch training/train_autoencoder.py \
        --checkpoint_dataset pdiff-checkpoints --output_dir pdiff-autoencoder \
        --max_train_steps 2000 --train_batch_size 50 --use_ema --checkpointing_steps 500

Writes ``<output_dir>/autoencoder`` (a ``ParameterAutoencoder`` folder with normalization statistics and latent
scaling; written atomically, EMA weights when ``--use_ema``) and resumable ``<output_dir>/checkpoint-<step>``
folders. Pass the autoencoder to ``training/train_ldm.py --pretrained_autoencoder``. Also runs as plain
``python training/train_autoencoder.py ...``.
"""

import os
import sys
from typing import List, Optional

from accelerate.logging import get_logger

from pdiff_hf.accelerate_loop import (
    ArgumentParser,
    add_accelerate_args,
    add_autoencoder_model_args,
    add_data_args,
    add_hub_args,
    add_stage_args,
    load_checkpoint_dataset,
    make_accelerator,
    resolve_resume,
    run_autoencoder_stage,
    run_script,
    stage_config,
    validate_args,
)

logger = get_logger(__name__)


def parse_args(argv: Optional[List[str]] = None):
    parser = ArgumentParser(
        prog="train_autoencoder.py", description="Train the p-diff parameter autoencoder (Accelerate)."
    )
    add_data_args(parser, default_output_dir="pdiff-autoencoder")
    add_autoencoder_model_args(parser)
    add_stage_args(parser, what="autoencoder", learning_rate=1e-3, max_train_steps=2000, lr_warmup_steps=50)
    add_accelerate_args(parser)
    add_hub_args(parser)
    args = parser.parse_args(argv)
    return validate_args(args, needs_hub_module=False)


def main(args) -> int:
    _, params, layout = load_checkpoint_dataset(args.checkpoint_dataset, args.checkpoint_dataset_split)
    cfg = stage_config(args, "autoencoder", checkpoint_dir=args.output_dir)
    cfg.resume_from = resolve_resume(args.resume_from_checkpoint, args.output_dir)

    accelerator = make_accelerator(args, "pdiff_autoencoder")
    logger.info("checkpoint dataset %s: %d checkpoints, %s", args.checkpoint_dataset, params.shape[0], layout.describe())
    if args.resume_from_checkpoint and cfg.resume_from is None:
        logger.info("no checkpoint to resume from in %s; starting a new run", args.output_dir)
    final_dir = os.path.join(args.output_dir, "autoencoder")
    ae = run_autoencoder_stage(accelerator, args, params, layout, cfg, final_dir, release=False)

    if accelerator.is_main_process:
        err = (ae.latents_to_params(ae.params_to_latents(params.to(ae.device))).cpu() - params).pow(2).mean()
        logger.info("reconstruction MSE on the training checkpoints: %.4g", float(err))
        if args.push_to_hub:
            logger.info("pushing the autoencoder to the Hub repository %s", args.hub_model_id)
            ae.push_to_hub(args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def cli(argv: Optional[List[str]] = None) -> int:
    return run_script(main, parse_args, argv, prog="train_autoencoder.py")


if __name__ == "__main__":
    sys.exit(cli())
