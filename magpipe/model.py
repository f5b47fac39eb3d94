"""The convolutional autoencoder and its layer-wise features.

Design choice that makes survey-scale classification cheap: the encoder uses
only *valid* (unpadded) dilated 3x3 convolutions whose receptive field is exactly
one patch. A patch's layer-k activation map therefore equals the matching window
of that layer evaluated once over a whole tile, and its per-channel mean is a box
filter of the tile's map. So :func:`dense_features` gives every pixel the same
features as cutting its patch and calling :func:`patch_features`, without the
p^2-fold redundant work.

Features per tapped layer k (C_k channels), by readout:

- ``mean_centre`` (the paper's): the channel means over the patch's layer-k map, then the
  layer-k activations at the patch centre (2 C_k values);
- ``mean_std_centre``: the means, the channel standard deviations over the map (texture:
  how much each learned filter's response varies in the patch), then the centre (3 C_k
  values); a layer whose map of the patch is 1 x 1 (the last) gives its centre alone, the
  mean being the same number and the deviation 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

READOUTS = ("mean_centre", "mean_std_centre")


def dilations_for(patch_px: int, n_layers: int) -> list[int]:
    """Dilations of ``n_layers`` 3x3 convs whose receptive field is exactly ``patch_px``.

    Geometric growth (1, 2, 4, 8 for 31 px) keeps early layers local and lets the
    last layers see the whole patch.

    Parameters
    ----------
    patch_px : odd patch side p in cells.
    n_layers : number of encoder layers.

    Returns
    -------
    ``n_layers`` dilations (cells) summing to p // 2, so the stack's receptive field is p x p.

    Raises
    ------
    ValueError
        If p // 2 < ``n_layers`` (each layer needs a dilation of at least 1).
    """
    half = patch_px // 2
    if half < n_layers:
        raise ValueError(f"patch of {patch_px} px is too small for {n_layers} layers (needs >= {2 * n_layers + 1})")
    weights = [2**i for i in range(n_layers)]
    total = sum(weights)
    d = [max(1, round(half * w / total)) for w in weights[:-1]]
    while sum(d) > half - 1:
        d[d.index(max(d))] -= 1
    d.append(half - sum(d))
    return d


class PatchAutoencoder(nn.Module):
    """Encoder of valid dilated convs (patch -> 1x1 code) and an MLP decoder (code -> patch).

    The encoder has no padding, so a layer's output at a cell depends only on cells of that
    cell's patch: what lets :func:`dense_features` run it once over a whole window.

    Parameters
    ----------
    patch_px : odd patch side p in cells.
    channels : output channels C_k of each encoder layer; its length is the number of layers.
    hidden : width of the decoder's hidden layer.
    in_channels : number C of input grids stacked as channels (``patches.inputs``, in that order).

    Attributes
    ----------
    dilations : dilation of each layer (cells), from :func:`dilations_for`.
    radii : cumulative radius r_k (cells) of layer k: its map of a p x p patch is
        (p - 2 r_k) x (p - 2 r_k), and the last layer's is 1 x 1.
    """

    def __init__(self, patch_px: int, channels: Sequence[int] = (8, 16, 32, 32), hidden: int = 256,
                 in_channels: int = 1):
        super().__init__()
        self.patch_px, self.in_channels = patch_px, in_channels
        self.dilations = dilations_for(patch_px, len(channels))
        convs, c_in = [], in_channels
        for c, d in zip(channels, self.dilations):
            convs.append(nn.Conv2d(c_in, c, kernel_size=3, dilation=d))
            c_in = c
        self.encoder = nn.ModuleList(convs)
        self.decoder = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, in_channels * patch_px * patch_px))
        # cumulative radius of layer k: how far its outputs reach from the patch centre
        self.radii = [sum(self.dilations[: k + 1]) for k in range(len(channels))]

    @property
    def n_layers(self) -> int:
        """Number of encoder layers (the layers features can be taken from)."""
        return len(self.encoder)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All encoder activations for input (N, in_channels, H, W); layer k is (N, C_k, H - 2 r_k, W - 2 r_k).

        ``x`` is standardised (float32, no-data filled with 0); activations are post-ReLU, same dtype.
        """
        acts = []
        for conv in self.encoder:
            x = F.relu(conv(x))
            acts.append(x)
        return acts

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Reconstruct standardised patches (N, in_channels, p, p) from their codes: the same shape and
        units (the training target is the input itself)."""
        code = self.encode(patches)[-1].flatten(1)
        return self.decoder(code).view(-1, self.in_channels, self.patch_px, self.patch_px)

    def map_px(self, k: int) -> int:
        """Side of layer k's map of one patch (1 for the last layer)."""
        return self.patch_px - 2 * self.radii[k]

    @staticmethod
    def check_readout(readout: str) -> str:
        """``readout`` if it is one of :data:`READOUTS`; ValueError naming them otherwise."""
        if readout not in READOUTS:
            raise ValueError(f"unknown readout {readout!r}; use one of {list(READOUTS)}")
        return readout

    def layer_feature_size(self, k: int, readout: str = "mean_centre") -> int:
        """Number of features layer k gives under ``readout`` (see the module docstring)."""
        c = self.encoder[k].out_channels
        if self.check_readout(readout) == "mean_centre":
            return 2 * c
        return c if self.map_px(k) == 1 else 3 * c

    def feature_size(self, layers: Sequence[int], readout: str = "mean_centre") -> int:
        """Number of features F of the selected ``layers`` under ``readout``."""
        return sum(self.layer_feature_size(k, readout) for k in layers)


