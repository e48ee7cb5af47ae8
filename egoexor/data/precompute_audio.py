"""Cache CLAP audio embeddings once: ``python -m egoexor.data.precompute_audio``.

The reference ran the frozen CLAP encoder inside every data worker, for every sample and epoch.
This writes each take's per-frame embeddings ``[F, D]`` to a sidecar HDF5 keyed like the main file
(``data/<st>/<pid>/take/<tid>/audio/clap``); point ``DataConfig.audio_cache`` (``--audio_cache``)
at it. The file records the encoder and ``audio_norm`` it was made with; a dataset configured with
another ``audio_norm`` refuses it.

Everything is checked before the encoder is loaded (:mod:`egoexor.cli`): the HDF5 file, the batch
size, an output that exists (``--overwrite``) or is the HDF5 file itself (always refused), and a file
without a single audio snippet.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from tqdm import tqdm

from egoexor import cli
from egoexor.atomic import atomic_output
from egoexor.config import DataConfig
from egoexor.data import layout
from egoexor.data.layout import TakeKey

if TYPE_CHECKING:  # CLAP (torch, transformers) loads where it runs: --help does not
    from egoexor.data.audio import ClapAudioEmbedder

COMMAND = "egoexor.data.precompute_audio"


def audio_takes(h5: h5py.File) -> list[tuple[TakeKey, h5py.Group]]:
    """The takes that have audio snippets."""
    return [(key, take) for key, take in layout.iter_takes(h5) if layout.AUDIO_SNIPPETS in take]


def precompute(
    hdf5: str | Path, output: str | Path, embedder: ClapAudioEmbedder, batch_size: int = 32, progress: bool = False
) -> int:
    """Embed every audio snippet of every take; returns the number of frames embedded."""
    from egoexor.data.audio import AudioCache

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with h5py.File(hdf5, "r") as source, atomic_output(output) as temporary, h5py.File(temporary, "w") as out:
        out.attrs["audio_encoder"] = embedder.name
        out.attrs["audio_norm"] = embedder.audio_norm
        takes = audio_takes(source)
        total = sum(take[layout.AUDIO_SNIPPETS].shape[0] for _, take in takes)
        with tqdm(total=total, desc="audio embeddings", unit="frame", disable=not progress) as bar:
            for key, take in takes:
                snippets = take[layout.AUDIO_SNIPPETS]
                target = out.create_dataset(
                    AudioCache.dataset_path(key), shape=(len(snippets), embedder.dim), dtype=np.float32
                )
                for start in range(0, len(snippets), batch_size):
                    chunk = snippets[start : start + batch_size]
                    target[start : start + len(chunk)] = embedder(list(chunk))
                    bar.update(len(chunk))
    return total


def _parser() -> cli.ArgumentParser:
    defaults = DataConfig()
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Write per-frame CLAP audio embeddings of a merged EgoExOR file to a sidecar HDF5.",
    )
    parser.add_argument("--hdf5", required=True, help="merged EgoExOR file")
    parser.add_argument("--out", required=True, help="sidecar HDF5 to write")
    parser.add_argument("--audio_encoder", default=defaults.audio_encoder, help="CLAP model: hub name or folder")
    parser.add_argument(
        "--audio_norm",
        default=defaults.audio_norm,
        choices=DataConfig.choices("audio_norm"),
        help="snippet normalisation before CLAP (must match the training configuration)",
    )
    parser.add_argument("--batch_size", type=cli.int_flag(1), default=32, help="snippets per CLAP call")
    cli.add_overwrite_flag(parser)
    return parser


def _run(args) -> int:
    from egoexor.data.audio import ClapAudioEmbedder

    cli.check_pretrained(args.audio_encoder, "--audio_encoder")
    out = cli.check_output(
        args.out, inputs=[args.hdf5, cli.local_path(args.audio_encoder)], overwrite=args.overwrite, flag="--out"
    )
    with layout.open_checked(args.hdf5, "--hdf5") as h5:
        if not audio_takes(h5):
            raise cli.CommandError(f"--hdf5 {args.hdf5}: no take has {layout.AUDIO_SNIPPETS}: nothing to embed")
    try:
        embedder = ClapAudioEmbedder(args.audio_encoder, args.audio_norm)
    except (OSError, ValueError) as error:  # transformers: OSError if absent, ValueError if not a CLAP model
        raise cli.CommandError(f"--audio_encoder {args.audio_encoder}: {error}") from None
    frames = precompute(args.hdf5, out, embedder, args.batch_size, progress=True)
    print(f"wrote {out}: embeddings of {frames} frames")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=(layout.LayoutError,))


if __name__ == "__main__":
    sys.exit(main())
