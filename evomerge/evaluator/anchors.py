"""Cheap fitness estimates from anchor items (tinyBenchmarks' anchors, MERGE^3's IRT estimate).

Calibration, once per search: every pool model (base, sources) and the sources' plain average are scored on the
whole fitness split, giving a models x items matrix of per-item scores for each metric. Items are clustered by
their response pattern across those models and metrics (k-means); the item nearest each centre is an anchor,
weighted by its cluster's share of the items. From then on a candidate is scored on the k anchors only, and each
per-item metric is estimated for the whole split:
- `mean`: the anchor-weighted mean (tinyBenchmarks' anchor estimate);
- `pirt`: the anchors' observed scores plus, for every other item, the probability a Rasch model gives it: item
  difficulties b_i are fitted on the calibration matrix, the candidate's ability theta from its anchor answers
  (MAP, prior centred on the calibration models); the estimate is (sum over anchors of y + sum over the rest of
  sigmoid(theta - b_i)) / n (tinyBenchmarks' p-IRT; MERGE^3 estimates merged models' scores the same way).
Metrics without per-item scores (losses) are reported as measured on the anchors. Validation and test are always
scored in full. With few calibration models the Rasch fit is weak; `experiments/bench/anchor_bench.py` measures
each estimator's error on held-out candidates against the full score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ESTIMATORS = ("mean", "pirt")


def choose_anchors(features: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(anchor item indices, weights summing to 1) from items' response features (n_items, n_features).

    Items with the same response pattern are interchangeable for every calibration model, so when there are at
    most k distinct patterns each pattern is one anchor (its lowest item) weighted by its share: fewer than k
    anchors, and the `mean` estimate is exact for every calibration model. With few models and binary scores
    (4 models: at most 16 patterns) this is the common case."""
    n = len(features)
    if k >= n:
        return np.arange(n), np.full(n, 1.0 / n)
    patterns, first, labels = np.unique(features, axis=0, return_index=True, return_inverse=True)
    if len(patterns) <= k:
        counts = np.bincount(labels.reshape(-1), minlength=len(patterns))
        order = np.argsort(first)
        return first[order], counts[order] / n
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    anchors, weights = [], []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if not len(members):
            continue
        d = ((features[members] - km.cluster_centers_[c]) ** 2).sum(1)
        anchors.append(int(members[np.argmin(d)]))  # ties: the lowest index (argmin's first)
        weights.append(len(members) / n)
    order = np.argsort(anchors)
    return np.asarray(anchors)[order], np.asarray(weights)[order]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def fit_rasch(Y: np.ndarray, prior_sd: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """MAP Rasch fit of a models x items matrix of scores in [0, 1]: (theta per model, difficulty per item).
    Normal priors (sd `prior_sd`) keep items every model got right (or wrong) finite."""
    from scipy.optimize import minimize

    m, n = Y.shape

    def loss(z):
        theta, b = z[:m], z[m:]
        p = _sigmoid(theta[:, None] - b[None, :])
        eps = 1e-9
        nll = -(Y * np.log(p + eps) + (1 - Y) * np.log(1 - p + eps)).sum()
        g = p - Y  # d nll / d logit
        reg = 0.5 * (theta @ theta + b @ b) / prior_sd**2
        grad = np.concatenate([g.sum(1) + theta / prior_sd**2, -g.sum(0) + b / prior_sd**2])
        return nll + reg, grad

    res = minimize(loss, np.zeros(m + n), jac=True, method="L-BFGS-B")
    return res.x[:m], res.x[m:]


def ability(y: np.ndarray, b: np.ndarray, prior_mean: float, prior_sd: float = 1.5) -> float:
    """MAP ability of one candidate from its scores `y` on items of difficulty `b` (Newton steps)."""
    theta = prior_mean
    for _ in range(50):
        p = _sigmoid(theta - b)
        grad = (y - p).sum() - (theta - prior_mean) / prior_sd**2
        hess = -(p * (1 - p)).sum() - 1.0 / prior_sd**2
        step = grad / hess
        theta -= step
        if abs(step) < 1e-10:
            break
    return float(theta)


@dataclass
class AnchorFit:
    """What calibration leaves: the anchors, their weights, and per metric the items' Rasch difficulties."""

    anchors: np.ndarray
    weights: np.ndarray
    difficulty: dict[str, np.ndarray]
    theta_mean: dict[str, float]

    @classmethod
    def calibrate(cls, scores: dict[str, np.ndarray], k: int, seed: int = 0) -> AnchorFit:
        """`scores`: metric -> (models, items) matrix of per-item scores on the whole fitness split."""
        mats = list(scores.values())
        features = np.concatenate([m.T for m in mats], axis=1)  # items x (metrics * models)
        anchors, weights = choose_anchors(features, k, seed)
        difficulty, theta_mean = {}, {}
        for metric, Y in scores.items():
            theta, b = fit_rasch(Y)
            difficulty[metric], theta_mean[metric] = b, float(theta.mean())
        return cls(anchors, weights, difficulty, theta_mean)

    def estimate(self, metric: str, y_anchor: np.ndarray, estimator: str) -> float:
        """The whole-split score of `metric` from a candidate's per-item scores on the anchors."""
        y = np.asarray(y_anchor, float)
        if estimator == "mean":
            return float(self.weights @ y)
        b = self.difficulty[metric]
        theta = ability(y, b[self.anchors], self.theta_mean[metric])
        rest = np.ones(len(b), bool)
        rest[self.anchors] = False
        return float((y.sum() + _sigmoid(theta - b[rest]).sum()) / len(b))


class AnchoredEvaluator:
    """An evaluator scored on k anchor items of its fitness split, its per-item metrics estimated for the whole
    split (validation and test: in full). Configured as `evaluator.<name>.anchors: {k, estimator}`."""

    def __init__(self, inner, k: int = 20, estimator: str = "pirt", seed: int = 0):
        if estimator not in ESTIMATORS:
            raise ValueError(f"evaluator.{inner.name}.anchors.estimator: expected one of {list(ESTIMATORS)}, "
                             f"found {estimator!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"evaluator.{inner.name}.anchors.k: expected a positive number of items, found {k!r}")
        if not hasattr(inner, "item_scores"):
            raise ValueError(f"evaluator.{inner.name}.anchors: evaluators of this kind do not report per-item "
                             "scores (jp_math and vision do)")
        self.inner, self.k, self.estimator, self.seed = inner, k, estimator, seed
        self.name = inner.name
        self.fit: AnchorFit | None = None  # set by calibrate(), which the Worker holding the pool calls first

    def metric_names(self) -> list[str]:
        return self.inner.metric_names()

    def higher_is_better(self) -> dict[str, bool]:
        return self.inner.higher_is_better()

    def size(self, split: str) -> int:
        return self.inner.size(split)

    def calibrate(self, references: Iterable[nn.Module]) -> None:
        """Pick the anchors and fit the estimator on the (models, items) scores of `references`: every pool model
        and the sources' plain average (`Worker.reference_models`). Once; before any candidate is merged, since
        the references may share the candidate's live model."""
        if self.fit is None:
            self.fit = AnchorFit.calibrate(self.calibration_scores(references), self.k, self.seed)

    def calibration_scores(self, references: Iterable[nn.Module]) -> dict[str, np.ndarray]:
        """Per metric, the (models, items) scores of the reference models."""
        rows: dict[str, list] = {}
        with torch.no_grad():
            for model in references:
                res = self.inner.evaluate(model, "fitness", None)
                for metric, v in self.inner.item_scores(res.records).items():
                    rows.setdefault(metric, []).append(v)
        return {m: np.stack(v) for m, v in rows.items()}

    def evaluate(self, model, split: str = "fitness", indices: Sequence[int] | None = None):
        if split != "fitness":
            return self.inner.evaluate(model, split, indices)
        if indices is not None:
            raise ValueError(f"evaluator.{self.name}.anchors: the anchors are the fitness subsample; do not combine "
                             "them with minibatches or fidelity rungs")
        if self.fit is None:
            raise RuntimeError(f"evaluator.{self.name}.anchors: not calibrated; score it through a Worker, which "
                               "calibrates it on the pool models first")
        res = self.inner.evaluate(model, "fitness", [int(i) for i in self.fit.anchors])
        for metric, y in self.inner.item_scores(res.records).items():
            res.metrics[metric] = self.fit.estimate(metric, y, self.estimator)
        return res