def seeded_autoencoder(seed: int, patch_px: int, channels: Sequence[int], hidden: int, *, in_channels: int = 1
                       ) -> PatchAutoencoder:
    """A :class:`PatchAutoencoder` whose initial weights come from ``seed`` alone: torch's default
    initialisation (uniform, bound 1 / sqrt(fan_in) for biases, Kaiming-uniform with a = sqrt(5) for weights),
    drawn layer by layer from a generator of its own, so they equal those of ``torch.manual_seed(seed)`` before
    construction bit for bit. The process's random state is never read or written: two runs building models
    in threads of one worker, or any other thread drawing numbers meanwhile, cannot change each other's
    weights (seeding and restoring the shared generator could)."""
    with torch.device("meta"):  # the layers' shapes, no storage and no draws
        model = PatchAutoencoder(patch_px, channels, hidden, in_channels=in_channels)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (*model.encoder, model.decoder[0], model.decoder[2]):  # the order they are built in
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in: inputs x kernel cells
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return model


def resolve_layers(model: PatchAutoencoder, layers: Sequence[int] | None) -> list[int]:
    """Validate a layer selection; None means every encoder layer.

    Returns the selected layer indices sorted and without repeats, so the feature order (and the SVM
    trained on it) does not depend on how the selection was written. Raises ValueError for an empty
    selection or an index outside 0..n_layers - 1.
    """
    if layers is None:
        return list(range(model.n_layers))
    bad = [k for k in layers if not 0 <= k < model.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {list(layers)} invalid; the encoder has layers 0..{model.n_layers - 1}")
    return sorted(set(layers))


@torch.no_grad()
def patch_features(model: PatchAutoencoder, patches: torch.Tensor, layers: Sequence[int],
                   readout: str = "mean_centre") -> torch.Tensor:
    """Reference per-patch features: (N, C, p, p) -> (N, F). Slow, used for labelled pixels and tests.

    Parameters
    ----------
    patches : standardised patches (float32, no-data filled with 0), C = ``model.in_channels``.
    layers : encoder layers to take features from (see :func:`resolve_layers`).
    readout : ``mean_centre`` or ``mean_std_centre`` (module docstring).

    Returns
    -------
    (N, F) float32, F = ``model.feature_size(layers, readout)``: for each layer in order, its C_k
    channel means over the patch's layer map, (their standard deviations,) then its C_k values at
    the patch centre.
    """
    model.check_readout(readout)
    acts = model.encode(patches)
    out = []
    for k in layers:
        a = acts[k]
        c = a.shape[-1] // 2
        if readout == "mean_std_centre" and a.shape[-1] == 1:
            out.append(a[:, :, 0, 0])
            continue
        out.append(a.mean(dim=(2, 3)))
        if readout == "mean_std_centre":
            out.append(a.double().std(dim=(2, 3), correction=0).float())
        out.append(a[:, :, c, c])
    return torch.cat(out, dim=1)


def box_mean(a: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over every size x size window of (N, C, H, W), valid positions only:
    (N, C, H - size + 1, W - size + 1), same dtype and device.

    Two depthwise 1-D convolutions (size + size operations per value instead of
    size**2): the pooling, not the encoder, was 90% of the cost of dense features
    at 31 px with a plain ``avg_pool2d``.
    """
    if size <= 1:
        return a
    C = a.shape[1]
    w = torch.full((C, 1, size, 1), 1.0 / size, dtype=a.dtype, device=a.device)
    return F.conv2d(F.conv2d(a, w, groups=C), w.transpose(2, 3), groups=C)


def box_sum64(a: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over every size x size window of (N, C, H, W), valid positions, in float64 from a summed-area
    table: (N, C, H - size + 1, W - size + 1). Four lookups per value whatever the size; float64
    convolutions on the CPU were 15x slower than float32 ones, the table costs about 2.5x."""
    s = F.pad(a.double(), (1, 0, 1, 0)).cumsum(-2).cumsum(-1)
    return s[..., size:, size:] - s[..., :-size, size:] - s[..., size:, :-size] + s[..., :-size, :-size]


def box_mean_std(a: torch.Tensor, size: int, out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation over every size x size window of (N, C, H, W), valid
    positions: two (N, C, H - size + 1, W - size + 1) tensors of ``a``'s dtype (or written into ``out``).

    Window sums of a and a^2 come from a float64 summed-area table, where their difference keeps its
    digits (float32 box means lose them where a channel varies little about a large mean). The table
    is built in one buffer with in-place steps, on the CPU one channel at a time so that the buffer
    stays in cache (several times faster than all channels at once, or than out-of-place steps; the
    figures are in CHANGELOG.md, 2026-11-26); on a GPU all channels at once.
    """
    N, C, H, W = a.shape
    step = 1 if a.device.type == "cpu" else C
    if out is None:
        out = (torch.empty(N, C, H - size + 1, W - size + 1, dtype=a.dtype, device=a.device),
               torch.empty(N, C, H - size + 1, W - size + 1, dtype=a.dtype, device=a.device))
    mean, std = out
    buf = torch.zeros(N, 2 * step, H + 1, W + 1, dtype=torch.float64, device=a.device)
    sums = torch.empty(N, 2 * step, H - size + 1, W - size + 1, dtype=torch.float64, device=a.device)
    n = float(size * size)
    for c0 in range(0, C, step):
        g = min(step, C - c0)
        b, s = buf[:, : 2 * g], sums[:, : 2 * g]
        b[:, :g, 1:, 1:] = a[:, c0 : c0 + g]
        b[:, g:, 1:, 1:] = b[:, :g, 1:, 1:]
        b[:, g:, 1:, 1:].square_()
        b.cumsum_(-2).cumsum_(-1)
        torch.sub(b[..., size:, size:], b[..., :-size, size:], out=s)
        s -= b[..., size:, :-size]
        s += b[..., :-size, :-size]
        m, var = s[:, :g].div_(n), s[:, g:].div_(n)
        var.addcmul_(m, m, value=-1.0)
        mean[:, c0 : c0 + g] = m
        std[:, c0 : c0 + g] = var.clamp_(min=0).sqrt_()  # the table's zero row and column stay zero
    return mean, std


@torch.no_grad()
def dense_features(model: PatchAutoencoder, tile: torch.Tensor, layers: Sequence[int],
                   readout: str = "mean_centre", acts: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Features of every pixel of a tile: (1, C, H + 2h, W + 2h) with halo h = p // 2 -> (F, H, W).

    ``tile`` is standardised (float32, no-data and the area beyond the survey filled with 0). Feature
    ``[:, i, j]`` equals :func:`patch_features` of the patch centred on interior cell (i, j), in the
    same order, at the cost of one encoder pass over the tile instead of one per cell. With
    ``mean_std_centre`` means and standard deviations come from one float64 summed-area table
    (:func:`box_mean_std`). ``acts`` = ``model.encode(tile)`` when the caller has it (the anomaly
    shares the pass). The result is on the tile's device.
    """
    model.check_readout(readout)
    h = model.patch_px // 2
    acts = model.encode(tile) if acts is None else acts
    H, W = tile.shape[-2] - 2 * h, tile.shape[-1] - 2 * h
    out = torch.empty(model.feature_size(layers, readout), H, W, dtype=acts[0].dtype, device=tile.device)
    f = 0  # each part is written into its rows of ``out``: no concatenation pass
    for k in layers:
        a, r = acts[k], model.radii[k]
        size, c = model.map_px(k), a.shape[1]  # side of the patch's layer-k map, channels
        crop = h - r
        if not (readout == "mean_std_centre" and size == 1):
            if readout == "mean_std_centre":
                box_mean_std(a, size, out=(out[None, f : f + c], out[None, f + c : f + 2 * c]))
                f += 2 * c
            else:
                out[f : f + c] = box_mean(a, size)[0]
                f += c
        out[f : f + c] = a[0, :, crop : crop + H, crop : crop + W]
        f += c
    return out


def centre_window(patch_px: int, window_px: int, in_channels: int = 1) -> torch.Tensor:
    """Flat indices of the central window_px x window_px cells of a patch, channel by channel.

    Returns a (in_channels * window_px**2,) int64 tensor indexing a flattened (in_channels, p, p) patch.
    The anomaly is scored on this window only, so it describes the cell's own neighbourhood rather
    than the whole patch, whose edges belong to its neighbours as much as to it.
    """
    lo = patch_px // 2 - window_px // 2
    idx = torch.arange(patch_px * patch_px).view(patch_px, patch_px)
    one = idx[lo : lo + window_px, lo : lo + window_px].reshape(-1)
    return torch.cat([c * patch_px * patch_px + one for c in range(in_channels)])


@torch.no_grad()
def patch_anomaly(model: PatchAutoencoder, patches: torch.Tensor, mask: torch.Tensor, window_px: int) -> torch.Tensor:
    """Mean squared reconstruction error over the valid cells of each patch's central window, all
    input channels: (N,). ``mask`` is (N, 1, p, p): a cell is valid in every channel or none.

    Parameters
    ----------
    patches : (N, C, p, p) standardised patches (float32, no-data filled with 0).
    mask : (N, 1, p, p) bool, True where the cell has data.
    window_px : side of the central window scored (the config's ``anomaly_px``), in cells.

    Returns
    -------
    (N,) float32 in squared standardised units; 0 for a patch with no valid cell in the window.
    """
    idx = centre_window(model.patch_px, window_px, model.in_channels)
    recon = model(patches).flatten(1)[:, idx]
    m = mask.expand(-1, model.in_channels, -1, -1).flatten(1)[:, idx].float()
    target = patches.flatten(1)[:, idx]
    return ((recon - target) ** 2 * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def dense_anomaly(model: PatchAutoencoder, tile: torch.Tensor, mask: torch.Tensor, window_px: int,
                  rows_per_step: int = 32, code: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`patch_anomaly` for every pixel of a tile (same layout as :func:`dense_features`): (H, W).

    ``tile`` is (1, C, H + 2h, W + 2h) standardised float32, ``mask`` (1, 1, H + 2h, W + 2h) bool
    (True = data); the result is in squared standardised units, the tile's dtype and device.
    ``rows_per_step`` output rows are decoded at a time, which bounds the memory of the
    reconstructions. ``code`` = ``model.encode(tile)[-1]`` when the caller has it.

    Only the decoder rows of the central window are evaluated, so this costs
    ``hidden * window_px**2`` per pixel and channel, not a full patch decode. The reconstructions are
    computed as (rows, cells), the layout of ``F.unfold``'s targets: subtracting a transposed view of those
    instead read them at a stride of the cells per step, which for 32 rows of 512 cells (a power of two)
    thrashed the cache (docs/performance.md, the stack rates).
    """
    p, h, a, C = model.patch_px, model.patch_px // 2, window_px, model.in_channels
    code = (model.encode(tile)[-1] if code is None else code)[0]  # (C_code, H, W)
    Cc, H, W = code.shape
    idx = centre_window(p, a, C).to(tile.device)
    lin1, lin2 = model.decoder[0], model.decoder[2]
    w2, b2 = lin2.weight[idx], lin2.bias[idx, None]
    off = h - a // 2
    core = tile[:, :, off : off + H + a - 1, off : off + W + a - 1]
    core_m = mask[:, :, off : off + H + a - 1, off : off + W + a - 1].float().expand(-1, C, -1, -1)
    out = torch.empty(H, W, dtype=tile.dtype, device=tile.device)
    for r0 in range(0, H, rows_per_step):
        r1 = min(H, r0 + rows_per_step)
        z = code[:, r0:r1].reshape(Cc, -1)  # (Cc, n)
        hidden = F.relu(torch.addmm(lin1.bias[:, None], lin1.weight, z))  # (hidden, n)
        recon = torch.addmm(b2, w2, hidden)  # (C*a*a, n), channel-major like unfold
        recon -= F.unfold(core[:, :, r0 : r1 + a - 1], kernel_size=a)[0]  # minus the target
        recon.square_()
        strip_m = core_m[:, :, r0 : r1 + a - 1]
        if bool(strip_m.all()):  # every cell has data: a plain mean, no mask to unfold
            err = recon.mean(0)
        else:
            m = F.unfold(strip_m, kernel_size=a)[0]
            err = (recon * m).sum(0) / m.sum(0).clamp(min=1)
        out[r0:r1] = err.view(r1 - r0, W)
    return out
