"""The target check on a demo's pipeline folder, and the fingerprint's cost.

    python benchmarks/bench_target_check.py DEMO_DIR/pipeline

Mean test accuracy of 20 generated models (25 DPM-Solver steps, seed 0) as loaded, with an untrained MNIST1DCNN given
to from_pretrained (filled from target/), and after set_target(untrained copy): refused with TargetMismatchError, and
with check_weights=False (what the README's example used to give without a word); then the seconds to fingerprint a
config-built transformers ResNet-18 (11.7 M parameters) outside its last two BatchNorm layers.
"""
import sys, time, warnings
import torch
torch.set_num_threads(1)
from pdiff_hf import PDiffPipeline, TargetMismatchError, evaluate_parameters
from pdiff_hf.tasks import MNIST1DCNN, load_mnist1d

folder = sys.argv[1]
data = load_mnist1d()
def acc(pipe):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_models=20, num_inference_steps=25, generator=torch.Generator().manual_seed(0))
    return evaluate_parameters(pipe.target, pipe.layout, out.params, data.test_x, data.test_y).mean().item()

pipe = PDiffPipeline.from_pretrained(folder)
print(f"from_pretrained(folder): target {type(pipe.target).__name__}, mean test acc of 20 generated {acc(pipe):.2f}%")
filled = PDiffPipeline.from_pretrained(folder, target=MNIST1DCNN())
print(f"from_pretrained(folder, target=MNIST1DCNN()) (filled): {acc(filled):.2f}%")
try:
    pipe.set_target(MNIST1DCNN())
except TargetMismatchError as err:
    print("set_target(MNIST1DCNN()):", str(err)[:260], "...")
pipe.set_target(MNIST1DCNN(), check_weights=False)
print(f"set_target(MNIST1DCNN(), check_weights=False): {acc(pipe):.2f}%  (what the README example gave silently)")

from transformers import ResNetConfig, ResNetForImageClassification
from pdiff_hf import ParamLayout
from pdiff_hf.pipelines.pipeline_target import target_fingerprint
net = ResNetForImageClassification(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], num_labels=1000))
layout = ParamLayout.from_module(net, last_norm_layers=2)
t = time.perf_counter(); fp = target_fingerprint(net, layout); dt = time.perf_counter() - t
n = sum(p.numel() for p in net.parameters())
print(f"fingerprint of a ResNet-18 ({n:,} parameters, {len(fp)} tensors outside the selection): {dt:.3f} s")
