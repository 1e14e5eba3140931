"""The weighted ensemble of the EmoNet method: one weight per member, found by differential
evolution on the members' validation probabilities.

The ensemble's class probabilities are the weighted average of its members' probabilities,
``sum_m w_m * P_m`` with ``w_m >= 0`` and ``sum_m w_m = 1``; its prediction is their argmax.

Objectives
----------
``"accuracy"`` (the paper's)
    Maximise the accuracy of the weighted average's argmax. Accuracy is piecewise constant
    in the weights: whole regions of weights tie. Ties are broken by the log-loss of the
    weighted average, scaled so that it can never outweigh one sample: the optimiser
    minimises ``-accuracy + log_loss / (n_samples * (1 + max_log_loss))``, where
    ``max_log_loss = -log(1e-15)`` bounds the clipped log-loss. So the order is
    lexicographic: the most accurate weights first, then, among equally accurate ones, the
    best calibrated. (The log-loss also gives the optimiser a slope on the plateaus.)
``"log-loss"``
    Minimise the mean negative log-probability of the true class (probabilities clipped to
    ``[1e-15, 1]``). Smooth, so the best vector is polished with L-BFGS-B.

The search runs over ``[0, 1]`` per member (seeded ``scipy.optimize.differential_evolution``,
``workers=1``, the population evaluated in one vectorised call); the result is normalised to
sum to 1 (all zero -> equal weights). The initial population holds, besides random points,
the equal-weight vector and each member alone; as differential evolution never loses its
best point, the fitted ensemble is never worse *on the fit data* than equal weights or the
best single member under the chosen objective.

Weights fitted on a split flatter that split: report :meth:`WeightedEnsemble.cross_validated_accuracy`
(or a test split) rather than the in-sample :attr:`WeightedEnsemble.score_`.

Input checks
------------
``probas`` has shape ``(n_members, n_samples, n_classes)``; every value must be finite and in
``[0, 1]`` and every row must sum to 1 within 1e-3; otherwise a ``ValueError`` names the
member. Rows are *not* silently renormalised: a row that does not sum to one means logits,
sigmoid outputs or a column mix-up, and averaging those would give a meaningless ensemble.

Bad parameters (``objective``, ``seed``, ``maxiter``, ``popsize``, ``tol``, ``n_splits``: what
``pipelines.fit_ensemble``'s options set) and a bad :meth:`WeightedEnsemble.from_json` dict (read
from an ensemble file) raise :class:`~ensemble_fer.errors.InputError`, which the command-line
stages report in one line. Bad ``probas``/``y``/``classes`` arrays raise a plain ``ValueError``:
the pipelines check the files those arrays come from first (``ensemble.members.read_member`` names the
file), so one failing here is a bug there and keeps its traceback.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from scipy.optimize import differential_evolution
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from ensemble_fer.errors import InputError
from ensemble_fer.metrics import check_class_indices, check_probabilities

OBJECTIVES = ("accuracy", "log-loss")
LOG_LOSS_EPS = 1e-15
_MAX_LOG_LOSS = -math.log(LOG_LOSS_EPS)
_MAX_CHUNK_FLOATS = 8_000_000  # bound on the (candidates, samples, classes) intermediate
JSON_FORMAT = "ensemble_fer.WeightedEnsemble"
JSON_VERSION = 1


class WeightedEnsemble(BaseEstimator):
    """Weighted average of member probabilities, weights learnt by differential evolution.

    Parameters
    ----------
    objective : {"accuracy", "log-loss"}, default "accuracy"
        What the weights optimise on the fit data (see the module docstring for the
        accuracy tie-break).
    seed : int or None, default 0
        Seed of the initial population and of differential evolution; the same seed and
        data give identical weights.
    maxiter : int, default 100
        Most generations of differential evolution.
    popsize : int, default 15
        Population size per member (population = ``popsize * n_members``, at least 5).
    tol : float, default 1e-3
        Relative convergence tolerance of differential evolution (``atol`` is 0).

    Attributes
    ----------
    weights_ : ndarray of shape (n_members,)
        Non-negative weights summing to 1.
    classes_ : ndarray of shape (n_classes,)
        ``np.arange(n_classes)`` or the class names given to :meth:`fit`: the label space of
        ``y`` in :meth:`fit` and :meth:`score`, and of what :meth:`predict` returns.
    n_members_ : int
    score_ : float
        The objective on the fit data with the learnt weights: accuracy (higher is better)
        or log-loss (lower is better). Optimistic: see :meth:`cross_validated_accuracy`.
    n_iter_ : int
        Generations differential evolution ran (0 for a single member).
    """

    def __init__(self, objective="accuracy", seed=0, maxiter=100, popsize=15, tol=1e-3):
        self.objective = objective
        self.seed = seed
        self.maxiter = maxiter
        self.popsize = popsize
        self.tol = tol

    # ------------------------------------------------------------------ fitting

    def fit(self, probas, y, classes=None):
        """Learn one weight per member from ``probas`` (n_members, n_samples, n_classes)
        and the true labels ``y`` (n_samples,). ``classes`` optionally names the classes
        (length n_classes, in the order of the last axis of ``probas``); ``y`` holds values
        of ``classes``, or class indices when it is None -- the label space :meth:`predict`
        returns and :meth:`score` takes, as in scikit-learn's ``VotingClassifier``.
        Returns ``self``."""
        self._check_params()
        probas = _check_probas(probas)
        n_members, n_samples, n_classes = probas.shape
        if classes is None:
            classes_ = np.arange(n_classes)
        else:
            classes_ = np.asarray(classes)
            if classes_.ndim != 1 or len(classes_) != n_classes:
                raise ValueError(f"classes must list one name per class ({n_classes}, the last "
                                 f"axis of probas); got {len(np.atleast_1d(classes_))}")
        y = _encode_labels(y, classes_, n_samples)

        objective = _Objective(probas, y, self.objective)
        if n_members == 1:
            warnings.warn("WeightedEnsemble fitted on a single member: the ensemble is that "
                          "member (weight 1.0); nothing was optimised", UserWarning, stacklevel=2)
            weights = np.ones(1)
            n_iter = 0
        else:
            rng = np.random.default_rng(self.seed)
            result = differential_evolution(
                objective, bounds=[(0.0, 1.0)] * n_members, maxiter=self.maxiter,
                tol=self.tol, atol=0.0, init=_initial_population(n_members, self.popsize, rng),
                rng=rng, polish=self.objective == "log-loss", updating="deferred",
                vectorized=True, workers=1)
            weights = _normalise(result.x)
            n_iter = int(result.nit)

        self.weights_ = weights
        self.classes_ = classes_
        self.n_members_ = n_members
        self.score_ = _score(np.tensordot(weights, probas, axes=1), y, self.objective)
        self.n_iter_ = n_iter
        return self

    def _check_params(self):
        if self.objective not in OBJECTIVES:
            raise InputError(f"objective must be one of {OBJECTIVES}; got {self.objective!r}")
        if self.seed is not None and (not isinstance(self.seed, numbers.Integral)
                                      or isinstance(self.seed, bool) or self.seed < 0):
            raise InputError(f"seed must be a non-negative int or None; got {self.seed!r}")
        for name in ("maxiter", "popsize"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an int >= 1; got {value!r}")
        if not isinstance(self.tol, numbers.Real) or not math.isfinite(self.tol) or self.tol < 0:
            raise InputError(f"tol must be a finite number >= 0; got {self.tol!r}")

    # ------------------------------------------------------------------ prediction

    def predict_proba(self, probas) -> np.ndarray:
        """The weighted average of the members' probabilities, shape (n_samples, n_classes)."""
        check_is_fitted(self, "weights_")
        probas = _check_probas(probas)
        n_members, _, n_classes = probas.shape
        if n_members != self.n_members_:
            raise ValueError(f"probas must stack the {self.n_members_} members the ensemble was "
                             f"fitted on (axis 0); got {n_members}")
        if n_classes != len(self.classes_):
            raise ValueError(f"probas must have the {len(self.classes_)} classes the ensemble was "
                             f"fitted on (last axis); got {n_classes}")
        return np.tensordot(self.weights_, probas, axes=1)

    def predict(self, probas) -> np.ndarray:
        """The class (from ``classes_``) of highest weighted-average probability."""
        proba = self.predict_proba(probas)
        return self.classes_[proba.argmax(axis=1)]

    def score(self, probas, y) -> float:
        """Accuracy of the ensemble against the true labels ``y``, values of ``classes_`` (what
        :meth:`predict` returns; class indices unless :meth:`fit` was given class names)."""
        proba = self.predict_proba(probas)
        return _score(proba, _encode_labels(y, self.classes_, proba.shape[0]), "accuracy")

    # ------------------------------------------------------------------ honest estimate

    def cross_validated_accuracy(self, probas, y, n_splits: int = 5, seed: int = 0) -> dict:
        """Accuracy of *this configuration* on data its weights never saw.

        ``probas``/``y`` (typically the validation split) are cut into ``n_splits``
        stratified folds (shuffled with ``seed``); for each fold a fresh ensemble with
        these parameters is fitted on the other folds and scored on it. ``self`` is not
        changed and need not be fitted.

        Returns ``{"mean", "std", "scores" (one per fold), "weights" (per fold),
        "fold_sizes", "n_splits", "seed"}``.
        """
        self._check_params()
        probas = _check_probas(probas)
        n_members, n_samples, n_classes = probas.shape
        y = _check_y(y, n_samples, n_classes)
        if not isinstance(n_splits, numbers.Integral) or isinstance(n_splits, bool) \
                or not 2 <= n_splits <= n_samples:
            raise InputError(f"n_splits must be an int in [2, n_samples={n_samples}]; "
                             f"got {n_splits!r}")
        if n_members == 1:
            warnings.warn("WeightedEnsemble with a single member: the ensemble is that member; "
                          "its cross-validated accuracy is that member's accuracy",
                          UserWarning, stacklevel=2)
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        scores, weights, sizes = [], [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="WeightedEnsemble fitted on a single member")
            for train, held_out in folds.split(np.zeros(n_samples), y):
                member = clone(self).fit(probas[:, train], y[train])
                scores.append(member.score(probas[:, held_out], y[held_out]))
                weights.append(member.weights_.tolist())
                sizes.append(int(len(held_out)))
        return {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
                "scores": [float(s) for s in scores], "weights": weights, "fold_sizes": sizes,
                "n_splits": int(n_splits), "seed": seed}

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict:
        """A plain JSON-able dict of the fitted ensemble (no pickle needed)."""
        check_is_fitted(self, "weights_")
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "objective": self.objective,
            "seed": None if self.seed is None else int(self.seed),
            "maxiter": int(self.maxiter),
            "popsize": int(self.popsize),
            "tol": float(self.tol),
            "weights": [float(w) for w in self.weights_],
            "classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes_],
            "n_members": int(self.n_members_),
            "score": float(self.score_),
            "n_iter": int(self.n_iter_),
        }

    @classmethod
    def from_json(cls, data) -> "WeightedEnsemble":
        """Rebuild a fitted ensemble from :meth:`to_json`'s dict (extra keys are ignored)."""
        if not isinstance(data, dict):
            raise InputError(f"data must be the dict from WeightedEnsemble.to_json(); "
                             f"got {type(data).__name__}")
        if data.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise InputError(f"data['format'] must be {JSON_FORMAT!r}; got {data.get('format')!r}")
        missing = [key for key in ("objective", "weights", "classes") if key not in data]
        if missing:
            raise InputError(f"data is missing the key(s) {missing} of WeightedEnsemble.to_json()")
        params = {key: data[key] for key in ("objective", "seed", "maxiter", "popsize", "tol")
                  if key in data}
        ensemble = cls(**params)
        ensemble._check_params()
        try:
            weights = np.asarray(data["weights"], dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"data['weights'] must be a list of numbers; got {data['weights']!r}") from None
        if weights.ndim != 1 or weights.size == 0 or not np.all(np.isfinite(weights)) \
                or (weights < 0).any() or abs(weights.sum() - 1) > 1e-6:
            raise InputError("data['weights'] must be a non-empty list of non-negative numbers "
                             f"summing to 1; got {data['weights']!r}")
        classes = np.asarray(data["classes"])
        if classes.ndim != 1 or len(classes) < 2:
            raise InputError(f"data['classes'] must list at least 2 classes; got {data['classes']!r}")
        if "n_members" in data and data["n_members"] != len(weights):
            raise InputError(f"data['n_members'] ({data['n_members']}) must equal the number of "
                             f"weights ({len(weights)})")
        ensemble.weights_ = weights
        ensemble.classes_ = classes
        ensemble.n_members_ = int(len(weights))
        score, n_iter = data.get("score"), data.get("n_iter", 0)
        if score is not None and (isinstance(score, bool) or not isinstance(score, numbers.Real)):
            raise InputError(f"data['score'] must be a number or null; got {score!r}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral) or n_iter < 0:
            raise InputError(f"data['n_iter'] must be an int >= 0; got {n_iter!r}")
        ensemble.score_ = float(score) if score is not None else math.nan
        ensemble.n_iter_ = int(n_iter)
        return ensemble


# ---------------------------------------------------------------------- helpers

class _Objective:
    """The function differential evolution minimises; vectorised over candidate weights."""

    def __init__(self, probas: np.ndarray, y: np.ndarray, objective: str):
        n_members, n_samples, n_classes = probas.shape
        self.objective = objective
        self.n_samples = n_samples
        self.n_classes = n_classes
        # probability each member gives the true class: all the log-loss needs
        self.p_true = probas[:, np.arange(n_samples), y]  # (n_members, n_samples)
        self.flat = probas.reshape(n_members, n_samples * n_classes)
        self.y = y
        self.tie_break = 1.0 / (n_samples * (1.0 + _MAX_LOG_LOSS))

    def _log_loss(self, weights: np.ndarray) -> np.ndarray:
        p_true = np.clip(weights @ self.p_true, LOG_LOSS_EPS, 1.0)  # (S, n_samples)
        return -np.log(p_true).mean(axis=1)

    def _accuracy(self, weights: np.ndarray) -> np.ndarray:
        n_candidates = weights.shape[0]
        chunk = max(1, _MAX_CHUNK_FLOATS // (self.n_samples * self.n_classes))
        accuracy = np.empty(n_candidates)
        for start in range(0, n_candidates, chunk):
            w = weights[start:start + chunk]
            averaged = (w @ self.flat).reshape(len(w), self.n_samples, self.n_classes)
            accuracy[start:start + chunk] = (averaged.argmax(axis=2) == self.y).mean(axis=1)
        return accuracy

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x``: (n_members,) or (n_members, S) raw weights; returns energies (S,)."""
        weights = _normalise(np.asarray(x, dtype=float).reshape(len(self.p_true), -1).T)
        if self.objective == "log-loss":
            energy = self._log_loss(weights)
        else:
            energy = -self._accuracy(weights) + self.tie_break * self._log_loss(weights)
        return energy if np.ndim(x) > 1 else energy[0]



def _score(proba: np.ndarray, y: np.ndarray, objective: str) -> float:
    """The objective's value for averaged probabilities ``proba`` (n_samples, n_classes),
    computed as :meth:`WeightedEnsemble.predict_proba` and ``predict`` see them."""
    if objective == "log-loss":
        p_true = np.clip(proba[np.arange(len(y)), y], LOG_LOSS_EPS, 1.0)
        return float(-np.mean(np.log(p_true)))
    return float(np.mean(proba.argmax(axis=1) == y))


def _normalise(weights: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to sum to 1; an all-zero row becomes equal weights."""
    weights = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    sums = weights.sum(axis=-1, keepdims=True)
    equal = np.full_like(weights, 1.0 / weights.shape[-1])
    return np.where(sums > 0, weights / np.where(sums > 0, sums, 1.0), equal)


def _initial_population(n_members: int, popsize: int, rng: np.random.Generator) -> np.ndarray:
    """Equal weights, each member alone, then Latin-hypercube points in [0, 1]^n_members."""
    size = max(5, popsize * n_members)
    fixed = np.vstack([np.full((1, n_members), 0.5), np.eye(n_members)])[:size]
    n_random = size - len(fixed)
    # Latin hypercube: each column a random permutation of strata, jittered inside them
    strata = np.argsort(rng.random((n_random, n_members)), axis=0)
    random = (strata + rng.random((n_random, n_members))) / max(n_random, 1)
    return np.vstack([fixed, random])


def _check_probas(probas) -> np.ndarray:
    try:
        probas = np.asarray(probas, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("probas must be a numeric array of shape (n_members, n_samples, "
                         "n_classes)") from None
    if probas.ndim != 3:
        raise ValueError("probas must have shape (n_members, n_samples, n_classes); got an array "
                         f"of shape {probas.shape}")
    n_members, n_samples, n_classes = probas.shape
    if n_members == 0:
        raise ValueError("probas must stack at least one member (axis 0); got 0")
    if n_samples == 0:
        raise ValueError("probas must hold at least one sample (axis 1); got 0")
    if n_classes < 2:
        raise ValueError(f"probas must have at least 2 classes (last axis); got {n_classes}")
    for m in range(n_members):
        check_probabilities(probas[m], f"probas of member {m}", item="sample")
    return probas


def _encode_labels(y, classes: np.ndarray, n_samples: int) -> np.ndarray:
    """``y`` (labels, values of ``classes``) as class indices; class indices pass as they are
    when ``classes`` is ``arange(n_classes)``."""
    if np.issubdtype(classes.dtype, np.integer) and np.array_equal(classes, np.arange(len(classes))):
        return _check_y(y, n_samples, len(classes))
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per sample); got shape {y.shape}")
    index = {label: i for i, label in enumerate(classes.tolist())}
    unknown = [label for label in dict.fromkeys(y.tolist()) if label not in index]
    if unknown:
        raise ValueError(f"y must hold labels of classes {classes.tolist()}; got {unknown[:5]}")
    return _check_y(np.array([index[label] for label in y.tolist()], dtype=np.int64), n_samples, len(classes))


def _check_y(y, n_samples: int, n_classes: int) -> np.ndarray:
    y = check_class_indices(y, n_classes, "y")
    if len(y) != n_samples:
        raise ValueError(f"y must have one label per sample of probas ({n_samples}); got {len(y)}")
    return y
