"""Regressors on a feature matrix, one per target: XGBoost (alone, or over a ridge trend), random forest, k-nearest
neighbours, a torch MLP, a Gaussian process; and the (weighted) mean of several.

Each has `fit(X, y) -> self` and `predict(X) -> ndarray`, is deterministic for its seed and pickles compactly.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np


def default_threads(n_rows: int | None = None) -> int:
    """Threads a learner may use: one for small problems (threads only contend there), else every core up to 8.

    LAYOUTCAST_THREADS overrides.
    """
    if "LAYOUTCAST_THREADS" in os.environ:
        return max(1, int(os.environ["LAYOUTCAST_THREADS"]))
    if n_rows is not None and n_rows < 50_000:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass
class XGBLearner:
    """Gradient-boosted trees (XGBoost, hist); optional monotone constraint per feature column."""

    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.05
    min_child_weight: float = 1.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    reg_alpha: float = 0.0
    monotone: tuple[int, ...] | None = None
    seed: int = 0
    _booster: object = field(default=None, repr=False)
    _single: object = field(default=None, repr=False)  # single-threaded copy for small inputs (made on demand)

    def params(self, n_rows: int | None = None) -> dict:
        p = {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "max_depth": int(self.max_depth),
            "eta": float(self.learning_rate),
            "min_child_weight": float(self.min_child_weight),
            "subsample": float(self.subsample),
            "colsample_bytree": float(self.colsample_bytree),
            "lambda": float(self.reg_lambda),
            "alpha": float(self.reg_alpha),
            "seed": int(self.seed),
            "nthread": default_threads(n_rows),
            "verbosity": 0,
        }
        if self.monotone and any(self.monotone):
            p["monotone_constraints"] = "(" + ",".join(str(int(m)) for m in self.monotone) + ")"
        return p

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "XGBLearner":
        import xgboost as xgb

        d = xgb.DMatrix(X, label=y, weight=w, missing=np.nan)
        self._booster = xgb.train(self.params(len(y)), d, num_boost_round=int(self.n_estimators))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions; small inputs run on a single-threaded copy of the booster (threads only add latency)."""
        booster = self._booster
        if len(X) < 20_000 and default_threads(len(X)) == 1:
            if self._single is None:
                self._single = self._copy(1)
            booster = self._single
        return np.asarray(booster.inplace_predict(X, missing=np.nan), dtype=float).reshape(-1)

    def _copy(self, nthread: int):
        import xgboost as xgb

        booster = xgb.Booster(params={"nthread": nthread})
        booster.load_model(bytearray(self._booster.save_raw("ubj")))
        return booster

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_single"] = None
        if self._booster is not None:
            state["_booster"] = bytes(self._booster.save_raw("ubj"))
        return state

    def __setstate__(self, state):
        raw = state.get("_booster")
        if isinstance(raw, (bytes, bytearray)):
            import xgboost as xgb

            booster = xgb.Booster(params={"nthread": default_threads()})
            booster.load_model(bytearray(raw))
            state["_booster"] = booster
            state["_single"] = None
        self.__dict__.update(state)


Z_CLIP = 3.0  # RidgeBoostLearner: a standardised value beyond this many deviations counts as this many


@dataclass
class RidgeBoostLearner:
    """A ridge regression on the standardised features, then boosted trees (`XGBLearner`) on what it leaves.

    With tens of rows, trees cut a smooth trend (an error that grows with the load, one offset per model) into a few
    steps and miss it between them; the linear part carries such trends across the rows, the trees keep what is not
    linear. Missing values count as the column mean in the linear part (the trees see them as they are), standardised
    values are clipped to +-Z_CLIP (no wild extrapolation), and a trend against a monotone constraint of the trees is
    dropped."""

    alpha: float = 3.0
    trees: XGBLearner = field(default_factory=XGBLearner)

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "RidgeBoostLearner":
        finite = np.where(np.isfinite(X), X, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns
            self._mean = np.nan_to_num(np.nanmean(finite, axis=0)) if len(X) else np.zeros(X.shape[1])
            sd = np.nanstd(finite, axis=0) if len(X) else np.ones(X.shape[1])
        self._scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        Z = self._standard(X)
        w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
        self._intercept = float(np.average(y, weights=w)) if len(y) else 0.0
        gram = Z.T @ (Z * w[:, None]) + self.alpha * np.eye(Z.shape[1])
        coef = np.linalg.solve(gram, Z.T @ (w * (y - self._intercept)))
        sign = np.zeros(len(coef)) if not self.trees.monotone else np.asarray(self.trees.monotone, dtype=float)
        self._coef = np.where(sign * coef < 0, 0.0, coef)  # the trees' monotone constraints bind the trend too
        self.trees.fit(X, y - self._linear(X), w)
        return self

    def _standard(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=float) - self._mean) / self._scale
        return np.clip(np.where(np.isfinite(Z), Z, 0.0), -Z_CLIP, Z_CLIP)

    def _linear(self, X: np.ndarray) -> np.ndarray:
        return self._intercept + self._standard(X) @ self._coef

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._linear(X) + self.trees.predict(X)


