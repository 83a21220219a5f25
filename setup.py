"""Build impulse_attn. The compiled fit extension (impulse_attn._C) is added by csrc/ when sources exist."""
from setuptools import find_packages, setup

setup(
    name="impulse_attn",
    version="0.1.0",
    description="Impulse (convolutional) initialization of attention for data-efficient vision transformers",
    packages=find_packages(include=["impulse_attn", "impulse_attn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis"]},
    entry_points={"console_scripts": ["impulse-attn=impulse_attn.cli:main"]},
)
