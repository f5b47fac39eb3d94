"""The deployed SVM's votes and probabilities as torch operations, on the device of the features.

The SVM's kernel map (F x m multiply-adds per cell) is most of a tile's cost, so it runs where the
dense features are made, on the CPU or a GPU, and a tile's features never leave that device.
:class:`Decision` holds the fitted pipeline's arrays (scaler, landmarks, linear weights, Platt
sigmoids) as tensors and computes its decision function with fewer passes over memory: the
scaling in float32, the RBF kernel's exponent -gamma |x - l|^2 as one fused matrix product
(``addmm`` against landmarks pre-scaled by 2 gamma), then decision values (float32 products, float64
sums) and probabilities. Its votes are sklearn's to ~1e-5 and its classes sklearn's except where
the top two votes tie to float rounding (``tests/test_decision.py``). An exact-kernel SVC is scored
against its support vectors alone: its one-vs-one decisions as one product with a (support vectors,
pairs) matrix of its dual coefficients, then sklearn's one-vs-rest votes of them
(``sklearn.utils.multiclass._ovr_decision_function``), all on the device; libsvm evaluated the kernel
of every training cell and the pairs one cell at a time, most of a tile's cost with window statistics.
Bundles from before :class:`magpipe.svm.VoteWithProbabilities` are scored by sklearn altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sklearn.svm import LinearSVC

from magpipe.svm import RBFFeatures, _pipelines, class_scores

__all__ = ["Decision"]


@dataclass(frozen=True)
class Decision:
    """Votes and calibrated probabilities of features, batch by batch, on ``device``.

    Build with :meth:`of`; call :meth:`scores` with (n, F) float32 features on that device.
    """

    model: object  # the fitted classifier (sklearn), for what runs on the CPU
    device: torch.device
    classes: torch.Tensor  # (K,) int64 class codes
    mean: torch.Tensor | None = None  # (F,) float32 scaler mean; None: sklearn scores the features
    inv_scale: torch.Tensor | None = None  # (F,) float32, 1 / the scaler's scale
    landmarks_2g: torch.Tensor | None = None  # (F, m) float32: landmarks^T * 2 gamma
    landmark_term: torch.Tensor | None = None  # (m,) float32: -gamma |l|^2
    gamma: float = 1.0
    normalization: torch.Tensor | None = None  # (m, m) float32 Nystroem map not folded into coef
    coef: torch.Tensor | None = None  # (K', m) float32: a linear SVM's, or an exact SVC's pairs (one-vs-one)
    intercept: torch.Tensor | None = None  # (K',) float64
    pairs: torch.Tensor | None = None  # (K', K) float64: +1 at each pair's first class, -1 at its second
    slope_platt: torch.Tensor | None = None  # (K,) float64; None: uncalibrated (probabilities NaN)
    intercept_platt: torch.Tensor | None = None
    top_label: bool = True  # the voted column is the confidence; False: a bundle from before, normalised
    # 1: decisions from k - 1 (expm1) where the kernel is near 1 across the landmarks; see :meth:`scores`
    kernel_shift: float = 0.0

    @classmethod
    def of(cls, model, device: str | torch.device = "cpu") -> Decision:
        """The decision of a fitted classifier (:func:`magpipe.svm.fit_svm`'s) on ``device``."""
        device = torch.device(device)
        classes = torch.as_tensor(np.asarray(model.classes_).astype(np.int64), device=device)
        if hasattr(model, "calibrated_classifiers_"):  # a bundle from before VoteWithProbabilities
            return cls(model, device, classes)
        calibrated = hasattr(model, "proba_from_decision")
        pipe = _pipelines(model)[0]
        scaler, kernel, svc = pipe.named_steps["scale"], pipe.named_steps["kernel"], pipe.named_steps["svc"]
        if not isinstance(kernel, RBFFeatures):
            return cls(model, device, classes)

        def t(a, dtype=torch.float32):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        gamma = float(kernel.gamma)
        landmarks = np.asarray(kernel.landmarks_, dtype=np.float64)
        normalization = kernel.normalization_
        if isinstance(svc, LinearSVC):  # Nystroem: one-vs-rest, its map's normalisation folded in already
            coef, intercept, pairs = svc.coef_, svc.intercept_, None
        elif svc.kernel == "linear":  # low-rank: an SVC's one-vs-one pairs, linear in the map (normalisation folded)
            K = len(svc.classes_)
            coef, intercept, pairs = svc.coef_, svc.intercept_, pair_signs(K) if K > 2 else None
            if normalization is not None:
                coef, normalization = np.asarray(coef, np.float64) @ normalization.T, None
        else:  # exact SVC: its support vectors are the landmarks that count
            landmarks = landmarks[svc.support_]
            coef, intercept, pairs = one_vs_one(svc)
        shift = near_one(landmarks, gamma) if normalization is None else 0.0
        return cls(
            model, device, classes,
            kernel_shift=shift,
            mean=t(scaler.mean_), inv_scale=t(1.0 / np.asarray(scaler.scale_, dtype=np.float64)),
            landmarks_2g=t((landmarks * 2 * gamma).T.copy()), landmark_term=t(-gamma * (landmarks**2).sum(1)),
            gamma=gamma,
            normalization=None if normalization is None else t(normalization),
            coef=t(coef),
            intercept=t(np.asarray(intercept, np.float64) + shift * np.asarray(coef, np.float64).sum(1), torch.float64),
            pairs=None if pairs is None else t(pairs, torch.float64),
            slope_platt=t(model.slope_, torch.float64) if calibrated else None,
            intercept_platt=t(model.intercept_, torch.float64) if calibrated else None,
            top_label=getattr(model, "top_label_", False),
        )

    @torch.no_grad()
    def scores(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Votes and probabilities (n, K) float32 of features X (n, F), as :func:`magpipe.svm.class_scores`."""
        if self.mean is None:  # what sklearn alone scores
            votes, proba = class_scores(self.model, X.cpu().numpy())
            return torch.from_numpy(votes).to(self.device), torch.from_numpy(proba).to(self.device)
        x = (X - self.mean).mul_(self.inv_scale)
        # -gamma |x - l|^2 = 2 gamma x.l - gamma |l|^2 - gamma |x|^2, at most 0
        if self.device.type == "cpu":  # numpy's OpenBLAS: faster than torch's MKL on the CPUs measured
            k = torch.from_numpy(np.matmul(x.numpy(), self.landmarks_2g.numpy()))
            k += self.landmark_term
        else:
            k = torch.addmm(self.landmark_term, x, self.landmarks_2g)
        k -= self.gamma * x.square_().sum(1, keepdim=True)
        # where the kernel is near 1 everywhere (a small gamma), sum (k - 1) rather than k (the intercept holds
        # the coefficients' sum): a float32 product of k summed terms of the size of C and cancelled them, and
        # moved a decision by 0.1 at C = 1000 (tiny gamma, 506 support vectors); k - 1 keeps it near the
        # kernel's own rounding (tests/test_decision.py: a flat kernel)
        k.clamp_(max=0.0)
        k = k.expm1_() if self.kernel_shift else k.exp_()
        if self.normalization is not None:
            k = k @ self.normalization
        # float32 products, float64 sums with the intercept (a float64 product of the (n, m) block cost 5x as
        # much; the votes move by ~1e-6, below any class's margin but a tie's)
        d = (k @ self.coef.T).double() + self.intercept
        if self.pairs is not None:  # one-vs-one decisions -> sklearn's one-vs-rest votes
            d = ovr_votes(d, self.pairs)
        elif d.shape[1] == 1:  # binary: one margin (decision_matrix)
            d = torch.cat([-d, d], 1)
        if self.slope_platt is None:
            return d.float(), torch.full_like(d, float("nan"), dtype=torch.float32)
        p = torch.sigmoid(d * self.slope_platt + self.intercept_platt)
        if self.top_label:  # the voted class's confidence, 0 for the others (VoteWithProbabilities)
            best = d.argmax(1, keepdim=True)
            p = torch.zeros_like(p).scatter_(1, best, p.gather(1, best))
        else:
            p /= p.sum(1, keepdim=True).clamp_(min=1e-12)
        return d.float(), p.float()

    def dense(self, feats: torch.Tensor, cells: torch.Tensor, *, batch: int = 8192) -> torch.Tensor:
        """Votes and probabilities (2, K, H, W) float32 of the ``cells`` (H, W) bool of a dense (F, H, W)
        feature map, NaN elsewhere; ``batch`` cells at a time (bounds the kernel block's memory).

        A batch with few cells without data is scored whole, from a view of the map (those cells blanked
        afterwards): gathering the valid cells cost more than scoring the rest."""
        K, (H, W) = len(self.classes), cells.shape
        out = torch.full((2, K, H * W), float("nan"), dtype=torch.float32, device=self.device)
        flat, valid = feats.reshape(feats.shape[0], -1), cells.reshape(-1)
        holes = False
        for b0 in range(0, H * W, batch):
            sel = valid[b0 : b0 + batch]
            n_valid = int(sel.sum())
            if n_valid >= 0.75 * len(sel):
                votes, proba = self.scores(flat[:, b0 : b0 + batch].T)
                out[0, :, b0 : b0 + batch], out[1, :, b0 : b0 + batch] = votes.T, proba.T
                holes |= n_valid < len(sel)
            elif n_valid:
                i = b0 + torch.nonzero(sel).squeeze(1)
                votes, proba = self.scores(flat[:, i].T)
                out[0][:, i], out[1][:, i] = votes.T, proba.T
        if holes:
            out[:, :, ~valid] = float("nan")
        return out.view(2, K, H, W)


def near_one(landmarks: np.ndarray, gamma: float, sample: int = 256) -> float:
    """1.0 where the RBF kernel between landmarks (m, F) is mostly above 1/2 (its median over a sample of pairs),
    else 0.0: the :attr:`Decision.kernel_shift` that keeps a decision's float32 sum small."""
    pick = landmarks[np.random.default_rng(0).permutation(len(landmarks))[:sample]]
    sq = (pick**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pick @ pick.T, 0.0)  # (sample, sample), not (.., .., F)
    off = d2[~np.eye(len(pick), dtype=bool)]
    return 1.0 if off.size and float(np.median(np.exp(-gamma * off))) > 0.5 else 0.0


def one_vs_one(svc) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A fitted exact SVC's decision as products with its support vectors' kernel values (n, S):
    ``d = k @ coef.T + intercept``, with the (P, S) coefficients and (P,) intercepts of its P class pairs
    (libsvm's order: (0, 1), (0, 2), .., (1, 2), ..) and the (P, K) pair matrix (+1 at the first class of a
    pair, -1 at its second) for :func:`ovr_votes`; a binary SVC is one pair, its margin, and no matrix."""
    dual, counts = np.asarray(svc.dual_coef_, dtype=np.float64), np.asarray(svc.n_support_)
    K = len(counts)
    if K == 2:
        return dual, np.asarray(svc.intercept_, dtype=np.float64), None
    start = np.concatenate([[0], np.cumsum(counts)])
    pairs = class_pairs(K)
    coef = np.zeros((len(pairs), dual.shape[1]))
    for p, (i, j) in enumerate(pairs):  # libsvm: the SVs of class i weigh by row j - 1, those of j by row i
        coef[p, start[i] : start[i + 1]] = dual[j - 1, start[i] : start[i + 1]]
        coef[p, start[j] : start[j + 1]] = dual[i, start[j] : start[j + 1]]
    return coef, np.asarray(svc.intercept_, dtype=np.float64), pair_signs(K)


def class_pairs(K: int) -> list[tuple[int, int]]:
    """The class pairs of a one-vs-one SVC of K classes, in libsvm's order: (0, 1), (0, 2), .., (1, 2), .."""
    return [(i, j) for i in range(K) for j in range(i + 1, K)]


def pair_signs(K: int) -> np.ndarray:
    """(P, K) float64: +1 at the first class of each of :func:`class_pairs`, -1 at its second."""
    pairs = class_pairs(K)
    sign = np.zeros((len(pairs), K))
    for p, (i, j) in enumerate(pairs):
        sign[p, i], sign[p, j] = 1.0, -1.0
    return sign


def ovr_votes(d: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """sklearn's one-vs-rest votes (n, K) from one-vs-one decisions (n, P): a pair's vote goes to its first
    class where its decision is >= 0, else to its second, plus each class's summed confidence c (its pairs'
    decisions, signed) squashed as c / (3 (|c| + 1)), which breaks ties of votes without ever outweighing one
    (``sklearn.utils.multiclass._ovr_decision_function``)."""
    first = (d >= 0).double()
    votes = first @ pairs.clamp(min=0) + (1 - first) @ (-pairs).clamp(min=0)
    conf = d @ pairs
    return votes + conf / (3 * (conf.abs() + 1))
