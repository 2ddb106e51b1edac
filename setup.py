"""LSKD: label-smoothing-aware knowledge distillation for NMT (on fairseq) and image classification."""
from setuptools import find_packages, setup

# torch: a range, so a GPU user's own CUDA build (installed first) is kept. On the CPU machines
# this project targets, name torch==2.13.0 in the same pip command (recipes/env.sh does), or pip
# resolves a multi-GB CUDA build.
TORCH = "torch>=2.6,<2.15"

# fairseq: the last official release (0.12.2) neither builds nor imports on Python 3.11.
# ve-fairseq 0.12.3 is an unofficial prebuilt wheel of upstream fairseq `main` with the 3.11
# fixes; it exists for CPython 3.11/3.12 only, so other Pythons fall back to fairseq-fixed
# (an sdist of the same code that compiles its extensions). Pinned: neither is an official
# release, and the plugins rely on fairseq internals. Both install the module `fairseq`.
FAIRSEQ = [
    've-fairseq==0.12.3; python_version >= "3.11" and python_version < "3.13"',
    'fairseq-fixed==0.12.3.1; python_version < "3.11" or python_version >= "3.13"',
]

setup(
    name="lskd",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["lskd", "lskd.*", "fairseq_plugins", "fairseq_plugins.*",
                                    "data_prep", "data_prep.*", "eval", "eval.*"]),
    python_requires=">=3.10",
    # omegaconf: lskd-train's structured configs (2.3, the series fairseq's hydra-core pulls in);
    # pyyaml: its YAML errors; tensorboardX: its TensorBoard logs (writes event files with
    # protobuf alone, where torch.utils.tensorboard needs the whole tensorboard package); Pillow: image folders;
    # py3langid: lskd-clean's language rule (needs only numpy, ships its model; 0.4 renamed the model loader)
    install_requires=[TORCH, *FAIRSEQ, "sacrebleu>=2.3,<3", "sacremoses>=0.1", "sentencepiece>=0.2",
                      "numpy", "tqdm", "omegaconf>=2.3,<2.4", "pyyaml>=6", "ctranslate2>=4.5,<5", "tensorboardX>=2.6", "Pillow>=9.1",
                      "py3langid>=0.4,<0.5"],
    # hf: Hugging Face teachers (lskd.hf_teacher): transformers 5 reads their directories and is
    # CTranslate2's converter's reader; safetensors comes with it
    extras_require={"plots": ["matplotlib>=3.7"], "test": ["pytest>=8", "matplotlib>=3.7"],
                    "hf": ["transformers>=5,<6"]},
    entry_points={
        "console_scripts": [
            "lskd-prepare=data_prep.cli:main",
            "lskd-eval=eval.cli:main",
            "lskd-dump-topk=data_prep.dump_topk:main",
            "lskd-report=eval.report:main",
            "lskd-distill-corpus=data_prep.distill:main",
            "lskd-train=lskd.train.cli:main",
            "lskd-vision-project=eval.vision_project:main",
            "lskd-export=eval.export:main",
            "lskd-clean=data_prep.clean:main",
            "lskd-ship-report=eval.ship_report:main",
        ]
    },
)
