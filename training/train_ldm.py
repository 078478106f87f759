#!/usr/bin/env python
"""Train p-diff's latent denoiser with Accelerate on the latents of a trained parameter autoencoder, and save a
``PDiffPipeline`` at ``--output_dir``.

    accelerate launch training/train_autoencoder.py --dataset_name ckpts/checkpoints --output_dir pdiff-autoencoder
    accelerate launch training/train_ldm.py --dataset_name ckpts/checkpoints \
        --pretrained_autoencoder_name_or_path pdiff-autoencoder --output_dir pdiff-ldm \
        --checkpointing_steps 100 --resume_from_checkpoint latest

    # data parallel on a CPU-only machine (two gloo processes):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_ldm.py ...

A conditional checkpoint dataset (several tasks, :func:`pdiff_hf.checkpoints.conditional.collect_conditional_checkpoints`)
trains a denoiser conditional on the task with ``--condition_column condition``; sample it with
``pipe(condition=t, guidance_scale=s)``.

Then ``PDiffPipeline.from_pretrained("pdiff-ldm")``. Resumable ``checkpoint-<step>`` folders sit next to the
pipeline. The defaults are :class:`pdiff_hf.PDiffConfig`'s, so ``train_autoencoder.py`` followed by this script
trains the same weights as ``pdiff_hf.fit_pdiff`` in one process. Also runs as plain ``python training/train_ldm.py``.
"""

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from pdiff_hf.pipelines import PDiffPipeline
from tqdm.auto import tqdm

from pdiff_hf.checkpoints.dataset import (
    checkpoint_conditions,
    get_condition_names,
    get_layout,
)
from pdiff_hf.checkpoints.rows import checkpoint_rows
from pdiff_hf.errors import (
    ConditionError,
    DimensionMismatchError,
    NonFiniteParametersError,
    PDiffError,
    TrainingScriptError,
)
from pdiff_hf.hub.datasets import load_checkpoint_dataset
from pdiff_hf.hub.secrets import install_log_redaction
from pdiff_hf.layout import check_finite
from pdiff_hf.models import LatentUNet1DModel
from pdiff_hf.training.config import PDiffConfig
from pdiff_hf.training.resume import (
    StopOnSignal,
    check_output_dir,
    load_checkpoint,
    output_dir_lock,
    register_checkpoint_hooks,
    resolve_resume_checkpoint,
    run_fingerprint,
    save_checkpoint,
    save_pretrained_into,
)
from pdiff_hf.training.script_args import (
    ScriptHelpFormatter,
    add_checkpoint_and_hub_args,
    add_optimization_args,
    check_dataset_name,
    check_local_path,
    check_training_args,
    load_autoencoder,
    resolve_report_to,
    tracker_config,
)
from pdiff_hf.training.training_utils import (
    build_denoiser,
    denoiser_loss,
    make_dataloader,
    noise_scheduler_for,
    sampling_scheduler_for,
)

logger = get_logger(__name__)
RUN_FLAGS = ("block_out_channels", "layers_per_block", "num_train_timesteps", "beta_schedule", "prediction_type",
             "objective", "train_batch_size", "gradient_accumulation_steps", "use_ema", "seed")  # fmt: skip
