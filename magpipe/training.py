"""Train the patch autoencoder: seeded, masked loss, early stopping, resumable.

No labels are used: every sampled patch of the survey is training data. The
loss counts only valid cells, so no-data never teaches the model anything.
A checkpoint is written after every epoch; a run interrupted at any point
resumes from it and ends with the same weights as an uninterrupted run,
because each epoch's batch order is drawn from ``seed + epoch``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from magpipe.config import ModelConfig
from magpipe.model import PatchAutoencoder

log = logging.getLogger("magpipe.train")


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device named by ``device``; 'auto' picks cuda, then mps, then cpu."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class TrainResult:
    """A trained autoencoder and how its training went.

    Attributes
    ----------
    model : the weights of the epoch with the lowest validation loss, on the CPU, in eval mode.
    history : one ``{"epoch", "train_loss", "val_loss"}`` row per epoch (epochs count from 1).
    best_epoch : epoch of ``model``'s weights (0 when no epoch ran).
    best_val_loss : its masked MSE on the validation patches, in squared standardised units.
    device : the device it was trained on.
    """

    model: PatchAutoencoder
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("nan")
    device: str = "cpu"


def masked_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid cells only, so the 0s filled into no-data are never a target.

    ``recon`` and ``target`` are (N, C, p, p) standardised values, ``mask`` bool of the same shape
    (True = data). Returns a float32 scalar (computed in float32 under bf16 autocast too).
    """
    m = mask.to(recon.dtype)
    return ((recon.float() - target) ** 2 * m).sum() / m.sum().clamp(min=1)


def train_autoencoder(
    inputs: np.ndarray,
    mask: np.ndarray,
    cfg: ModelConfig,
    *,
    checkpoint: str | Path | None = None,
    progress=None,
    device: str = "auto",
) -> TrainResult:
    """Fit a :class:`PatchAutoencoder` on standardised patches.

    Parameters
    ----------
    inputs : float32 (n, p, p), or (n, C, p, p) for several input channels; standardised,
        no-data filled with 0.
    mask : bool, the shape of ``inputs``, True where the cell is valid.
    cfg : model section of the run config.
    checkpoint : file to resume from and write after each epoch.
    progress : optional callable(dict) told about each finished epoch.
    device : torch device, or 'auto' (cuda, then mps, then cpu); a runtime choice, not the model's.

    Returns
    -------
    :class:`TrainResult`, its model the best validation epoch's (``cfg.val_fraction`` of patches held out).
    """
    if inputs.ndim == 3:
        inputs, mask = inputs[:, None], mask[:, None]
    n, c_in, p, _ = inputs.shape
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    model = PatchAutoencoder(p, cfg.channels, cfg.hidden, in_channels=c_in).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    split = np.random.default_rng(cfg.seed).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    val_idx, train_idx = split[:n_val], split[n_val:]
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    m = torch.from_numpy(np.ascontiguousarray(mask))
    if device.type == "cuda":
        x, m = x.pin_memory(), m.pin_memory()
    amp = device.type == "cuda" and cfg.precision != "fp32" or cfg.precision == "bf16"

    start, best, best_state, history, bad = 0, float("inf"), None, [], 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, best, bad = int(state["epoch"]) + 1, float(state["best"]), int(state["bad"])
        best_state, history = state["best_state"], list(state["history"])
        log.info("resuming training at epoch %d from %s", start + 1, ckpt)

    for epoch in range(start, cfg.epochs):
        if bad >= cfg.patience:
            break
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        train_loss = _train_epoch(model, opt, x, m, order, cfg.batch_size, device, amp)
        val = evaluate_loss(model, x[val_idx], m[val_idx], device, cfg.batch_size * 4, amp)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val}
        history.append(row)
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        log.info("epoch %d/%d  train %.4f  val %.4f%s", epoch + 1, cfg.epochs, row["train_loss"], val,
                 "  (best)" if bad == 0 else "")
        if progress:
            progress(row)
        if ckpt:
            _save_checkpoint(ckpt, model, opt, epoch, best, bad, best_state, history)

    if best_state is not None:
        model.load_state_dict(best_state)
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"] if history else 0
    return TrainResult(model.cpu().eval(), history, best_epoch, best, str(device))


def _train_epoch(model, opt, x: torch.Tensor, m: torch.Tensor, order: torch.Tensor, batch_size: int,
                 device: torch.device, amp: bool) -> float:
    """One pass over the training patches in ``order``; the mean training loss."""
    total, count = 0.0, 0
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        xb = x[idx].to(device, non_blocking=True)
        mb = m[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = masked_mse(model(xb), xb, mb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate_loss(model, x, m, device, batch_size: int, amp: bool) -> float:
    """:func:`masked_mse` of ``model`` on patches x (n, C, p, p) with mask m (bool, same shape).

    The early-stopping criterion, in squared standardised units: the mean over batches of
    ``batch_size``, weighted by their size; no gradients, and the model is left in eval mode.
    """
    model.eval()
    total, count = 0.0, 0
    for b0 in range(0, len(x), batch_size):
        xb, mb = x[b0 : b0 + batch_size].to(device), m[b0 : b0 + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            total += float(masked_mse(model(xb), xb, mb)) * len(xb)
        count += len(xb)
    return total / max(count, 1)


def _save_checkpoint(path: Path, model, opt, epoch, best, bad, best_state, history) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
         "bad": bad, "best_state": best_state, "history": history},
        tmp,
    )
    os.replace(tmp, path)
