#!/usr/bin/env python3
"""bench_vae_ref.py: images/s of diffusers' AutoencoderKLQwenImage encoder (real config, random
weights) in bf16 on the GPU, the reference for tests/bench/bench_vae.c.

Best settings tried, each reported: eager; channels_last_3d weights+input; SDPA (the default
attention in the mid block; flash kernels apply on bf16); torch.compile of the encoder (--compile-mode,
skipped with --no-compile or when it fails). cuDNN benchmark mode on.
What is timed: vae.encode(x).latent_dist.mean for x [B,3,1,S,S] bf16 already on the GPU, one
synchronize per call (bench_vae.c also counts its host->device pixel and device->host latent
copies, which favours the reference slightly).

usage: python3 scripts/bench_vae_ref.py [--size 1024] [--batch 1] [--iters 10] [--no-compile]
                                       [--compile-mode default|max-autotune-no-cudagraphs]
"""
import argparse
import time

import torch
from diffusers import AutoencoderKLQwenImage


def bench(fn, x, iters):
    with torch.no_grad():
        fn(x)
        fn(x)
        torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(x)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return sum(ts) / len(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode (max-autotune-no-cudagraphs tunes convs for minutes)")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage().to("cuda", torch.bfloat16).eval()
    x = (torch.rand(a.batch, 3, 1, a.size, a.size, device="cuda") * 2 - 1).to(torch.bfloat16)
    print(f"bench_vae_ref: torch {torch.__version__}, {torch.cuda.get_device_name()}, {a.size}x{a.size}, "
          f"batch {a.batch}, {a.iters} iters")

    def enc(t):
        return vae.encode(t).latent_dist.mean

    results = {}
    mean, best = bench(enc, x, a.iters)
    results["eager"] = (mean, best)
    # channels-last weights: 5-D (causal Conv3d) as channels_last_3d, 4-D (Conv2d) as channels_last
    # (Module.to(memory_format=...) refuses a model that mixes both)
    with torch.no_grad():
        for p in vae.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            elif p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    results["eager channels_last"] = bench(enc, xc, a.iters)
    if not a.no_compile:
        try:
            vae.encoder = torch.compile(vae.encoder, mode=a.compile_mode)
            results[f"compiled ({a.compile_mode}) cl"] = bench(enc, xc, a.iters)
        except Exception as e:  # noqa: BLE001 - report and keep the eager numbers
            print(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}")
    for k, (mean, best) in results.items():
        print(f"  {k:28s} {mean * 1e3:8.2f} ms/call  images/s {a.batch / mean:7.2f} (best {a.batch / best:7.2f})")
    k = min(results, key=lambda k: results[k][0])
    print(f"best reference: {k}: images/s {a.batch / results[k][0]:.2f}")


if __name__ == "__main__":
    main()