# also part of the run of a conditional denoiser (--condition_column); its condition ids join the data hash
CONDITION_FLAGS = ("condition_column", "num_conditions", "condition_dropout")
DEFAULTS = PDiffConfig()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train the p-diff latent denoiser and save a PDiffPipeline.",
        formatter_class=ScriptHelpFormatter,
    )
    parser.add_argument("--dataset_name", type=str, required=True,
                        help="A checkpoint dataset: a save_to_disk folder or a Hub dataset repo id.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="Config of a Hub checkpoint dataset.")
    parser.add_argument("--dataset_split", type=str, default=None, help="Split of a DatasetDict (None: train).")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where Hub datasets and models are cached.")
    parser.add_argument("--pretrained_autoencoder_name_or_path", type=str, required=True,
                        help="A trained autoencoder (any class of pdiff_hf.models: conv, token, linear): the "
                        "--output_dir of train_autoencoder.py or a Hub id.")
    parser.add_argument("--pretrained_target_name_or_path", type=str, default=None,
                        help="The target network (a save_pretrained folder: a pdiff_hf.tasks network, a diffusers or "
                        "transformers model) saved with the pipeline, so output_type='model' works from its folder "
                        "alone. None: the collection's target/ next to a local --dataset_name (collect_checkpoints.py "
                        "writes DIR/target and DIR/checkpoints) when it exists.")
    parser.add_argument("--no_target", action="store_true", help="Save the pipeline without a target network.")
    parser.add_argument("--output_dir", type=str, default="pdiff-ldm",
                        help="Gets the PDiffPipeline and the checkpoint-<step> folders.")
    parser.add_argument("--logging_dir", type=str, default="logs", help="Tracker logs, relative to --output_dir.")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="Seeds the model, the batches and the noise.")
    # model and diffusion objective
    parser.add_argument("--block_out_channels", type=int, nargs="+", default=list(DEFAULTS.denoiser_block_out_channels),
                        help="Channels of each UNet block.")
    parser.add_argument("--layers_per_block", type=int, default=DEFAULTS.layers_per_block, help="ResNet layers per block.")
    parser.add_argument("--num_train_timesteps", type=int, default=DEFAULTS.num_train_timesteps,
                        help="Diffusion steps of the training noise process.")
    parser.add_argument("--beta_schedule", type=str, default=DEFAULTS.beta_schedule,
                        choices=["linear", "scaled_linear", "squaredcos_cap_v2"], help="DDPM beta schedule.")
    parser.add_argument("--prediction_type", type=str, default=DEFAULTS.prediction_type,
                        choices=["epsilon", "sample", "v_prediction"],
                        help="What the denoiser predicts; 'sample' (x0) kept every demo sample on the checkpoint "
                        "manifold after short training, 'epsilon' left about 8%% off it.")
    parser.add_argument("--objective", type=str, default=DEFAULTS.objective, choices=["ddpm", "flow_matching"],
                        help="Training objective: 'ddpm' (the beta schedule and --prediction_type above) or "
                        "'flow_matching' (rectified flow, sampled with FlowMatchEulerDiscreteScheduler).")
    # conditioning
    parser.add_argument("--condition_column", type=str, default=None,
                        help="Integer column of task ids (e.g. 'condition'): train a denoiser conditional on it.")
    parser.add_argument("--num_conditions", type=int, default=DEFAULTS.num_conditions,
                        help="Number of condition ids K (0: the dataset's condition_names, else max id + 1).")
    parser.add_argument("--condition_dropout", type=float, default=DEFAULTS.condition_dropout,
                        help="Probability that a training condition is replaced by the null id (classifier-free "
                        "guidance needs it > 0).")
    add_optimization_args(parser, DEFAULTS, batch_size=DEFAULTS.denoiser_train_batch_size,
                          steps=DEFAULTS.denoiser_steps, learning_rate=DEFAULTS.denoiser_learning_rate,
                          use_ema=DEFAULTS.use_ema,
                          use_ema_help="Keep an EMA of the weights and save it (--no-use_ema to turn off).")  # fmt: skip
    # sanity check of the finished pipeline
    parser.add_argument("--num_validation_models", type=int, default=4, help="Models sampled at the end (0: none).")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="Sampling steps of the validation models.")
    add_checkpoint_and_hub_args(parser, tracker_project_name="pdiff-ldm")
    args = parser.parse_args(argv)
    check_training_args(args)
    check_dataset_name(args.dataset_name)
    check_local_path(args.pretrained_autoencoder_name_or_path, "--pretrained_autoencoder_name_or_path")
    if args.pretrained_target_name_or_path is not None:
        if args.no_target:
            raise TrainingScriptError("expected --pretrained_target_name_or_path or --no_target, found both")
        check_local_path(args.pretrained_target_name_or_path, "--pretrained_target_name_or_path")
    if args.num_train_timesteps < 2:
        raise TrainingScriptError(f"--num_train_timesteps: expected a value >= 2, found {args.num_train_timesteps}")
    if not 1 <= args.num_inference_steps <= args.num_train_timesteps:
        raise TrainingScriptError(
            f"--num_inference_steps: expected a value in [1, --num_train_timesteps={args.num_train_timesteps}], "
            f"found {args.num_inference_steps}"
        )
    if args.num_validation_models < 0:
        raise TrainingScriptError(f"--num_validation_models: expected a value >= 0, found {args.num_validation_models}")
    if args.num_conditions < 0:
        raise TrainingScriptError(f"--num_conditions: expected a value >= 0, found {args.num_conditions}")
    if not 0.0 <= args.condition_dropout < 1.0:
        raise TrainingScriptError(f"--condition_dropout: expected a value in [0, 1), found {args.condition_dropout}")
    if args.condition_column is None and args.num_conditions:
        raise TrainingScriptError(
            f"--num_conditions: expected it only with --condition_column, found {args.num_conditions} without it"
        )
    return args


