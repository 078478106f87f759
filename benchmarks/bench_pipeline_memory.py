"""Peak memory of one ``PDiffPipeline`` call against the estimate ``pipe(num_models=...)`` is checked with
(``pipelines/pipeline_memory.py``). One fresh process per size:

    OMP_NUM_THREADS=1 python benchmarks/bench_pipeline_memory.py 20000
    OMP_NUM_THREADS=1 python benchmarks/bench_pipeline_memory.py 60000

The pipeline is the tests' tiny one (D = 64, latents 2 x 16, denoiser channels (8, 16), untrained weights, 3
DPM-Solver++ steps); the peak is the increase of ru_maxrss over a warm-up call of 2 models.
"""

import argparse
import resource

import torch

from pdiff_hf import LatentUNet1DModel, ParameterAutoencoder, PDiffPipeline
from pdiff_hf.pipelines.pipeline_memory import sampling_bytes_per_model
from pdiff_hf.training.training_utils import sampling_scheduler_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("num_models", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ae = ParameterAutoencoder(in_dim=64, block_out_channels=(8, 8), latent_channels=2, pos_channels=2).eval()
    denoiser = LatentUNet1DModel(in_channels=2, sample_length=ae.latent_length, block_out_channels=(8, 16),
                                 norm_num_groups=4).eval()  # fmt: skip
    pipe = PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    pipe(num_models=2, num_inference_steps=2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipe(num_models=args.num_models, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = args.num_models * sum(sampling_bytes_per_model(tuple(ae.latent_shape), 64, denoiser.config))
    print(f"num_models={args.num_models}: measured peak RSS increase {(peak - before) / 2**20:.0f} MiB, "
          f"estimate {estimate / 2**20:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
