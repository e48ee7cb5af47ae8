"""Cache CLAP audio embeddings once: ``python -m egoexor.data.precompute_audio``.

The reference ran the frozen CLAP encoder inside every data worker, for every sample and epoch.
This writes each take's per-frame embeddings ``[F, D]`` to a sidecar HDF5 keyed like the main file
(``data/<st>/<pid>/take/<tid>/audio/clap``); point ``DataConfig.audio_cache`` (``--audio_cache``)
at it. The file records the encoder and ``audio_norm`` it was made with; a dataset configured with
another ``audio_norm`` refuses it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from egoexor.atomic import atomic_output
from egoexor.config import DataConfig
from egoexor.data import layout
from egoexor.data.audio import ClapAudioEmbedder
from egoexor.data.dataset import AudioCache


def precompute(hdf5: str | Path, output: str | Path, embedder: ClapAudioEmbedder, batch_size: int = 32,
               progress: bool = False) -> int:  # fmt: skip
    """Embed every audio snippet of every take; returns the number of frames embedded."""
    with h5py.File(hdf5, "r") as source, atomic_output(output) as temporary, h5py.File(temporary, "w") as out:
        out.attrs["audio_encoder"] = embedder.name
        out.attrs["audio_norm"] = embedder.audio_norm
        takes = [(key, take) for key, take in layout.iter_takes(source) if layout.AUDIO_SNIPPETS in take]
        total = sum(take[layout.AUDIO_SNIPPETS].shape[0] for _, take in takes)
        with tqdm(total=total, desc="audio embeddings", unit="frame", disable=not progress) as bar:
            for key, take in takes:
                snippets = take[layout.AUDIO_SNIPPETS]
                target = out.create_dataset(
                    f"{key.path}/audio/{AudioCache.DATASET}", shape=(len(snippets), embedder.dim), dtype=np.float32
                )
                for start in range(0, len(snippets), batch_size):
                    chunk = snippets[start : start + batch_size]
                    target[start : start + len(chunk)] = embedder(list(chunk))
                    bar.update(len(chunk))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(
        prog="python -m egoexor.data.precompute_audio",
        description="Write per-frame CLAP audio embeddings of a merged EgoExOR file to a sidecar HDF5.",
    )
    parser.add_argument("--hdf5", required=True, help="merged EgoExOR file")
    parser.add_argument("--out", required=True, help="sidecar HDF5 to write (replaced if it exists)")
    parser.add_argument("--audio_encoder", default=defaults.audio_encoder, help="CLAP model: hub name or folder")
    parser.add_argument("--audio_norm", default=defaults.audio_norm, choices=("reference", "per_snippet"),
                        help="snippet normalisation before CLAP (must match the training configuration)")
    parser.add_argument("--batch_size", type=int, default=32, help="snippets per CLAP call")  # fmt: skip
    args = parser.parse_args(argv)
    hdf5 = Path(args.hdf5)
    if not hdf5.is_file() or not h5py.is_hdf5(hdf5):
        print(f"precompute_audio: error: {hdf5}: no such HDF5 file", file=sys.stderr)
        return 2
    try:
        embedder = ClapAudioEmbedder(args.audio_encoder, args.audio_norm)
        frames = precompute(hdf5, args.out, embedder, args.batch_size, progress=True)
    except (OSError, layout.LayoutError) as error:
        print(f"precompute_audio: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: embeddings of {frames} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
