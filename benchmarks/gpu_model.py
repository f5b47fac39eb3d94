"""Throughput of the autoencoder stages on one device: training and dense features.

Measures, on CUDA when present (else CPU), with the default architecture
(31 px patches, channels 8-16-32-32):

- training patches/s, fp32 and bf16 autocast, for several batch sizes;
- dense feature pixels/s over a large tile, fp32 and bf16, against the naive
  per-patch path (cut every pixel's patch and encode it alone) in the same run;
- achieved FLOP/s from the analytic MAC count, against the card's peak.

    python benchmarks/gpu_model.py [--json PATH] [--quick]

Needs only torch, numpy and magpipe's model/training modules.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from magpipe.config import ModelConfig
from magpipe.model import PatchAutoencoder, dense_features, patch_features
from magpipe.training import train_autoencoder

PEAK_TFLOPS = {"H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "tf32": 494.0,
                                                                             "fp32": 67.0}}


def encoder_macs_per_pixel(model: PatchAutoencoder) -> int:
    """Multiply-adds per output pixel of a dense pass (each conv evaluated once per pixel)."""
    return sum(9 * c.in_channels * c.out_channels for c in model.encoder)


def patch_macs(model: PatchAutoencoder) -> int:
    """Multiply-adds of encoding one patch alone plus decoding it (training forward)."""
    p, total = model.patch_px, 0
    for c, r in zip(model.encoder, model.radii):
        side = p - 2 * r
        total += side * side * 9 * c.in_channels * c.out_channels
    d0, d2 = model.decoder[0], model.decoder[2]
    return total + d0.in_features * d0.out_features + d2.in_features * d2.out_features


def smooth_patches(n: int, p: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:p, 0:p] / p
    f = rng.uniform(0.5, 3, (n, 1, 1))
    ph = rng.uniform(0, 6.3, (n, 1, 1))
    x = np.sin(2 * np.pi * f * xx + ph) * np.cos(2 * np.pi * f * yy) + 0.1 * rng.normal(size=(n, p, p))
    return x.astype("float32")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_training(device: torch.device, n: int, batch_sizes: list[int], epochs: int) -> list[dict]:
    x = smooth_patches(n, 31)
    mask = np.ones_like(x, dtype=bool)
    rows = []
    for bs in batch_sizes:
        for amp in ([False, True] if device.type == "cuda" else [False]):
            cfg = ModelConfig(epochs=epochs, batch_size=bs, patience=epochs + 1,
                              precision="bf16" if amp else "fp32")
            train_autoencoder(x[: bs * 4], mask[: bs * 4], cfg.model_copy(update={"epochs": 1}),
                              device=str(device))  # warm-up
            sync(device)
            t0 = time.perf_counter()
            res = train_autoencoder(x, mask, cfg, device=str(device))
            sync(device)
            dt = time.perf_counter() - t0
            seen = len(res.history) * int(n * (1 - cfg.val_fraction))
            model = res.model
            flops = 3 * 2 * patch_macs(model) * seen  # forward + backward ~ 3x forward
            rows.append({"batch_size": bs, "precision": "bf16-autocast" if amp else "fp32", "epochs": len(res.history),
                         "patches_per_s": seen / dt, "achieved_tflops": flops / dt / 1e12,
                         "final_val_loss": res.history[-1]["val_loss"]})
            print(f"train bs={bs:5d} {rows[-1]['precision']:13s} {rows[-1]['patches_per_s']:12,.0f} patches/s "
                  f"{rows[-1]['achieved_tflops']:.2f} TFLOP/s")
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def bench_features(device: torch.device, tile_px: int, naive_pixels: int) -> list[dict]:
    torch.manual_seed(0)
    model = PatchAutoencoder(31).to(device).eval()
    layers = list(range(model.n_layers))
    h = 15
    tile = torch.randn(1, 1, tile_px + 2 * h, tile_px + 2 * h, device=device)
    rows = []
    for prec in (["fp32", "bf16"] if device.type == "cuda" else ["fp32"]):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else _null()
        with ctx:
            dense_features(model, tile[..., :128 + 2 * h, :128 + 2 * h], layers)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            reps = 3
            for _ in range(reps):
                out = dense_features(model, tile, layers)
            sync(device)
            dt = (time.perf_counter() - t0) / reps
        px = tile_px * tile_px
        # naive: every pixel's own patch through the encoder, in batches
        side = int(np.sqrt(naive_pixels))
        sub = tile[..., : side + 2 * h, : side + 2 * h]
        patches = sub[0, 0].unfold(0, 31, 1).unfold(1, 31, 1).reshape(-1, 1, 31, 31)
        with ctx:
            patch_features(model, patches[:256], layers)
            sync(device)
            t0 = time.perf_counter()
            for b0 in range(0, len(patches), 4096):
                patch_features(model, patches[b0 : b0 + 4096].contiguous(), layers)
            sync(device)
            dt_naive = time.perf_counter() - t0
        dense_rate, naive_rate = px / dt, len(patches) / dt_naive
        macs = encoder_macs_per_pixel(model)
        rows.append({"precision": prec, "tile_px": tile_px, "dense_pixels_per_s": dense_rate,
                     "naive_pixels_per_s": naive_rate, "ratio_dense_over_naive": dense_rate / naive_rate,
                     "dense_achieved_tflops": 2 * macs * dense_rate / 1e12, "features": int(out.shape[0])})
        print(f"features {prec}: dense {dense_rate:14,.0f} px/s  naive {naive_rate:12,.0f} px/s  "
              f"x{dense_rate / naive_rate:.0f}  ({rows[-1]['dense_achieved_tflops']:.2f} TFLOP/s)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="comma-separated training batch sizes")
    ap.add_argument("--tile-px", type=int, default=None, help="side of the dense-feature tile")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune conv algorithms")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    quick = args.quick or device.type == "cpu"
    batches = args.batch_sizes or ([256] if quick else [256, 1024, 4096])
    train = bench_training(device, n=4096 if quick else max(65536, 8 * max(batches)), batch_sizes=batches,
                           epochs=2 if quick else 3)
    feats = bench_features(device, tile_px=args.tile_px or (256 if quick else 4096),
                           naive_pixels=64 * 64 if quick else 256 * 256)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    result = {"date": date.today().isoformat(), "device": name, "torch": torch.__version__,
              "cudnn_benchmark": args.cudnn_benchmark,
              "training": train, "features": feats, "peak_tflops": peak,
              "note": "TFLOP/s from analytic conv/linear MACs; training counts forward+backward as 3x forward"}
    out = args.json or Path(__file__).parent / "results" / f"{date.today().isoformat()}-{_slug(name)}-model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")[:40]


if __name__ == "__main__":
    main()