def load_target_network(args, layout):
    """The target network to save with the pipeline (``None`` without one): ``--pretrained_target_name_or_path``, or
    the collection's ``target/`` beside a local ``--dataset_name``. Its class comes from its ``config.json`` and must
    be a ``pdiff_hf.tasks`` network, a diffusers model or a transformers model (never code from the folder); its
    weights are safetensors only; it must hold every tensor of the dataset's layout."""
    from pdiff_hf.hub.target_classes import target_class_of_folder
    from pdiff_hf.hub.validate import load_model_folder

    path = args.pretrained_target_name_or_path
    if path is None and not args.no_target and os.path.isdir(args.dataset_name):
        sibling = os.path.join(os.path.dirname(os.path.normpath(args.dataset_name)), "target")
        path = sibling if os.path.isfile(os.path.join(sibling, "config.json")) else None
    if path is None or args.no_target:
        return None
    flag = "--pretrained_target_name_or_path"
    cls = target_class_of_folder(Path(path), flag)
    target = load_model_folder(cls, Path(path), flag)
    layout.check_module(target)  # LayoutMismatchError naming a missing or misshapen tensor
    return target


def load_conditions(dataset, args):
    """``(conditions (N,) or None, K, condition names or None)`` of ``--condition_column``; :class:`ConditionError`
    for a missing column, ids outside ``[0, K)`` or names that do not fit ``K``."""
    if args.condition_column is None:
        return None, 0, None
    conditions = checkpoint_conditions(dataset, args.condition_column, num_conditions=args.num_conditions or None)
    names = get_condition_names(dataset)
    num_conditions = args.num_conditions or (len(names) if names else int(conditions.max()) + 1)
    if names is not None and len(names) != num_conditions:
        raise ConditionError(
            f"--num_conditions: expected {len(names)} (one per condition name of the dataset: {names}), "
            f"found {num_conditions}"
        )
    return conditions, num_conditions, names


