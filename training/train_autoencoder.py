#!/usr/bin/env python
"""Train p-diff's parameter autoencoder on a checkpoint dataset with Accelerate.

    accelerate launch training/train_autoencoder.py \
        --dataset_name pdiff-checkpoints/checkpoints --output_dir pdiff-autoencoder \
        --checkpointing_steps 100 --resume_from_checkpoint latest

    # data parallel on a CPU-only machine (two gloo processes):
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train_autoencoder.py ...

The autoencoder is saved at ``--output_dir`` itself, as the class ``--autoencoder_type`` picked
(``ParameterAutoencoder``, ``TokenParameterAutoencoder`` or ``LinearParameterAutoencoder``; its ``config.json`` names
it, and ``pdiff_hf.models.autoencoder_class(name).from_pretrained(output_dir)`` loads it), next to resumable
``checkpoint-<step>`` folders; pass it to ``training/train_ldm.py --pretrained_autoencoder_name_or_path``, which
loads whichever class was saved.
The defaults are :class:`pdiff_hf.PDiffConfig`'s, so this script followed by ``train_ldm.py`` trains the same
weights as ``pdiff_hf.fit_pdiff`` in one process. Also runs as plain ``python training/train_autoencoder.py ...``.
"""

import argparse
import copy
import hashlib
import logging
import math
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from pdiff_hf.checkpoints.dataset import get_layout
from pdiff_hf.checkpoints.rows import (
    CheckpointRows,
    NormalizedRows,
    checkpoint_rows,
    fit_normalization,
)
from pdiff_hf.errors import NonFiniteParametersError, PDiffError, TrainingScriptError
from pdiff_hf.hub.datasets import load_checkpoint_dataset
from pdiff_hf.hub.secrets import install_log_redaction
from pdiff_hf.layout import check_finite
from pdiff_hf.training.config import (
    AUTOENCODER_TYPES,
    PDiffConfig,
    resolve_autoencoder_type,
)
from pdiff_hf.training.fit import check_linear_latent_size, train_autoencoder
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
    check_training_args,
    resolve_report_to,
    tracker_config,
)
from pdiff_hf.training.training_utils import (
    autoencoder_loss,
    build_autoencoder,
    make_dataloader,
)

logger = get_logger(__name__)
RUN_FLAGS = ("block_out_channels", "patch_size", "latent_channels", "input_noise", "latent_noise", "norm_mode",
                 "autoencoder_type", "token_size", "token_hidden_dim", "token_latent_channels", "linear_latent_length", "train_batch_size",
                 "gradient_accumulation_steps", "use_ema", "seed")  # fmt: skip
DEFAULTS = PDiffConfig()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train the p-diff parameter autoencoder (Accelerate).",
        formatter_class=ScriptHelpFormatter,
    )
    parser.add_argument("--dataset_name", type=str, required=True,
                        help="A checkpoint dataset: a save_to_disk folder or a Hub dataset repo id.")
    parser.add_argument("--dataset_config_name", type=str, default=None, help="Config of a Hub checkpoint dataset.")
    parser.add_argument("--dataset_split", type=str, default=None, help="Split of a DatasetDict (None: train).")
    parser.add_argument("--cache_dir", type=str, default=None, help="Where Hub datasets are cached.")
    parser.add_argument("--output_dir", type=str, default="pdiff-autoencoder",
                        help="Gets the trained autoencoder and the checkpoint-<step> folders.")
    parser.add_argument("--logging_dir", type=str, default="logs", help="Tracker logs, relative to --output_dir.")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="Seeds the model, the batches and the noise.")
    # model
    parser.add_argument("--block_out_channels", type=int, nargs="+", default=DEFAULTS.ae_block_out_channels,
                        help="Conv autoencoder: channels of each encoder block (None: 16 32 32 without patches, "
                        "32 64 64 64 with them).")
    parser.add_argument("--patch_size", type=int, default=DEFAULTS.ae_patch_size,
                        help="Conv autoencoder: entries per position of the first convolution (None: chosen by D, "
                        "1 up to D = 1024, then about D/512).")
    parser.add_argument("--latent_channels", type=int, default=DEFAULTS.latent_channels,
                        help="Conv autoencoder: latent channels.")
    parser.add_argument("--input_noise", type=float, default=DEFAULTS.input_noise,
                        help="p-diff's input noise augmentation (std).")
    parser.add_argument("--latent_noise", type=float, default=DEFAULTS.latent_noise,
                        help="p-diff's latent noise augmentation (std).")
    parser.add_argument("--norm_mode", type=str, default=DEFAULTS.norm_mode, choices=["per_dimension", "per_tensor"],
                        help="Standardize each entry, or each tensor, by its statistics over the checkpoints.")
    parser.add_argument("--autoencoder_type", type=str, default=DEFAULTS.autoencoder_type, choices=list(AUTOENCODER_TYPES),
                        help="'linear' (LinearParameterAutoencoder: whitened principal coefficients, fitted exactly, no "
                        "training steps), 'conv' (ParameterAutoencoder), 'token' (TokenParameterAutoencoder, for "
                        "10^5-10^6 parameters), 'learned' (conv or token by D: p-diff's recipe) or 'auto' (linear when "
                        "the checkpoints span its latent, else 'learned'; pdiff_hf.training.config.choose_autoencoder_type).")
    parser.add_argument("--linear_latent_length", type=int, default=DEFAULTS.ae_linear_latent_length,
                        help="Linear autoencoder: latent length (latent_channels x this many principal coefficients).")
    parser.add_argument("--linear_whiten", dest="linear_whiten", action="store_true", default=DEFAULTS.ae_linear_whiten,
                        help="Linear autoencoder: divide each principal coefficient by its standard deviation over the "
                        "checkpoints, so the diffusion sees unit variance in every direction (the default).")
    parser.add_argument("--no_linear_whiten", dest="linear_whiten", action="store_false",
                        help="Linear autoencoder: keep the raw principal coefficients.")
    parser.add_argument("--token_size", type=int, default=DEFAULTS.ae_token_size,
                        help="Token autoencoder: entries per token (None: chosen by D).")
    parser.add_argument("--token_hidden_dim", type=int, default=DEFAULTS.ae_token_hidden_dim,
                        help="Token autoencoder: width of the token MLP.")
    parser.add_argument("--token_latent_channels", type=int, default=DEFAULTS.ae_token_latent_channels,
                        help="Token autoencoder: latent channels.")
    add_optimization_args(parser, DEFAULTS, batch_size=DEFAULTS.ae_train_batch_size, steps=DEFAULTS.ae_steps,
                          learning_rate=DEFAULTS.ae_learning_rate, use_ema=DEFAULTS.ae_use_ema,
                          use_ema_help="Keep an EMA of the weights and save it (off for the autoencoder by default).")  # fmt: skip
    add_checkpoint_and_hub_args(parser, tracker_project_name="pdiff-autoencoder")
    args = parser.parse_args(argv)
    check_training_args(args)
    check_dataset_name(args.dataset_name)
    return args


