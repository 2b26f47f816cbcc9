"""Benchmark of streaming region pooling against stitching the full feature map.

Usage::

    .venv/bin/python benchmarks/bench_pooling.py                    # full size, CPU
    .venv/bin/python benchmarks/bench_pooling.py --crop 64          # quick check
    .venv/bin/python benchmarks/bench_pooling.py --device cuda --hidden 32 --repeats 5

One synthetic patient at ``full`` size (PET about 4 mm, 144 x 96 x ~290 voxels; lesion
instances and the 71 organ groups as label maps) is rendered once and stored in a
temporary folder. Then each of three modes runs ``--repeats`` times, every run in a fresh
child process so that its peak resident memory (``ru_maxrss``) is its own:

(a) ``segment``: the sliding-window pass with probability stitching only (the
    segmentation output), `pool_regions_streaming` with no label map;
(b) ``streaming``: the same pass with streaming pooling over lesions and organs;
(c) ``full``: the same pass stitching the full (128, X, Y, Z) map, then masking
    (`pool_regions_full`).

Printed: median seconds of the pass (the model's first call, a warm-up, is not timed)
and of its part outside the network, median peak RSS (whole process, and its increase
during the pass), the memory ratio (c)/(b) (target: streaming at most a quarter of the
full path, i.e. ratio >= 4), the time overhead (b)/(a) - 1 (target under 15 %) both from
wall clock and from the time spent outside the network (robust against a shared machine
whose load changes the network's speed between runs), and the largest relative
difference between the features of (b) and (c).

The network is a small random conv net (``Conv3d(2, hidden, 3)``, ReLU, ``Conv3d(hidden,
128, 1)``), not the real segmentation network: a realistic nnU-Net (32-320 features, 6
stages) takes seconds per 64³ window on this 2-core CPU, minutes per whole body and too
long for a benchmark run here. Because the pooling cost does not depend on the network,
a cheap network makes the time overhead (b)/(a) - 1 look *larger* than it is with the
real one; ``--hidden`` makes the stand-in heavier, and ``--device cuda`` reruns the whole
benchmark on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("segment", "streaming", "full")


def _rss_mb() -> float:
    """Current resident memory of this process (MiB)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _prepare(folder: Path, crop: int | None) -> dict:
    """Render one full-size patient; store the network input and the label maps."""
    import numpy as np

    from lamp.anatomy import merge_to_groups
    from lamp.features import ChannelNormalization
    from lamp.images import resample_to_grid
    from lamp.synth.config import SynthConfig
    from lamp.synth.disease import simulate_patient
    from lamp.synth.render import render_patient

    cfg = SynthConfig()
    p = simulate_patient(cfg, 0, 0)
    case = render_patient(p, cfg, "full", 0)
    pet, aff = case.pet, case.pet_grid.affine
    ct = resample_to_grid(case.ct, case.ct_grid.affine, pet.shape, aff, order=1, fill=-1024.0)
    image = ChannelNormalization(ct_mean=-300.0, ct_std=500.0)(ct, pet)
    lesions, organs = case.lesions, merge_to_groups(case.organs)
    if crop is not None:
        # keep `crop` axial slices through the middle of the body (whole transverse planes)
        k0 = max(0, pet.shape[2] // 2 - crop // 2)
        sl = slice(k0, k0 + crop)
        image, lesions, organs = image[..., sl], lesions[..., sl], organs[..., sl]
    np.savez(folder / "case.npz", image=image, lesions=lesions, organs=organs)
    return {
        "shape": list(lesions.shape),
        "lesions": int(lesions.max()),
        "lesion_voxels": int((lesions > 0).sum()),
        "organ_fraction": float((organs > 0).mean()),
    }


def _child(args: argparse.Namespace) -> None:
    """One timed pass in this (fresh) process; prints one JSON line."""
    import numpy as np
    import torch

    from lamp.anatomy import N_GROUPS
    from lamp.features import pool_regions_full, pool_regions_streaming

    data = np.load(Path(args.folder) / "case.npz")
    image, lesions, organs = data["image"], data["lesions"], data["organs"]
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(2, args.hidden, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(args.hidden, 128, 1),
    ).to(device)
    net.eval()

    model_seconds = [0.0]

    def model_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timed, so that the pass's own cost (stitching, pooling) can be told apart from
        # the network's, whose speed swings with the load of a shared machine
        t = time.perf_counter()
        f = net(x)
        out = torch.sigmoid(f[:, :1]), f
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_seconds[0] += time.perf_counter() - t
        return out

    patch = tuple(args.patch)
    with torch.inference_mode():  # warm-up: first-call costs (allocator, cuDNN) untimed
        model_fn(torch.zeros((args.batch_size, 2, *patch), device=device))
    model_seconds[0] = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    labels = {"lesions": lesions, "organs": organs}
    n = {"lesions": int(lesions.max()), "organs": N_GROUPS}
    kw = {"patch_size": patch, "device": device, "batch_size": args.batch_size}
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    if args.child == "segment":
        result = pool_regions_streaming(model_fn, image, {}, {}, **kw)
    elif args.child == "streaming":
        result = pool_regions_streaming(model_fn, image, labels, n, **kw)
    else:
        result = pool_regions_full(model_fn, image, labels, n, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {
        "mode": args.child,
        "seconds": seconds,
        "model_seconds": model_seconds[0],
        "windows": result.n_windows,
        "rss_before_mb": rss0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.save_features and args.child != "segment":
        np.savez(
            Path(args.folder) / f"features_{args.child}.npz",
            **{k: v for k, v in result.features.items()},
        )
    print(json.dumps(out))


def _run_child(mode: str, args: argparse.Namespace, folder: Path, save: bool) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--folder",
        str(folder),
        "--device",
        args.device,
        "--patch",
        *map(str, args.patch),
        "--hidden",
        str(args.hidden),
        "--batch-size",
        str(args.batch_size),
    ]
    if save:
        cmd.append("--save-features")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"child {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    ap.add_argument("--crop", type=int, default=None, help="keep this many axial slices")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=8, help="channels of the stand-in net")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--save-features", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        info = _prepare(folder, args.crop)
        print(
            f"case: shape {tuple(info['shape'])}, {info['lesions']} lesions "
            f"({info['lesion_voxels']} voxels), organs in {100 * info['organ_fraction']:.1f} % "
            f"of voxels; patch {tuple(args.patch)}, device {args.device}, stand-in net "
            f"hidden={args.hidden}; prepared in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(args.repeats):
            for mode in MODES:  # interleaved, so that a slow phase of the machine hits all
                runs[mode].append(_run_child(mode, args, folder, save=r == 0))
                last = runs[mode][-1]
                print(
                    f"  run {r + 1} {mode:9s} {last['seconds']:7.2f} s "
                    f"(network {last['model_seconds']:7.2f} s)  "
                    f"peak RSS {last['peak_rss_mb']:7.0f} MiB",
                    flush=True,
                )
        a = np.load(folder / "features_streaming.npz")
        b = np.load(folder / "features_full.npz")
        rel = max(
            float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-30)) for k in a.files
        )

    med = {m: statistics.median(x["seconds"] for x in runs[m]) for m in MODES}
    own = {m: statistics.median(x["seconds"] - x["model_seconds"] for x in runs[m]) for m in MODES}
    rss = {m: statistics.median(x["peak_rss_mb"] for x in runs[m]) for m in MODES}
    base = {m: statistics.median(x["rss_before_mb"] for x in runs[m]) for m in MODES}
    print(f"\nwindows per pass: {runs['segment'][0]['windows']}; medians of {args.repeats} runs")
    print(
        f"{'mode':28s} {'seconds':>8s} {'not network':>12s} {'peak RSS MiB':>13s} "
        f"{'of which pass':>14s}",
        end="",
    )
    cuda = "cuda_peak_mb" in runs["segment"][0]
    print(f" {'CUDA peak MiB':>14s}" if cuda else "")
    names = {
        "segment": "(a) segmentation only",
        "streaming": "(b) streaming pooling",
        "full": "(c) full map + masking",
    }
    for m in MODES:
        line = (
            f"{names[m]:28s} {med[m]:8.2f} {own[m]:12.2f} {rss[m]:13.0f} {rss[m] - base[m]:14.0f}"
        )
        if cuda:
            line += f" {statistics.median(x['cuda_peak_mb'] for x in runs[m]):14.0f}"
        print(line)
    ratio = rss["full"] / rss["streaming"]
    ratio_pass = (rss["full"] - base["full"]) / max(rss["streaming"] - base["streaming"], 1e-9)
    overhead = med["streaming"] / med["segment"] - 1.0
    print(
        f"\nmemory (c)/(b): {ratio:.2f} x peak RSS, {ratio_pass:.2f} x the pass's own "
        f"increase (target >= 4: {'met' if ratio >= 4 else 'NOT met'} on peak RSS)"
    )
    if cuda:
        cm = {m: statistics.median(x["cuda_peak_mb"] for x in runs[m]) for m in MODES}
        print(f"memory (c)/(b) on the GPU: {cm['full'] / cm['streaming']:.2f} x")
    # the pooling's own time, (b) minus (a) outside the network, over the pass (a): what
    # the overhead is when the network runs at the same speed in both
    net_overhead = (own["streaming"] - own["segment"]) / med["segment"]
    print(
        f"time overhead (b)/(a) - 1: {100 * overhead:+.1f} % wall clock, "
        f"{100 * net_overhead:+.1f} % from the time outside the network "
        f"(target < 15 %: {'met' if net_overhead < 0.15 else 'NOT met'}); "
        f"full map (c)/(a) - 1: {100 * (med['full'] / med['segment'] - 1):+.1f} % wall clock, "
        f"{100 * (own['full'] - own['segment']) / med['segment']:+.1f} % outside the network"
    )
    print(f"largest relative difference of the features, (b) vs (c): {rel:.2e}")


if __name__ == "__main__":
    main()
