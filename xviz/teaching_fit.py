"""Fitting and checking a taught head (see xviz.teaching): multinomial logistic regression on the
backbone's pooled features by full-batch L-BFGS on standardised features, and its held-out accuracy
(leave-one-out, or k-fold past :data:`LOO_MAX_SAMPLES`) beside the nearest-class-mean baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

L2 = 0.1  # penalty on the squared weights, on standardised features: what held-out photos liked (notes/13.md)
LOO_MAX_SAMPLES = 60  # up to here leave-one-out; above, FOLDS-fold cross-validation (LOO would cost N fits)
FOLDS = 5
MAX_ITER = 300  # L-BFGS iterations (a cap: 10 x 30 real samples need about 100)
GRAD_TOL = 1e-6  # stop when every partial derivative of the mean loss is below this


@dataclass(frozen=True)
class LinearHead:
    """logits = embedding @ weight.T + bias, on raw (not standardised) embeddings."""

    weight: torch.Tensor  # (K, 2048) float32
    bias: torch.Tensor  # (K,) float32


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and spread of the training embeddings. Pooled ReLU features span orders of
    magnitude between channels; scaling them gives the penalty the same meaning on every channel
    and L-BFGS a round problem. A channel that is constant in the training set gets spread 1."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


def lbfgs(f, x0: torch.Tensor, *, max_iter: int = MAX_ITER, tol: float = GRAD_TOL, memory: int = 10) -> torch.Tensor:
    """Minimise a smooth convex ``f(x) -> (value, gradient)`` by L-BFGS with Armijo backtracking
    (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Algorithms 7.4 and 3.1).

    Written out rather than ``torch.optim.LBFGS``, whose first step imports torch._dynamo (tens of
    seconds and ~200 MB on a busy 2-core server) for a problem that needs no autograd.
    """
    x = x0.clone()
    fx, g = f(x)
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, 1 / y.s)
    for _ in range(max_iter):
        if float(g.abs().max()) < tol:
            break
        q = g.clone()  # two-loop recursion: q becomes H g for the implicit inverse Hessian H
        alphas = []
        for s, y, rho in reversed(history):
            a = rho * (s * q).sum()
            q -= a * y
            alphas.append(a)
        if history:
            s, y, _ = history[-1]
            q *= (s * y).sum() / (y * y).sum()  # gamma: the scale of the curvature seen last
        else:
            q /= max(1.0, float(g.abs().sum()))  # first step: no longer than 1 in the L1 norm
        for (s, y, rho), a in zip(history, reversed(alphas)):
            q += s * (a - rho * (y * q).sum())
        slope = -(g * q).sum()  # directional derivative along d = -q; negative for a descent step
        t = 1.0
        while True:
            x_new = x - t * q
            f_new, g_new = f(x_new)
            if f_new <= fx + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        s, y = x_new - x, g_new - g
        sy = (s * y).sum()
        if sy > 1e-12:  # keeps H positive definite; convex f makes this the rule
            history = (history + [(s, y, 1.0 / sy)])[-memory:]
        x, fx, g = x_new, f_new, g_new
    return x


def _fit_standardised(z: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                      start: torch.Tensor) -> torch.Tensor:
    """Minimise mean cross-entropy + l2/2 ||W||^2 over (K, D+1) [W | b]; float64, full batch.

    The optimal W lies in the span of the samples (anything orthogonal to them costs penalty and
    changes no logit), so with z = U S V^T (thin SVD) the fit runs on the N-dimensional U S and
    W = W_r V^T is exact: 300 samples make a 300-d problem instead of a 2,048-d one. The gradient is
    written out: for softmax cross-entropy, d loss / d logits = (P - Y) / N.
    """
    u, s, vt = torch.linalg.svd(z, full_matrices=False)  # (N, r), (r,), (r, D) with r = min(N, D)
    zr = u * s  # (N, r): the samples in the basis of their own span
    onehot = F.one_hot(y, num_classes).to(z.dtype)  # (N, K)
    n = len(y)

    def loss_and_grad(wb: torch.Tensor) -> tuple[float, torch.Tensor]:
        w, b = wb[:, :-1], wb[:, -1]
        logp = (zr @ w.T + b).log_softmax(dim=1)  # (N, r) @ (r, K) -> (N, K)
        loss = -(onehot * logp).sum() / n + 0.5 * l2 * w.pow(2).sum()  # the bias is not penalised
        residual = (logp.exp() - onehot) / n  # d loss / d logits, (N, K)
        grad = torch.cat([residual.T @ zr + l2 * w, residual.sum(dim=0)[:, None]], dim=1)  # (K, r+1)
        return float(loss), grad

    wb0 = torch.cat([start[:, :-1] @ vt.T, start[:, -1:]], dim=1)  # (K, D+1) -> (K, r+1)
    wb = lbfgs(loss_and_grad, wb0)
    return torch.cat([wb[:, :-1] @ vt, wb[:, -1:]], dim=1)  # back to (K, D+1)


def _start(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1e-3 * torch.randn(num_classes, dim + 1, generator=g, dtype=torch.float64)


def fit_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float = L2, seed: int = 0,
             _start_from: torch.Tensor | None = None) -> LinearHead:
    """Multinomial logistic regression on embeddings, as a head for the raw embeddings.

    Args:
        x: (N, D) embeddings (:meth:`LoadedModel.embed` of each sample).
        y: (N,) class indices in ``range(num_classes)``.
        num_classes: outputs of the head (a class may have no sample here: leave-one-out).
        l2: penalty on the weights of the standardised features (the bias is free).
        seed: draws the (tiny) starting weights; the optimum is unique, the seed makes runs bit-equal.

    Returns:
        :class:`LinearHead` with the standardisation folded in: ``x @ weight.T + bias``.
    """
    x = x.detach().to(torch.float64)
    mean, std = _standardiser(x)
    z = (x - mean) / std
    start = _start(num_classes, x.shape[1], seed) if _start_from is None else _start_from
    wb = _fit_standardised(z, y.long(), num_classes, l2, start)
    w, b = wb[:, :-1] / std, wb[:, -1]  # logits = ((x - mean) / std) @ W.T + b = x @ (W / std).T + b'
    b = b - w @ mean
    return LinearHead(w.float().contiguous(), b.float().contiguous())


def nearest_class_mean(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: (centre, class means) on centred, L2-normalised embeddings (SimpleShot's "CL2N",
    Wang et al., 2019); a class without samples gets no mean (NaN, never chosen)."""
    x = x.detach().to(torch.float64)
    centre = x.mean(dim=0)
    z = F.normalize(x - centre, dim=1)
    means = torch.full((num_classes, x.shape[1]), float("nan"), dtype=torch.float64)
    for k in range(num_classes):
        if (y == k).any():
            means[k] = z[y == k].mean(dim=0)
    return centre, means


