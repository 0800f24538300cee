"""diffusion-jax: guided-diffusion and GLIDE in JAX/Flax."""
import pathlib

from setuptools import find_packages, setup

README = pathlib.Path(__file__).with_name("README.md")

setup(
    name="diffusion-jax",
    version="0.1.0",
    description=("Guided-diffusion and GLIDE image diffusion models in JAX/Flax, "
                 "from one CPU to multi-host pods"),
    long_description=README.read_text() if README.exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["diffusion_jax", "diffusion_jax.*"]),
    # The shipped models (safetensors + JSON, 54 MB: docs/models.md) and
    # GLIDE's two BPE vocabularies (MIT, OpenAI: text/bpe/LICENSE).
    package_data={"diffusion_jax.evaluation": ["weights/*/*"],
                  "diffusion_jax.pretrained": ["manifest.json", "*/*"],
                  "diffusion_jax.text": ["bpe/*"]},
    python_requires=">=3.10",
    # jax, flax and orbax move their APIs between minor versions: pinned to
    # the ranges this code is tested on (CPU 0.10.2, GPU 0.11.2).
    install_requires=[
        "jax>=0.10.2,<0.13",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-datasets>=4.9.9,<5",
        "array_record>=0.8",
        "grain>=0.2.18,<0.3",
        "ml_collections>=1.0,<2",
        "tensorboardX>=2.6",
        "scikit-learn>=1.4",  # the bundled handwritten digits
        "absl-py>=2.1",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "pillow>=10",
        "tqdm>=4.66",
        "safetensors>=0.4",  # exported models
        "tokenizers>=0.20,<1",  # GLIDE's GPT-2 and CLIP BPE (Hugging Face)
    ],
    extras_require={
        # ruff: the linter CI runs (ruff.toml); pinned, as its rules move.
        # nbclient and ipykernel: the tests run every notebook (tests/test_notebooks.py).
        # pytest<9.2: its node ids drop the groups of xdist's --dist loadgroup
        # (pytest-xdist#1386), and shared fixtures get built once per worker.
        "test": ["pytest>=8,<9.2", "pytest-xdist>=3.5", "scipy>=1.11", "ruff>=0.17,<0.18",
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
        "notebooks": ["jupyter", "nbclient>=0.10", "ipykernel>=6.29"],
        # The PyTorch twin of the training benchmark; 2.13.0 is a CPU build.
        "bench": ["torch>=2.5,<=2.13.0"],
        # --mode=convert reads OpenAI's released .pt files (weights only). The
        # CPU build is enough: pip install torch --index-url
        # https://download.pytorch.org/whl/cpu, before this extra.
        "convert": ["torch>=2.5,<=2.13.0"],
        # tests/data/diffusers_parity.py writes the solvers' reference data.
        "parity": ["torch>=2.5,<=2.13.0", "diffusers>=0.30"],
        # The manual (docs/conf.py): Sphinx, the JAX libraries' theme, MyST
        # Markdown and notebooks (rendered from their saved outputs).
        "docs": ["sphinx>=8,<10", "sphinx-book-theme>=1.1,<1.5", "myst-parser>=4,<6",
                 "myst-nb>=1.1,<1.5"],
    },
    entry_points={"console_scripts": ["diffusion-jax=diffusion_jax.main:run"]},
    license="Apache-2.0",
)
