"""Benchmark of the segmentation network at real size: training step and whole-body pass.

Usage::

    .venv/bin/python benchmarks/bench_segnet.py --device cuda          # GPU, real size
    .venv/bin/python benchmarks/bench_segnet.py --device cpu --small   # CPU smoke run

Measured in one run, on one device:

1. **Training step** (forward, Dice+CE loss on every output, backward, SGD step; mixed
   precision with a gradient scaler on CUDA, as nnU-Net trains) of LAMP's multimodal
   network (:class:`lamp.segmentation.network.LampSegNet`: shared encoder, three
   decoders, fusion map) and of the plain two-channel nnU-Net ``PlainConvUNet``
   comparator, with nnU-Net's default 3d_fullres architecture (6 stages, 32-320
   features) on a 128^3 patch, batch 2: median seconds per iteration over ``--iters``
   after warm-up, the estimated time of one nnU-Net epoch (250 iterations, data loading
   excluded), and the peak GPU memory.
2. **Whole-body pass** on one ``full``-size synthetic patient (PET grid about 4 mm,
   144 x 96 x ~280 voxels; the CT resampled onto it): sliding window (step 0.5, Gaussian
   weighting) with (a) the lesion probability only, (b) probability plus streaming
   pooling of the 128-d features over the lesion instances and the 71 organ groups,
   (c) stitching the full (128, X, Y, Z) map then masking; median seconds and peak GPU
   memory of each, the pooling overhead (b)/(a) - 1 and the largest relative
   difference of the features of (b) and (c).

The weights are random (speed and memory do not depend on them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn


def _arch(small: bool) -> dict:
    if small:
        feats, strides = [32, 48, 64, 96], [[1, 1, 1]] + [[2, 2, 2]] * 3
    else:
        feats = [32, 64, 128, 256, 320, 320]
        strides = [[1, 1, 1]] + [[2, 2, 2]] * 5
    n = len(feats)
    return dict(
        n_stages=n,
        features_per_stage=feats,
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=strides,
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def _dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # a Dice + CE of nnU-Net's kind, enough for timing (the real loss is nnU-Net's)
    ce = nn.functional.cross_entropy(logits.float(), target[:, 0].long())
    p = torch.softmax(logits.float(), 1)[:, 1]
    t = target[:, 0].float()
    dice = 1 - (2 * (p * t).sum() + 1e-5) / (p.sum() + t.sum() + 1e-5)
    return ce + dice


def _ds_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    loss = 0.0
    for k, out in enumerate(outputs):
        t = nn.functional.interpolate(target, size=out.shape[2:], mode="nearest")
        loss = loss + 0.5**k * _dice_ce(out, t)
    return loss


def bench_train(device: torch.device, small: bool, iters: int, patch: int, batch: int) -> dict:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from lamp.segmentation.network import LampSegNet, MultiDecoderOutput

    arch = _arch(small)
    nets = {
        "lamp": LampSegNet(num_classes=2, deep_supervision=True, **arch),
        "plain": PlainConvUNet(2, num_classes=2, deep_supervision=True, **arch),
    }
    x = torch.randn(batch, 2, patch, patch, patch, device=device)
    y = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.9).float()
    out = {}
    for name, net in nets.items():
        net = net.to(device)
        opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
        scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for i in range(iters + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            ctx = (
                torch.autocast("cuda", dtype=torch.float16)
                if device.type == "cuda"
                else torch.autocast("cpu", enabled=False)
            )
            with ctx:
                o = net(x)
                loss = _ds_loss(list(o), y)
                if isinstance(o, MultiDecoderOutput):
                    for seg in o.aux:
                        loss = loss + _ds_loss(seg, y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[name] = {
            "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
            "s_per_iter_median": med,
            "s_per_iter_min": min(times),
            "epoch_250_iters_s": 250 * med,
            "peak_gpu_GB": (
                torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            ),
        }
        net.to("cpu")
        del opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["lamp_over_plain_time"] = (
        out["lamp"]["s_per_iter_median"] / out["plain"]["s_per_iter_median"]
    )
    return out


def _patient(size: str):
    from lamp.anatomy import merge_to_groups
    from lamp.images import resample_to_grid
    from lamp.synth.config import SynthConfig
    from lamp.synth.disease import simulate_patient
    from lamp.synth.render import render_patient

    cfg = SynthConfig()
    p = simulate_patient(cfg, 0, 0)
    case = render_patient(p, cfg, size, 0)
    ct = resample_to_grid(
        case.ct.astype(np.float32),
        case.ct_grid.affine,
        case.pet.shape,
        case.pet_grid.affine,
        order=1,
        fill=-1024.0,
    )
    ct = (np.clip(ct, -1024, 3071) - 0.0) / 300.0  # CT-like normalisation
    pet = (case.pet - case.pet.mean()) / (case.pet.std() + 1e-6)
    image = np.stack([ct, pet]).astype(np.float32)
    return image, case.lesions, merge_to_groups(case.organs), len(p.lesions)


def bench_pass(device: torch.device, small: bool, patch: int, repeats: int, size: str) -> dict:
    from lamp.features import pool_regions_full, pool_regions_streaming
    from lamp.segmentation.network import LampSegNet

    image, lesions, organs, n_les = _patient(size)
    net = LampSegNet(num_classes=2, deep_supervision=False, **_arch(small)).to(device).eval()

    def seg_only(x):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            prob = torch.softmax(net(x).float(), 1)[:, 1:2]
        return prob, prob[:, :0]  # no feature channel: probability stitching only

    def with_features(x):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            prob, feats = net.forward_features(x)
        return prob.float(), feats.float()

    maps = {"lesions": lesions.astype(np.int32), "organs": organs.astype(np.int32)}
    nreg = {"lesions": max(n_les, int(lesions.max())), "organs": 71}
    modes = {
        "segment": lambda: pool_regions_streaming(
            seg_only, image, {}, {}, (patch,) * 3, device=device
        ),
        "streaming": lambda: pool_regions_streaming(
            with_features, image, maps, nreg, (patch,) * 3, device=device
        ),
        "full": lambda: pool_regions_full(
            with_features, image, maps, nreg, (patch,) * 3, device=device
        ),
    }
    res, results = {"volume": list(image.shape[1:]), "lesions": n_les}, {}
    modes["segment"]()  # warm-up (cuDNN autotuning, allocations)
    for name, fn in modes.items():
        times, peaks = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            r = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            times.append(time.perf_counter() - t0)
        results[name] = r
        res[name] = {
            "s_median": statistics.median(times),
            "peak_gpu_GB": max(peaks) if peaks else None,
            "windows": r.n_windows,
        }
    res["pooling_overhead"] = res["streaming"]["s_median"] / res["segment"]["s_median"] - 1
    diffs = []
    for key in ("lesions", "organs"):
        a, b = results["streaming"].features[key], results["full"].features[key]
        diffs.append(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)))
    res["max_rel_diff_streaming_vs_full"] = max(diffs)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="CPU-sized network and patch")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", default="full", help="synthetic patient size for the pass")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    patch = args.patch or (32 if args.small else 128)
    report = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "patch": patch,
        "batch": args.batch,
    }
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if not args.skip_train:
        report["train"] = bench_train(device, args.small, args.iters, patch, args.batch)
        print(json.dumps(report["train"], indent=1), flush=True)
    report["pass"] = bench_pass(device, args.small, patch, args.repeats, args.size)
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
