"""egoexor SUBCOMMAND [ARGS]: every egoexor command under one name (``python -m egoexor`` is the same).

Each subcommand is the module that ``python -m egoexor.X`` runs, imported only when it is asked for, so
``egoexor --help`` and ``egoexor env`` do not pay for the model code. The modules import torch and transformers
where they run, not at the top, so that ``egoexor SUBCOMMAND --help`` prints without them; ``train``'s help
comes from :mod:`egoexor.config` (the training module defines its Trainer classes on import).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from egoexor import __version__

#: subcommand -> (module, what it does)
SUBCOMMANDS = {
    "download": ("egoexor.download", "fetch EgoExOR files into the Hugging Face cache"),
    "merge": ("egoexor.data.merge_h5", "merge per-procedure HDF5 files and splits.h5 into one file"),
    "samples": ("egoexor.data.make_samples", "write LLaVA-format training/test samples"),
    "audio": ("egoexor.data.precompute_audio", "compute the CLAP audio features once"),
    "synthetic": ("egoexor.data.synthetic", "write a synthetic dataset in the EgoExOR layout"),
    "train": ("egoexor.train", "train the model (1 GPU, torchrun/DeepSpeed, or CPU)"),
    "infer": ("egoexor.infer", "generate scene graphs for samples and evaluate them"),
    "evaluate": ("egoexor.evaluate", "evaluate predictions against the ground truth"),
    "ablate": ("egoexor.ablate", "evaluate with each input removed in turn"),
    "probe": ("egoexor.probe", "linear probe of each input on the LLM-input visual tokens"),
    "viz": ("egoexor.viz.__main__", "pictures of a timepoint, videos of a take, the error page"),
    "inspect": ("egoexor.inspect_model", "parameters and memory of a model configuration"),
    "convert": ("egoexor.convert_reference", "import the reference's released checkpoint"),
    "reproduce": ("egoexor.reproduce", "the paper's table from the released data and checkpoint (GPU)"),
    "demo": ("egoexor.demo", "the whole pipeline on synthetic data with a tiny model"),
    "memory-benchmark": ("egoexor.memory_benchmark", "the scene-graph memory benchmark on synthetic takes"),
    "env": ("egoexor.env", "versions, GPUs and the lock check for a bug report"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    return "\n".join(
        [
            "usage: egoexor [--version] SUBCOMMAND [ARGS ...]",
            "",
            "subcommands:",
            *lines,
            "",
            "egoexor SUBCOMMAND --help explains each one.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"egoexor {__version__}")
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"egoexor: error: unknown subcommand {argv[0]!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    if argv[0] == "train":  # its help without the training module, which imports torch and transformers
        from egoexor import cli, config

        if config.asks_for_help(argv[1:]):
            return cli.run("egoexor.train", lambda: print(config.train_help()))
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
