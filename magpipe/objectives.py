"""What the encoder is trained to do: the self-supervised objectives ``model.objective`` selects.

- ``reconstruct`` (the paper's): rebuild the whole patch from its 1x1 code. The loss is dominated
  by the patch's high-variance part (a regional gradient), so the code learns mostly that.
- ``masked``: hide square blocks of the patch (zeros in, the standardised mean) and rebuild only
  the hidden cells: the encoder must model how cells relate, not copy them.
- ``masked_layers``: for a survey stack, ``masked`` plus whole layers hidden (each with probability
  :data:`LAYER_FRACTION`, never all of a patch's): the encoder must predict a layer from the others,
  learning how the magnetic, gamma-ray and terrain layers relate. On one grid it is ``masked``.
- ``contrastive``: VICReg on the layer-wise features of two views, a patch and one a few cells
  away, each flipped / rotated by 90 degrees at random (Tile2Vec's "nearby looks alike", VICReg's
  variance and covariance terms against collapse). The decoder still learns to reconstruct, from
  the detached code, so the anomaly map keeps working; it does not shape the encoder.

Every loss counts valid cells only, and all randomness comes from the generator passed in, so a
resumed training draws the same masks and views as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from magpipe.model import PatchAutoencoder

OBJECTIVES = ("reconstruct", "masked", "masked_layers", "contrastive")
NEIGHBOUR_FRACTION = 0.25  # contrastive: the second view's centre is at most this share of p away
MASK_FRACTION = 0.5  # masked: share of blocks hidden
LAYER_FRACTION = 0.25  # masked_layers: chance that a layer is hidden whole
VICREG = (25.0, 25.0, 1.0)  # invariance, variance and covariance weights of Bardes et al. (2022)


def masked_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the cells ``mask`` selects, so the 0s filled into no-data are never a target.

    ``recon`` and ``target`` are (N, C, p, p) standardised values, ``mask`` bool of the same shape.
    Returns a float32 scalar (computed in float32 under bf16 autocast too).
    """
    m = mask.to(recon.dtype)
    return ((recon.float() - target) ** 2 * m).sum() / m.sum().clamp(min=1)


def block_mask(n: int, patch_px: int, gen: torch.Generator, fraction: float = MASK_FRACTION) -> torch.Tensor:
    """(n, 1, p, p) bool, True = hidden: square blocks of side ~p/6 each hidden with probability ``fraction``."""
    b = max(1, patch_px // 6)
    k = -(-patch_px // b)
    hide = torch.rand(n, 1, k, k, generator=gen) < fraction
    return hide.repeat_interleave(b, 2).repeat_interleave(b, 3)[..., :patch_px, :patch_px]


def layer_mask(n: int, channels: int, gen: torch.Generator, fraction: float = LAYER_FRACTION) -> torch.Tensor:
    """(n, C, 1, 1) bool, True = the whole layer hidden, each with probability ``fraction``; where that would
    hide every layer of an item, one drawn at random stays visible."""
    hide = torch.rand(n, channels, 1, 1, generator=gen) < fraction
    keep = torch.randint(0, channels, (n,), generator=gen)
    everything = hide.all(dim=1).flatten()
    hide[everything, keep[everything]] = False
    return hide


def dihedral(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Each (C, p, p) item of x turned by ``ops % 4`` quarter turns, then mirrored where ``ops >= 4``."""
    out = x.clone()
    for op in range(1, 8):
        sel = ops == op
        if sel.any():
            y = torch.rot90(x[sel], op % 4, dims=(2, 3))
            out[sel] = y.flip(3) if op >= 4 else y
    return out


def pooled_features(model: PatchAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """Per-channel means of every encoder layer over the patch, (N, sum C_k): what VICReg shapes."""
    return torch.cat([a.mean(dim=(2, 3)) for a in model.encode(x)], dim=1)


def vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg loss of two (N, D) embeddings of the same items: alike, spread out, decorrelated."""
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    var = cov = 0.0
    for z in (z1, z2):
        z = z - z.mean(0)
        var = var + F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean()
        c = (z.T @ z) / max(len(z) - 1, 1)
        cov = cov + (c.pow(2).sum() - c.diagonal().pow(2).sum()) / z.shape[1]
    w_inv, w_var, w_cov = VICREG
    return w_inv * inv + w_var * var + w_cov * cov


def objective_loss(objective: str, model: PatchAutoencoder, x: torch.Tensor, m: torch.Tensor,
                   gen: torch.Generator, pair: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The training loss of one batch under ``objective``.

    Parameters
    ----------
    x, m : (N, C, p, p) standardised patches (no-data filled with 0) and their validity (bool).
    gen : CPU generator of masks, flips and rotations.
    pair : for ``contrastive``, the second views (patches a few cells away) and their validity.
    """
    if objective == "reconstruct":
        return masked_mse(model(x), x, m)
    if objective == "masked" or (objective == "masked_layers" and x.shape[1] == 1):
        hidden = block_mask(len(x), model.patch_px, gen).to(x.device)
        return masked_mse(model(x * ~hidden), x, m & hidden)
    if objective == "masked_layers":
        hidden = (block_mask(len(x), model.patch_px, gen) | layer_mask(len(x), x.shape[1], gen)).to(x.device)
        return masked_mse(model(x * ~hidden), x, m & hidden)
    if objective == "contrastive":
        if pair is None:
            raise ValueError("the contrastive objective needs a second view of each patch")
        ops = torch.randint(0, 8, (2, len(x)), generator=gen).to(x.device)
        v1, v2 = dihedral(x, ops[0]), dihedral(pair[0], ops[1])
        code = model.encode(x)[-1].flatten(1)
        recon = model.decoder(code.detach()).view_as(x)  # the anomaly's decoder, kept out of the encoder
        return vicreg(pooled_features(model, v1), pooled_features(model, v2)) + masked_mse(recon, x, m)
    raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
