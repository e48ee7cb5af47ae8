"""Forward time of the reference PointTransformerV3 through the pooler (no_grad), on CPU and CUDA if present.

    python scripts/bench_ptv3.py [--batch 2] [--points 8192] [--repeats 5] [--threads N]

The clouds are synthetic room scans (points on the walls, floor and a table of a 4 x 3 x 2.5 m room,
with rgb), so the voxel occupancy and the pooling ratios resemble a real scan rather than uniform noise.
Prints one row per device: median and min over ``--repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from egoexor.model.encoders import encode_point_clouds
from egoexor.model.point_transformer import PointTransformerV3

# (centre, size) of the boxes whose surfaces are sampled: the room, then a table.
BOXES = [((2.0, 1.5, 1.25), (4.0, 3.0, 2.5)), ((2.0, 1.5, 0.4), (1.2, 0.7, 0.8))]


def room_scan(num_points: int, generator: torch.Generator) -> torch.Tensor:
    """``[num_points, 6]`` xyz + rgb sampled on box surfaces, with 5 mm noise."""
    centres = torch.tensor([c for c, _ in BOXES])
    sizes = torch.tensor([s for _, s in BOXES])
    box = torch.randint(len(BOXES), (num_points,), generator=generator)
    unit = torch.rand(num_points, 3, generator=generator) - 0.5
    axis = torch.randint(3, (num_points,), generator=generator)
    side = torch.randint(2, (num_points,), generator=generator) - 0.5
    unit[torch.arange(num_points), axis] = side  # put each point on one face of its box
    xyz = centres[box] + unit * sizes[box] + 0.005 * torch.randn(num_points, 3, generator=generator)
    return torch.cat([xyz, torch.rand(num_points, 3, generator=generator)], 1)


def time_forward(model: PointTransformerV3, clouds: list[torch.Tensor], repeats: int) -> list[float]:
    device = model.project_pc.weight.device
    seconds = []
    for run in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            encode_point_clouds(model, clouds, generator=torch.Generator().manual_seed(run))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if run:  # the first run warms up allocators and kernels
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2, help="clouds per batch (default 2, the reference batch)")
    parser.add_argument("--points", type=int, default=8192, help="points per cloud (default 8192)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per device (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = PointTransformerV3().eval()
    generator = torch.Generator().manual_seed(0)
    clouds = [room_scan(args.points, generator) for _ in range(args.batch)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    print(f"PointTransformerV3 forward, batch {args.batch} x {args.points} points, no_grad, fp32")
    print(f"{'device':<8} {'threads':>7} {'median ms':>10} {'min ms':>8}")
    for device in devices:
        seconds = time_forward(model.to(device), [c.to(device) for c in clouds], args.repeats)
        threads = torch.get_num_threads() if device == "cpu" else "-"
        print(f"{device:<8} {threads:>7} {1e3 * statistics.median(seconds):>10.1f} {1e3 * min(seconds):>8.1f}")


if __name__ == "__main__":
    main()
