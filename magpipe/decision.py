"""The deployed SVM's votes and probabilities as torch operations, on the device of the features.

The SVM's kernel map (F x m multiply-adds per cell) is most of a tile's cost, so it runs where the
dense features are made, on the CPU or a GPU, and a tile's features never leave that device.
:class:`Decision` holds the fitted pipeline's arrays (scaler, landmarks, linear weights, Platt
sigmoids) as tensors and computes its decision function with fewer passes over memory: the
scaling in float32, the RBF kernel's exponent -gamma |x - l|^2 as one fused matrix product
(``addmm`` against landmarks pre-scaled by 2 gamma), then decision values (float32 products, float64
sums) and probabilities. Its votes are sklearn's to ~1e-5 and its classes sklearn's except where
the top two votes tie to float rounding (``tests/test_decision.py``). An exact-kernel SVC's
one-vs-one vote is left to sklearn, on the CPU, after the kernel block is made on the device;
bundles from before :class:`magpipe.svm.VoteWithProbabilities` are scored by sklearn altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from magpipe.svm import RBFFeatures, _pipelines, class_scores, decision_matrix

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
    coef: torch.Tensor | None = None  # (K', m) float32 linear SVM; None: an exact SVC (sklearn votes)
    intercept: torch.Tensor | None = None  # (K',) float64
    slope_platt: torch.Tensor | None = None  # (K,) float64; None: uncalibrated (probabilities NaN)
    intercept_platt: torch.Tensor | None = None

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
        linear = hasattr(svc, "coef_")
        return cls(
            model, device, classes,
            mean=t(scaler.mean_), inv_scale=t(1.0 / np.asarray(scaler.scale_, dtype=np.float64)),
            landmarks_2g=t((landmarks * 2 * gamma).T.copy()), landmark_term=t(-gamma * (landmarks**2).sum(1)),
            gamma=gamma,
            normalization=None if kernel.normalization_ is None else t(kernel.normalization_),
            coef=t(svc.coef_) if linear else None,
            intercept=t(svc.intercept_, torch.float64) if linear else None,
            slope_platt=t(model.slope_, torch.float64) if calibrated else None,
            intercept_platt=t(model.intercept_, torch.float64) if calibrated else None,
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
        k.clamp_(max=0.0).exp_()
        if self.normalization is not None:
            k = k @ self.normalization
        if self.coef is not None:  # float32 products, float64 sums with the intercept (a float64 product of
            # the (n, m) block cost 5x as much; the votes move by ~1e-6, below any class's margin but a tie's)
            d = (k @ self.coef.T).double() + self.intercept
            d = torch.cat([-d, d], 1) if d.shape[1] == 1 else d  # binary: one margin (decision_matrix)
        else:  # exact SVC: its one-vs-one vote on the CPU
            svc = _pipelines(self.model)[0].named_steps["svc"]
            d = torch.from_numpy(decision_matrix(svc.decision_function(k.cpu().numpy()))).to(self.device)
        if self.slope_platt is None:
            return d.float(), torch.full_like(d, float("nan"), dtype=torch.float32)
        p = torch.sigmoid(d * self.slope_platt + self.intercept_platt)
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
