"""How close each per-tile stage runs to the machine's limits: a roofline estimate per stage.

For each stage of :class:`magpipe.classify.WindowClassifier` the work per cell is counted from the
model (multiply-adds of the encoder, the SVM's kernel map and decision, the decoder rows of the
anomaly) and the bytes a stage must at least move through memory; the ceilings are measured here on
one thread (or the GPU): float32 GEMM FLOP/s on a matrix product of the SVM's shape (through the
BLAS the SVM uses there: numpy's on the CPU, torch's on a GPU), and read
bandwidth of a sum over an array far larger than the caches. A stage's roofline rate is the lower
of FLOP/s / (2 x multiply-adds) and bandwidth / bytes; its fraction is the achieved rate over that.
Elementwise work (the exponentials, float64 window sums, box filters) counts in bytes only.
"""

from __future__ import annotations

import time

import torch


def _timed(fn, device: torch.device, repeats: int = 10, rounds: int = 5) -> float:
    """Seconds per call: the fastest of ``rounds`` rounds of ``repeats`` calls. A ceiling is the best
    the machine does; one short round read the CPU's GEMM anywhere from 43 to 72 GFLOP/s across runs."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return best


def machine_ceilings(device: str = "cpu", *, n_features: int = 200, n_landmarks: int = 300) -> dict:
    """Measured float32 GEMM FLOP/s (n x F by F x m, the SVM's product) and read bytes/s on ``device``
    (the CPU on one thread: the rates it bounds are per thread)."""
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        n = 2048 if dev.type == "cpu" else 262144
        x = torch.randn(n, n_features, device=dev)
        w = torch.randn(n_features, n_landmarks, device=dev)
        b = torch.zeros(n_landmarks, device=dev)
        if dev.type == "cpu":  # the product the CPU's SVM runs: numpy's BLAS (magpipe.decision)
            from threadpoolctl import threadpool_limits

            xn, wn = x.numpy(), w.numpy()
            with threadpool_limits(1):
                seconds = _timed(lambda: xn @ wn, dev)
        else:
            seconds = _timed(lambda: torch.addmm(b, x, w), dev)
        flops = 2 * n * n_features * n_landmarks / seconds
        big = torch.ones((128 if dev.type == "cpu" else 2048) * 2**20 // 4, device=dev)  # 128 MiB / 2 GiB
        read = big.numel() * 4 / _timed(lambda: big.sum(), dev, repeats=5)
    finally:
        torch.set_num_threads(threads)
    return {"gemm_flop_per_s": flops, "read_bytes_per_s": read}


def stage_work(bundle, tile_px: int) -> dict[str, dict[str, float]]:
    """Multiply-adds and minimum bytes moved per cell of each stage, for this bundle on tiles of ``tile_px``."""
    model, h = bundle.model, bundle.patch_px // 2
    halo = ((tile_px + 2 * h) / tile_px) ** 2  # the encoder also runs over the tile's halo
    enc_macs, c_in, act_bytes = 0.0, model.in_channels, 0.0
    for conv in model.encoder:
        enc_macs += c_in * conv.out_channels * 9 * halo
        act_bytes += conv.out_channels * 4 * 2 * halo  # each map written once and read once
        c_in = conv.out_channels
    n_feat = bundle.features.n_features
    std_channels = sum(model.encoder[k].out_channels for k in bundle.layers
                       if bundle.readout == "mean_std_centre" and model.map_px(k) > 1)
    svm = getattr(bundle.svm, "estimator_", bundle.svm)
    steps = getattr(svm, "named_steps", {})
    m = len(steps["kernel"].landmarks_) if "kernel" in steps else 0
    K = len(bundle.classes)
    hidden, a, C = model.decoder[0].out_features, bundle.anomaly_px, model.in_channels
    code = model.encoder[-1].out_channels
    return {
        "features": {"macs": enc_macs, "bytes": act_bytes + std_channels * 2 * 8 * 2 + n_feat * 4},
        "svm": {"macs": n_feat * m + m * K, "bytes": n_feat * 4 + 2 * K * 4},
        "anomaly": {"macs": code * hidden + hidden * C * a * a, "bytes": code * 4 + C * a * a * 4 + 4},
    }


def roofline(rates: dict[str, float], work: dict[str, dict[str, float]], ceilings: dict) -> dict[str, dict]:
    """Per stage: achieved cells/s (``rates[f"{stage}_pixels_per_s"]``), the compute and memory roofline
    rates, the lower of them and the fraction of it achieved."""
    out = {}
    for stage, w in work.items():
        achieved = rates.get(f"{stage}_pixels_per_s")
        if achieved is None:
            continue
        compute = ceilings["gemm_flop_per_s"] / (2 * w["macs"]) if w["macs"] else float("inf")
        memory = ceilings["read_bytes_per_s"] / w["bytes"]
        bound = min(compute, memory)
        out[stage] = {"achieved_pixels_per_s": achieved, "macs_per_cell": w["macs"], "bytes_per_cell": w["bytes"],
                      "compute_roofline_pixels_per_s": compute, "memory_roofline_pixels_per_s": memory,
                      "fraction_of_roofline": achieved / bound}
    return out


def print_roofline(table: dict[str, dict], ceilings: dict, where: str) -> None:
    print(f"roofline ({where}: GEMM {ceilings['gemm_flop_per_s'] / 1e9:.1f} GFLOP/s, read "
          f"{ceilings['read_bytes_per_s'] / 1e9:.1f} GB/s)", flush=True)
    for stage, r in table.items():
        print(f"  {stage:9s} {r['achieved_pixels_per_s']:>13,.0f} cells/s of {min(r['compute_roofline_pixels_per_s'], r['memory_roofline_pixels_per_s']):>14,.0f} "
              f"({r['fraction_of_roofline']:.0%}; {r['macs_per_cell']:,.0f} MACs, {r['bytes_per_cell']:,.0f} B per cell)",
              flush=True)
