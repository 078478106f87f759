"""pdiff-hf: p-diff (Neural Network Diffusion) as diffusers models and a DiffusionPipeline.

The repository's ``pipelines/`` folder is installed as ``pdiff_hf.pipelines`` and ``hub_cards/`` as
``pdiff_hf.hub_cards``: the only top-level import name is ``pdiff_hf``.

torch is required but not pinned to a build: on a CPU-only machine install a CPU build first
(``pip install torch==2.13.0`` here, or the CPU index of pytorch.org), GPU users keep their own.
"""

from setuptools import setup

setup(
    name="pdiff-hf",
    version="0.1.0",
    description="Neural Network Diffusion (p-diff) as a Hugging Face diffusers pipeline",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "pdiff_hf",
        "pdiff_hf.alignment",
        "pdiff_hf.checkpoints",
        "pdiff_hf.commands",
        "pdiff_hf.demos",
        "pdiff_hf.evaluation",
        "pdiff_hf.hub",
        "pdiff_hf.hub_cards",
        "pdiff_hf.models",
        "pdiff_hf.novelty",
        "pdiff_hf.pipelines",
        "pdiff_hf.remote_code",
        "pdiff_hf.tasks",
        "pdiff_hf.training",
        "pdiff_hf.utils",
    ],
    package_dir={"pdiff_hf": "pdiff_hf", "pdiff_hf.pipelines": "pipelines", "pdiff_hf.hub_cards": "hub_cards"},
    package_data={"pdiff_hf.hub_cards": ["*.md"]},
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.42",  # older versions import a .py that a local model_index.json names
        "transformers>=4.40",
        "accelerate>=0.30",
        "datasets>=2.19",
        "huggingface_hub>=0.23",
        "safetensors>=0.4",
        "numpy",
        "tqdm",
        "mnist1d>=0.0.2",
        "matplotlib>=3.5",
    ],
    extras_require={
        "test": ["pytest>=7", "scikit-learn", "tensorboard", "peft>=0.18.1"],
        "tensorboard": ["tensorboard"],
        "peft": ["peft>=0.18.1"],  # LoRA adapters (pdiff_hf.peft_adapters); 0.18 is the first for transformers v5
    },
    entry_points={"console_scripts": ["pdiff-hf=pdiff_hf.cli:main"]},
)
