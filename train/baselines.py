"""Baselines in the same harness as the residual model: physics only, descriptor-only XGBoost, random forest,
k-nearest neighbours and a small torch MLP (the last three learn the same log residual on the same features)."""

from __future__ import annotations

import pandas as pd

from train.descriptors import DESCRIPTOR_PREFIX, descriptor_frame
from train.frames import physics
from train.learners import ForestLearner, KNNLearner, MLPLearner, XGBLearner
from train.residual import FrameModel, ResidualModel


class PhysicsOnly(FrameModel):
    """The physics answer as the prediction; intervals from the spread of its own log errors."""

    family = "physics"

    def make_learner(self, n_features: int, seed: int):
        return None


class DescriptorXGB(FrameModel):
    """XGBoost on raw descriptors (config numbers, catalog facts) predicting log(measured): no physics at all."""

    family = "descriptor-xgb"
    residual = False
    feature_prefix = DESCRIPTOR_PREFIX
    categorical = ("engine", "source", "weight_dtype", "kv_dtype", "phase", "op")  # none from physics
    defaults = {k: v for k, v in ResidualModel.defaults.items() if k != "monotone_phys"}

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        framed = physics(frame)  # physics columns are kept only so every family is scored on the same rows
        if any(c.startswith(DESCRIPTOR_PREFIX) for c in framed.columns):
            return framed
        return descriptor_frame(framed)

    def make_learner(self, n_features: int, seed: int):
        return XGBLearner(seed=seed, **self.hyper)


class ResidualForest(FrameModel):
    """Random forest on the physics features predicting log(measured / physics)."""

    family = "residual-rf"
    defaults = {"n_estimators": 200, "min_samples_leaf": 2, "max_features": 0.5}

    def make_learner(self, n_features: int, seed: int):
        return ForestLearner(seed=seed, **self.hyper)


class ResidualKNN(FrameModel):
    """Distance-weighted k-nearest neighbours on standardised physics features, predicting the log residual."""

    family = "residual-knn"
    defaults = {"n_neighbors": 5}

    def make_learner(self, n_features: int, seed: int):
        return KNNLearner(seed=seed, **self.hyper)


class ResidualMLP(FrameModel):
    """A small torch MLP on standardised physics features, predicting the log residual."""

    family = "residual-mlp"
    defaults = {"hidden": 64, "epochs": 300, "learning_rate": 3e-3, "weight_decay": 1e-4, "batch_size": 512,
                "max_steps": 3000}

    def make_learner(self, n_features: int, seed: int):
        return MLPLearner(seed=seed, **self.hyper)


FAMILIES: dict[str, type[FrameModel]] = {
    cls.family: cls for cls in (ResidualModel, PhysicsOnly, DescriptorXGB, ResidualForest, ResidualKNN, ResidualMLP)
}