def main(args):
    resume_path = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    check_output_dir(args.output_dir, args.resume_from_checkpoint)
    dataset = load_checkpoint_dataset(
        args.dataset_name, args.dataset_config_name, split=args.dataset_split, cache_dir=args.cache_dir
    )
    layout = get_layout(dataset)
    # (N, D) checkpoints read a block at a time from the dataset's Arrow column (memory-mapped after load_from_disk),
    # as fit_pdiff reads them: no copy of the whole matrix, raw or normalized (pdiff_hf.checkpoints.rows)
    params = checkpoint_rows(dataset)

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
    if report_note:
        logger.info(report_note)
    logger.info(f"checkpoint dataset {args.dataset_name}: {params.shape[0]} checkpoints, {layout.describe()}")

    # Model, with normalization statistics from all checkpoints (identical on every process).
    set_seed(args.seed)
    config = PDiffConfig(
        ae_block_out_channels=None if args.block_out_channels is None else tuple(args.block_out_channels),
        ae_patch_size=args.patch_size,
        latent_channels=args.latent_channels, input_noise=args.input_noise, latent_noise=args.latent_noise,
        norm_mode=args.norm_mode, autoencoder_type=args.autoencoder_type, ae_token_size=args.token_size,
        ae_token_hidden_dim=args.token_hidden_dim, ae_token_latent_channels=args.token_latent_channels,
        ae_linear_latent_length=args.linear_latent_length, ae_linear_whiten=args.linear_whiten,
    )
    config = resolve_autoencoder_type(config, layout.dim, params.shape[0])  # as fit_pdiff: "auto" is linear when N allows
    check_linear_latent_size(config, layout.dim, params.shape[0])
    try:
        autoencoder = build_autoencoder(layout, config)
    except ValueError as err:
        raise TrainingScriptError(f"autoencoder flags: {err}") from err
    if config.autoencoder_type == "linear":  # fitted exactly (principal components of the checkpoints), no training loop
        return fit_linear_autoencoder(accelerator, autoencoder, params, config, args)
    fit_normalization(autoencoder, params)  # block by block of columns; NaN/Inf raise NonFiniteParametersError
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            autoencoder.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=args.ema_inv_gamma,
            power=args.ema_power, model_cls=type(autoencoder), model_config=autoencoder.config,
        )

    # Checkpoints hold the autoencoder (and its EMA) as save_pretrained folders: safetensors, readable without this script.
    # The class is the one built for this run (conv or token), so resume and EMA reload what was saved.
    register_checkpoint_hooks(accelerator, type(autoencoder), "autoencoder", ema_model)

    # Batches are normalized when read, on the CPU with a frozen copy of the statistics (loader workers never touch
    # the accelerator's device); a batch equals the same rows of autoencoder.normalize(all checkpoints).
    train_data = NormalizedRows(params, copy.deepcopy(autoencoder).requires_grad_(False))
    train_dataloader = make_dataloader(
        train_data, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers
    )
    sampler = train_dataloader.sampler
    optimizer = torch.optim.AdamW(
        autoencoder.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
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
    autoencoder, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        autoencoder, optimizer, train_dataloader, lr_scheduler
    )
    if ema_model is not None:
        ema_model.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))

    # A checkpoint belongs to this run only if these flags and the training data are the same.
    fingerprint = {**run_fingerprint(args, RUN_FLAGS, torch.empty(0)), "data": data_digest(params)}
    global_step, first_epoch, resume_step = 0, 0, 0
    if resume_path:
        logger.info(f"resuming from {resume_path}")
        global_step, first_epoch, resume_step = load_checkpoint(
            accelerator, args.output_dir, args.resume_from_checkpoint, num_update_steps_per_epoch,
            args.gradient_accumulation_steps, fingerprint,
        )
    else:
        set_seed(args.seed, device_specific=True)  # different augmentation noise on every process

    logger.info(f"***** training the autoencoder: {max_train_steps} steps, {num_train_epochs} epochs, batch "
                f"{args.train_batch_size} x {accelerator.num_processes} processes x {args.gradient_accumulation_steps} *****")
    progress_bar = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process)
    autoencoder.train()
    # Ctrl-C / SIGTERM: finish the step, save a checkpoint on every process, exit with 130.
    with StopOnSignal() as stop:
        for epoch in range(first_epoch, num_train_epochs):
            loader = train_dataloader
            if epoch == first_epoch and resume_step:
                loader = accelerator.skip_first_batches(train_dataloader, resume_step)
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)  # with several processes, accelerate's loader does not pass the epoch on
            for batch in loader:
                with accelerator.accumulate(autoencoder):
                    loss = autoencoder_loss(autoencoder, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(autoencoder.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                if ema_model is not None:
                    ema_model.step(autoencoder.parameters())
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

    # Save the (EMA) weights with the latent scaling of the training checkpoints.
    accelerator.wait_for_everyone()
    autoencoder = accelerator.unwrap_model(autoencoder)
    if ema_model is not None:
        ema_model.copy_to(autoencoder.parameters())
    autoencoder.eval()
    for name, weight in autoencoder.named_parameters():
        check_finite(weight, f"autoencoder weight {name} after training (diverged: lower --learning_rate)")
    autoencoder.set_latent_scaling(params)  # encoded a chunk of rows at a time
    return save_autoencoder(accelerator, autoencoder, params, args)


def save_autoencoder(accelerator, autoencoder, params: CheckpointRows, args) -> int:
    """The main process saves the finished autoencoder at ``--output_dir`` (and pushes it with ``--push_to_hub``),
    logging its reconstruction MSE on the training checkpoints; every process ends training. Returns 0."""
    if accelerator.is_main_process:
        save_pretrained_into(autoencoder.to("cpu"), args.output_dir, marker="config.json")
        logger.info(f"saved the {type(autoencoder).__name__} to {args.output_dir}; reconstruction MSE on the training "
                    f"checkpoints {reconstruction_mse(autoencoder, params):.4g}")
        if args.push_to_hub:
            autoencoder.push_to_hub(args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    accelerator.end_training()
    return 0


def fit_linear_autoencoder(accelerator, autoencoder, params: CheckpointRows, config: PDiffConfig, args) -> int:
    """The linear autoencoder is fitted, not trained: normalization statistics and principal components of the
    checkpoints (``fit_pdiff``'s :func:`~pdiff_hf.training.fit.train_autoencoder`, a block of columns at a time),
    then the latent scaling; the main process saves it as any other autoencoder. Every process computes the same fit;
    there are no steps, so no checkpoint folders and nothing to resume."""
    if args.use_ema:
        logger.warning("--use_ema has no effect on the linear autoencoder: it is fitted exactly, not trained")
    train_autoencoder(autoencoder, params, config, progress=accelerator.is_local_main_process)  # + latent scaling
    return save_autoencoder(accelerator, autoencoder.eval(), params, args)


def data_digest(rows: CheckpointRows) -> str:
    """``run_fingerprint``'s hash of the checkpoints (blake2b of the float32 rows in order), computed a chunk of rows
    at a time: the same digest as hashing the whole ``(N, D)`` matrix, so older checkpoints still resume."""
    digest = hashlib.blake2b(digest_size=16)
    for chunk in rows.row_chunks():
        digest.update(chunk.contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def reconstruction_mse(autoencoder, rows: CheckpointRows) -> float:
    """Mean squared reconstruction error over all checkpoints, a chunk of rows at a time."""
    total = 0.0
    for chunk in rows.row_chunks(autoencoder.decode_chunk_entries):
        chunk = chunk.to(autoencoder.norm_mean.device)
        total += float((autoencoder.latents_to_params(autoencoder.params_to_latents(chunk)) - chunk).double().pow(2).sum())
    return total / (rows.shape[0] * rows.shape[1])


if __name__ == "__main__":
    try:
        args = parse_args()
        with output_dir_lock(args.output_dir):  # a second run into the same folder stops at once
            sys.exit(main(args))
    except PDiffError as err:
        print(f"{os.path.basename(__file__)}: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
