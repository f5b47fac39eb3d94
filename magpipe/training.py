"""Train the patch autoencoder: seeded, masked loss, early stopping, resumable.

No labels are used: every sampled patch of the survey is training data. The
loss counts only valid cells, so no-data never teaches the model anything.
A checkpoint is written after every epoch; a run interrupted at any point
resumes from it and ends with the same weights as an uninterrupted run,
because each epoch's batch order is drawn from ``seed + epoch``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from magpipe.config import ModelConfig, RunConfig
from magpipe.features import StackScaling
from magpipe.io.location import as_path, write_bytes
from magpipe.model import PatchAutoencoder, seeded_autoencoder
from magpipe.objectives import NEIGHBOUR_FRACTION, masked_mse, objective_loss
from magpipe.patches import neighbour_centres, stack_patches
from magpipe.progress import progress as steps

__all__ = ["TrainResult", "fit_autoencoder", "masked_mse", "resolve_device", "second_views", "train_autoencoder"]

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


def train_autoencoder(
    inputs: np.ndarray,
    mask: np.ndarray,
    cfg: ModelConfig,
    *,
    checkpoint: str | Path | None = None,
    progress=None,
    device: str = "auto",
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
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
    pairs : for ``cfg.objective == "contrastive"``: the second view of each patch (a patch a few cells
        away) and its validity, shaped as ``inputs`` and ``mask``.

    Returns
    -------
    :class:`TrainResult`, its model the best validation epoch's (``cfg.val_fraction`` of patches held out).
    """
    if inputs.ndim == 3:
        inputs, mask = inputs[:, None], mask[:, None]
    if (cfg.objective == "contrastive") != (pairs is not None):
        raise ValueError("second views are given for, and only for, the contrastive objective")
    n, c_in, p, _ = inputs.shape
    device = resolve_device(device)
    model = seeded_autoencoder(cfg.seed, p, cfg.channels, cfg.hidden, in_channels=c_in).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    split = np.random.default_rng(cfg.seed).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    val_idx, train_idx = split[:n_val], split[n_val:]
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    m = torch.from_numpy(np.ascontiguousarray(mask))
    data = [x, m] + ([torch.from_numpy(np.ascontiguousarray(a)).view_as(x) for a in pairs] if pairs else [])
    if device.type == "cuda":
        data = [t.pin_memory() for t in data]
    loss = _Loss(cfg.objective, device, amp=device.type == "cuda" and cfg.precision != "fp32" or cfg.precision == "bf16")

    ckpt = as_path(checkpoint) if checkpoint else None
    start, best, bad, best_state, history = _restore(ckpt, model, opt, device)

    with steps("autoencoder", cfg.epochs, "epochs", done=start) as step:
        for epoch in range(start, cfg.epochs):
            if bad >= cfg.patience:
                log.info("autoencoder: stopped early after epoch %d (validation loss not better for %d epochs)",
                         epoch, bad)
                break
            model.train()
            gen = torch.Generator().manual_seed(cfg.seed + epoch)
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
            train_loss = _train_epoch(model, opt, data, order, cfg.batch_size, loss, gen)
            val = evaluate_loss(model, [t[val_idx] for t in data], cfg.batch_size * 4, loss, cfg.seed)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val}
            history.append(row)
            if val < best - 1e-6:
                best, bad = val, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            step(train=row["train_loss"], val=val, best=best)
            if progress:
                progress(row)
            if ckpt:
                _save_checkpoint(ckpt, model, opt, epoch, best, bad, best_state, history)

    if best_state is not None:
        model.load_state_dict(best_state)
    best_epoch = min(history, key=lambda r: r["val_loss"])["epoch"] if history else 0
    return TrainResult(model.cpu().eval(), history, best_epoch, best, str(device))


class _Loss:
    """The objective's loss of a batch on the training device, under bf16 autocast where asked."""

    def __init__(self, objective: str, device: torch.device, amp: bool):
        self.objective, self.device, self.amp = objective, device, amp

    def __call__(self, model, batch: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        x, m, *pair = (t.to(self.device, non_blocking=True) for t in batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return objective_loss(self.objective, model, x, m, gen, tuple(pair) or None)


def _train_epoch(model, opt, data: list[torch.Tensor], order: torch.Tensor, batch_size: int, loss: _Loss,
                 gen: torch.Generator) -> float:
    """One pass over the training patches in ``order``; the mean training loss."""
    total, count = 0.0, 0
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        value = loss(model, [t[idx] for t in data], gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        total += float(value.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate_loss(model, data: list[torch.Tensor], batch_size: int, loss: _Loss, seed: int) -> float:
    """The objective's loss on validation patches ``data`` (patches, validity, and second views if any).

    The early-stopping criterion: the mean over batches of ``batch_size``, weighted by their size, with
    the same masks and views every epoch (drawn from ``seed``); no gradients, the model left in eval mode.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    n = len(data[0])
    for b0 in range(0, n, batch_size):
        batch = [t[b0 : b0 + batch_size] for t in data]
        total += float(loss(model, batch, gen)) * len(batch[0])
        count += len(batch[0])
    return total / max(count, 1)


def _restore(ckpt: Path | None, model, opt, device) -> tuple[int, float, int, dict | None, list]:
    """Load model and optimiser state from ``ckpt`` if it exists; the epoch to start at, the best validation
    loss so far, epochs without improvement, the best weights and the history (a fresh start without it)."""
    if not (ckpt and ckpt.exists()):
        return 0, float("inf"), 0, None, []
    state = torch.load(io.BytesIO(ckpt.read_bytes()), map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start = int(state["epoch"]) + 1
    log.info("resuming training at epoch %d from %s", start + 1, ckpt)
    return start, float(state["best"]), int(state["bad"]), state["best_state"], list(state["history"])


def _save_checkpoint(path: Path, model, opt, epoch, best, bad, best_state, history) -> None:
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "best": best,
         "bad": bad, "best_state": best_state, "history": history},
        buf,
    )
    write_bytes(buf.getvalue(), path)


def fit_autoencoder(raw: np.ndarray, scaling: StackScaling, cfg: RunConfig, *, views: np.ndarray | None = None,
                    checkpoint: Path | None = None, progress=None) -> TrainResult:
    """The autoencoder of raw patches (n, C, p, p), NaN = no data: standardised, no-data masked from the loss.

    ``views`` are the contrastive objective's second views, raw patches shaped as ``raw``
    (see :func:`second_views`); ignored by the other objectives.
    """
    pairs = None
    if cfg.model.objective == "contrastive":
        pairs = (scaling.apply(views, axis=1), np.isfinite(views))
    return train_autoencoder(scaling.apply(raw, axis=1), np.isfinite(raw), cfg.model, checkpoint=checkpoint,
                             progress=progress, device=cfg.runtime.device, pairs=pairs)


def second_views(arrays: list, rows: np.ndarray, cols: np.ndarray, cfg: RunConfig) -> np.ndarray | None:
    """For the contrastive objective, the raw patch a few cells from each training patch's centre
    (up to ``NEIGHBOUR_FRACTION`` of a patch width away); None for the other objectives.

    ``arrays`` are the C input grids (2-D, y/x); ``rows``, ``cols`` the (n,) training centres in cells.
    """
    if cfg.model.objective != "contrastive":
        return None
    p = cfg.patches.patch_px
    nrows, ncols = neighbour_centres(rows, cols, arrays[0].shape, max_offset=round(NEIGHBOUR_FRACTION * p),
                                     seed=cfg.patches.seed + 1)
    return stack_patches(arrays, nrows, ncols, p)