def main(args):
    resume_path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    check_output_dir(args.output_dir, args.resume_from_checkpoint)
    # whichever autoencoder class its config.json names (conv, token, linear: pdiff_hf.models.autoencoder_class)
    autoencoder = load_autoencoder(args.pretrained_autoencoder_name_or_path, cache_dir=args.cache_dir)
    dataset = load_checkpoint_dataset(
        args.dataset_name, args.dataset_config_name, split=args.dataset_split, cache_dir=args.cache_dir
    )
    layout = get_layout(dataset)
    if autoencoder.param_layout != layout:
        found = autoencoder.param_layout.describe() if autoencoder.param_layout else f"D={autoencoder.config.in_dim}"
        raise DimensionMismatchError(
            f"--pretrained_autoencoder_name_or_path: expected an autoencoder for the dataset's parameters "
            f"[{layout.describe()}], found one for [{found}]"
        )
    params = checkpoint_rows(dataset)  # (N, D), read a block at a time (memory-mapped after load_from_disk)
    conditions, num_conditions, condition_names = load_conditions(dataset, args)  # (N,) task ids, or None
    target = load_target_network(args, layout)  # before any training: a bad folder fails now

    args.report_to, report_note = resolve_report_to(args.report_to)  # "auto": tensorboard when installed
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    install_log_redaction()  # no token (--hub_token, hf_…) in any log line
    logger.info(accelerator.state, main_process_only=False)
    if target is not None:
        logger.info(f"target network {type(target).__name__}: saved with the pipeline in {args.output_dir}/target")
    if report_note:
        logger.info(report_note)

    set_seed(args.seed)
    config = PDiffConfig(
        denoiser_block_out_channels=tuple(args.block_out_channels), layers_per_block=args.layers_per_block,
        num_train_timesteps=args.num_train_timesteps, beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type, num_conditions=num_conditions, condition_dropout=args.condition_dropout,
        objective=args.objective,
    )
    try:
        denoiser = build_denoiser(autoencoder, config, condition_names=condition_names)
    except ValueError as err:
        raise TrainingScriptError(f"--block_out_channels / --prediction_type: {err}") from err

    # Clean latents (N, C, L) of every checkpoint: the autoencoder is frozen and deterministic in eval mode.
    autoencoder.eval().requires_grad_(False)
    latents = autoencoder.params_to_latents(params).float()  # a chunk of rows at a time, as in fit_pdiff
    check_finite(latents, f"latents of the autoencoder {args.pretrained_autoencoder_name_or_path}")
    logger.info(f"{params.shape[0]} checkpoints of D={params.shape[1]} -> latents {tuple(latents.shape[1:])}")
    noise_scheduler = noise_scheduler_for(denoiser)
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            denoiser.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
            power=args.ema_power, model_cls=LatentUNet1DModel, model_config=denoiser.config,
        )

    # Checkpoints hold the denoiser (and its EMA) as save_pretrained folders: safetensors, readable without this script.
    register_checkpoint_hooks(accelerator, LatentUNet1DModel, "denoiser", ema_model)

    train_dataloader = make_dataloader(
        latents, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers, conditions=conditions
    )  # batches: latents (B, C, L), or [latents, condition ids (B,)] with --condition_column
    sampler = train_dataloader.sampler
    optimizer = torch.optim.AdamW(
        denoiser.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    num_update_steps_per_epoch = math.ceil(
        math.ceil(len(train_dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps
    )
    max_train_steps = args.max_train_steps or args.num_train_epochs * num_update_steps_per_epoch
    num_train_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)
    # The prepared scheduler steps once per process per optimizer step, as in diffusers' examples.
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    denoiser, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        denoiser, optimizer, train_dataloader, lr_scheduler
    )
    if ema_model is not None:
        ema_model.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))

    # A checkpoint belongs to this run only if these flags and the training data are the same.
    if conditions is None:
        fingerprint = run_fingerprint(args, RUN_FLAGS, latents)
    else:
        data = torch.cat([latents.flatten(1), conditions[:, None].to(latents.dtype)], dim=1)
        fingerprint = run_fingerprint(args, RUN_FLAGS + CONDITION_FLAGS, data)
    global_step, first_epoch, resume_step = 0, 0, 0
    if resume_path:
        logger.info(f"resuming from {resume_path}")
        global_step, first_epoch, resume_step = load_checkpoint(
            accelerator, args.output_dir, args.resume_from_checkpoint, num_update_steps_per_epoch,
            args.gradient_accumulation_steps, fingerprint,
        )
    else:
        set_seed(args.seed, device_specific=True)  # different diffusion noise on every process

    logger.info(f"***** training the denoiser: {max_train_steps} steps, {num_train_epochs} epochs, batch "
                f"{args.train_batch_size} x {accelerator.num_processes} processes x {args.gradient_accumulation_steps} *****")
    progress_bar = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process)
    denoiser.train()
    # Ctrl-C / SIGTERM: finish the step, save a checkpoint on every process, exit with 130.
    with StopOnSignal() as stop:
        for epoch in range(first_epoch, num_train_epochs):
            loader = train_dataloader
            if epoch == first_epoch and resume_step:
                loader = accelerator.skip_first_batches(train_dataloader, resume_step)
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)  # with several processes, accelerate's loader does not pass the epoch on
            for batch in loader:
                with accelerator.accumulate(denoiser):
                    if conditions is None:
                        loss = denoiser_loss(denoiser, noise_scheduler, batch)
                    else:
                        loss = denoiser_loss(denoiser, noise_scheduler, batch[0], batch[1], args.condition_dropout)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(denoiser.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                if ema_model is not None:
                    ema_model.step(denoiser.parameters())
                global_step += 1
                progress_bar.update(1)
                logs = {"loss": accelerator.reduce(loss.detach(), "mean").item(), "lr": lr_scheduler.get_last_lr()[0]}
                if not math.isfinite(logs["loss"]):
                    raise NonFiniteParametersError(
                        f"expected a finite loss, found {logs['loss']} at step {global_step}: training diverged "
                        "(lower --learning_rate); the checkpoints saved so far are kept"
                    )
                progress_bar.set_postfix(**logs)
                accelerator.log(logs, step=global_step)
                if stop.requested:
                    accelerator.set_trigger()
                interrupted = accelerator.check_trigger()
                if global_step % args.checkpointing_steps == 0 or interrupted:
                    path = save_checkpoint(
                        accelerator, args.output_dir, global_step, args.checkpoints_total_limit, fingerprint
                    )
                    logger.info(f"saved state to {path}")
                if interrupted:
                    logger.warning(f"interrupted at step {global_step}; resume with --resume_from_checkpoint latest")
                    accelerator.end_training()
                    return 130
                if global_step >= max_train_steps:
                    break
            if global_step >= max_train_steps:
                break
    progress_bar.close()

    # Assemble the pipeline with the (EMA) weights, sample a few models as a check, save it at --output_dir.
    accelerator.wait_for_everyone()
    denoiser = accelerator.unwrap_model(denoiser)
    if ema_model is not None:
        ema_model.copy_to(denoiser.parameters())
    denoiser.eval().to("cpu")
    for name, weight in denoiser.named_parameters():
        check_finite(weight, f"denoiser weight {name} after training (diverged: lower --learning_rate)")
    denoiser.register_to_config(sample_abs_max=round(float(latents.abs().max()), 4))
    if accelerator.is_main_process:
        pipeline = PDiffPipeline(
            autoencoder=autoencoder.to("cpu"), denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser)
        )
        if target is not None:  # saved in target/ with a fingerprint: the folder gives working networks alone
            pipeline.set_target(target)
        if args.num_validation_models:
            pipeline.set_progress_bar_config(disable=True)
            generated = pipeline(
                num_models=args.num_validation_models, num_inference_steps=args.num_inference_steps,
                generator=torch.Generator().manual_seed(args.seed),
                condition=None if conditions is None else torch.arange(args.num_validation_models) % num_conditions,
            ).params
            nearest = torch.stack([torch.cdist(generated, rows).min(dim=1).values for rows in params.row_chunks()])
            distance = nearest.min(dim=0).values.mean()
            logger.info(f"sampled {generated.shape[0]} models: mean distance to the nearest checkpoint {distance:.4g}")
        save_pretrained_into(pipeline, args.output_dir, marker="model_index.json")
        logger.info(f"saved the PDiffPipeline to {args.output_dir}")
        if args.push_to_hub:
            pipeline.push_to_hub(
                args.hub_model_id, token=args.hub_token, private=args.hub_private_repo,
                checkpoint_dataset_id=None if os.path.isdir(args.dataset_name) else args.dataset_name,
                training_args=tracker_config(args),
            )
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    try:
        args = parse_args()
        with output_dir_lock(args.output_dir):  # a second run into the same folder stops at once
            sys.exit(main(args))
    except PDiffError as err:
        print(f"{os.path.basename(__file__)}: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