@dataclass
class AveragedLearner:
    """The mean prediction of several learners, each fitted on the same rows (`weights`: a weighted mean)."""

    members: tuple = ()
    weights: tuple[float, ...] | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "AveragedLearner":
        for m in self.members:
            m.fit(X, y, w)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.average([m.predict(X) for m in self.members], axis=0, weights=self.weights)


@dataclass
class ForestLearner:
    """scikit-learn random forest (missing values handled natively)."""

    n_estimators: int = 200
    min_samples_leaf: int = 2
    max_features: float = 0.5
    seed: int = 0
    _model: object = field(default=None, repr=False)

    def fit(self, X, y, w=None):
        from sklearn.ensemble import RandomForestRegressor

        self._model = RandomForestRegressor(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            random_state=self.seed, n_jobs=default_threads(len(y)),
        ).fit(X, y, sample_weight=w)
        return self

    def predict(self, X):
        return self._model.predict(X)


class _Standardizer:
    """Median imputation and standard scaling learned on training rows (for distance- and gradient-based learners)."""

    def __init__(self, X: np.ndarray):
        X = np.asarray(X, dtype=float)
        finite = np.where(np.isfinite(X), X, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: imputed with 0 below
            med = np.nanmedian(finite, axis=0) if len(X) else np.zeros(X.shape[1])
        self.median = np.where(np.isfinite(med), med, 0.0)
        Z = self._impute(X)
        self.mean = Z.mean(axis=0)
        sd = Z.std(axis=0)
        self.scale = np.where(sd > 0, sd, 1.0)

    def _impute(self, X):
        X = np.asarray(X, dtype=float)
        return np.where(np.isfinite(X), X, self.median)

    def __call__(self, X):
        return (self._impute(X) - self.mean) / self.scale


@dataclass
class KNNLearner:
    """k-nearest neighbours (distance-weighted) on standardised, median-imputed features."""

    n_neighbors: int = 5
    seed: int = 0
    _std: object = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)

    def fit(self, X, y, w=None):
        from sklearn.neighbors import KNeighborsRegressor

        self._std = _Standardizer(X)
        k = max(1, min(self.n_neighbors, len(y)))
        self._model = KNeighborsRegressor(n_neighbors=k, weights="distance").fit(self._std(X), y)
        return self

    def predict(self, X):
        return self._model.predict(self._std(X))