def _ncm_predict(x: torch.Tensor, centre: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    z = F.normalize(x.to(torch.float64) - centre, dim=1)
    d = torch.cdist(z, torch.nan_to_num(means, nan=0.0))  # (N, K)
    d[:, torch.isnan(means[:, 0])] = float("inf")
    return d.argmin(dim=1)


# -- evaluation -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evaluation:
    """Held-out predictions of every sample: by the linear head and by the nearest class mean.

    ``confusion[i, j]`` counts samples of class i predicted as j (rows: truth).
    """

    method: str  # "leave-one-out" or "5-fold cross-validation"
    labels: list[str]
    targets: np.ndarray  # (N,) int
    predicted: np.ndarray  # (N,) int, linear head
    baseline_predicted: np.ndarray  # (N,) int, nearest class mean

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.targets).mean())

    @property
    def baseline_accuracy(self) -> float:
        return float((self.baseline_predicted == self.targets).mean())

    @property
    def chance(self) -> float:
        """Accuracy of always answering the largest class: what a head that learned nothing gets."""
        return float(np.bincount(self.targets, minlength=len(self.labels)).max() / len(self.targets))

    def _confusion(self, predicted: np.ndarray) -> np.ndarray:
        k = len(self.labels)
        return np.bincount(self.targets * k + predicted, minlength=k * k).reshape(k, k)

    @property
    def confusion(self) -> np.ndarray:
        return self._confusion(self.predicted)

    @property
    def baseline_confusion(self) -> np.ndarray:
        return self._confusion(self.baseline_predicted)

    def summary(self) -> dict:
        return {"method": self.method, "accuracy": round(self.accuracy, 4),
                "nearest_class_mean_accuracy": round(self.baseline_accuracy, 4), "chance": round(self.chance, 4)}


def folds(y: torch.Tensor, seed: int = 0) -> list[np.ndarray]:
    """Held-out index sets: one per sample up to :data:`LOO_MAX_SAMPLES`, else :data:`FOLDS`
    stratified folds (each class dealt round-robin after a seeded shuffle)."""
    y = np.asarray(y)
    if len(y) <= LOO_MAX_SAMPLES:
        return [np.array([i]) for i in range(len(y))]
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        fold_of[members] = np.arange(len(members)) % FOLDS
    return [np.flatnonzero(fold_of == f) for f in range(FOLDS)]


def evaluate(x: torch.Tensor, y: torch.Tensor, labels: Sequence[str], *, l2: float = L2,
             seed: int = 0) -> Evaluation:
    """Leave-one-out (k-fold past 60 samples) accuracy of the head and of the baseline.

    Each split standardises and fits on its training part only. Fits start from the head fitted on
    all samples (a warm start: the optimum is the same, it is just reached in fewer steps).
    """
    x, y = x.detach().to(torch.float64), y.long()
    k = len(labels)
    # warm start in standardised coordinates of the whole set: close to every split's optimum
    mean, std = _standardiser(x)
    warm = _fit_standardised((x - mean) / std, y, k, l2, _start(k, x.shape[1], seed))
    predicted = np.empty(len(y), dtype=int)
    baseline = np.empty(len(y), dtype=int)
    for held in folds(y, seed):
        train = np.setdiff1d(np.arange(len(y)), held)
        head = fit_head(x[train], y[train], k, l2=l2, seed=seed, _start_from=warm)
        predicted[held] = (x[held].float() @ head.weight.T + head.bias).argmax(dim=1).numpy()
        centre, means = nearest_class_mean(x[train], y[train], k)
        baseline[held] = _ncm_predict(x[held], centre, means).numpy()
    method = "leave-one-out" if len(y) <= LOO_MAX_SAMPLES else f"{FOLDS}-fold cross-validation"
    return Evaluation(method, list(labels), y.numpy().astype(int), predicted, baseline)