@dataclass
class MLPLearner:
    """A small torch MLP (two hidden ReLU layers) trained with Adam; inference in numpy (no torch needed)."""

    hidden: int = 64
    epochs: int = 300  # at most; large data sets get fewer epochs so a fit stays near `max_steps` updates
    max_steps: int = 3000
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    seed: int = 0
    _std: object = field(default=None, repr=False)
    _weights: list = field(default_factory=list, repr=False)
    _y_mean: float = 0.0
    _y_scale: float = 1.0

    def fit(self, X, y, w=None):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(default_threads(len(y)))  # small nets: extra threads only contend
        try:
            return self._fit(torch, X, y)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, torch, X, y):
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        self._std = _Standardizer(X)
        Xt = torch.tensor(np.clip(self._std(X), -10, 10), dtype=torch.float32)
        y = np.asarray(y, dtype=float)
        self._y_mean, self._y_scale = float(y.mean()), float(y.std() or 1.0)
        yt = torch.tensor((y - self._y_mean) / self._y_scale, dtype=torch.float32).reshape(-1, 1)
        net = torch.nn.Sequential(
            torch.nn.Linear(Xt.shape[1], self.hidden), torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, self.hidden), torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, 1),
        )
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        n = len(Xt)
        batches = max(1, -(-n // self.batch_size))
        for _ in range(max(10, min(self.epochs, self.max_steps // batches))):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, self.batch_size):
                idx = perm[i : i + self.batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        self._weights = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                         for m in net if isinstance(m, torch.nn.Linear)]
        return self

    def predict(self, X):
        h = np.clip(self._std(X), -10, 10)
        for i, (W, b) in enumerate(self._weights):
            h = h @ W + b
            if i < len(self._weights) - 1:
                h = np.maximum(h, 0.0)
        return h.reshape(-1) * self._y_scale + self._y_mean


GP_CLIP = 5.0  # GaussianProcessLearner: a standardised value beyond this many deviations counts as this many


@dataclass
class GaussianProcessLearner:
    """A Gaussian process (Matern 5/2 with one length scale per feature, plus white noise) on standardised,
    median-imputed features.

    With tens to hundreds of rows a smooth correction is better carried between the measured rows by a kernel than cut
    into tree steps. The kernel hyperparameters are found by marginal likelihood (L-BFGS, at most `max_iter` steps);
    `frozen(seed)` gives an unfitted copy that keeps them (cross-validation folds refit the weights only, not the
    kernel). Constant columns are dropped; more than `max_rows` rows: a random subset of them (the fit is cubic in the
    rows, and its pickle quadratic). Row weights are ignored (one noise level for all rows)."""

    nu: float = 2.5
    max_iter: int = 60
    max_rows: int = 1000
    seed: int = 0
    kernel: object = field(default=None, repr=False)  # a fixed kernel (frozen copies); None: tune one in `fit`
    kernel_: object = field(default=None, repr=False)  # the fitted kernel
    _std: object = field(default=None, repr=False)
    _keep: object = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)

    def _kernel(self, n_features: int):
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        return (ConstantKernel(0.1, (1e-4, 1e2))
                * Matern(length_scale=np.full(n_features, 3.0), length_scale_bounds=(0.05, 1e3), nu=self.nu)
                + WhiteKernel(0.01, (1e-5, 1.0)))

    def _optimizer(self, obj_func, initial_theta, bounds):
        from scipy.optimize import minimize

        res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds,
                       options={"maxiter": int(self.max_iter)})
        return res.x, res.fun

    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "GaussianProcessLearner":
        from sklearn.gaussian_process import GaussianProcessRegressor

        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if len(y) > self.max_rows:
            idx = np.random.default_rng(self.seed).choice(len(y), self.max_rows, replace=False)
            X, y = X[idx], y[idx]
        frozen = self.kernel is not None
        if not frozen:  # a frozen copy keeps the scaling and columns its kernel was tuned on
            self._std = _Standardizer(X)
            self._keep = np.flatnonzero(np.std(self._std(X), axis=0) > 0)
        Z = self._z(X)
        kernel = self.kernel if frozen else self._kernel(max(1, Z.shape[1]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bounds reached / convergence notes on small, noisy sets
            self._model = GaussianProcessRegressor(kernel, normalize_y=len(y) > 1, random_state=self.seed,
                                                   optimizer=None if frozen else self._optimizer).fit(Z, y)
        self.kernel_ = self._model.kernel_
        return self

    def _z(self, X: np.ndarray) -> np.ndarray:
        Z = self._std(X)[:, self._keep] if len(self._keep) else np.zeros((len(X), 1))
        return np.clip(Z, -GP_CLIP, GP_CLIP)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict(self._z(np.asarray(X, dtype=float)))

    def frozen(self, seed: int) -> "GaussianProcessLearner":
        """An unfitted copy with this fit's kernel, scaling and columns (folds refit the weights, not the kernel)."""
        return GaussianProcessLearner(self.nu, self.max_iter, self.max_rows, seed, kernel=self.kernel_, _std=self._std,
                                      _keep=self._keep)
