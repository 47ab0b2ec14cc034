"""Small-batch prediction without XGBoost's per-call overhead: the trees of every target of a kind, flattened
into numpy arrays and walked together in one vectorised pass (exactly XGBoost's decisions, in float32).

For a handful of rows XGBoost's Python wrapper costs more than the trees themselves; this path answers a
single row for all targets at once in a fraction of that. Large batches still go to `inplace_predict`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np


@dataclass
class CompiledForest:
    """All trees of several boosters over one extended feature matrix: base features, then one column per booster
    for the feature that differs between them (the log physics answer of each target)."""

    feature: np.ndarray  # int64 per node: column of the extended matrix
    threshold: np.ndarray  # float32 per node: go left when x < threshold (leaves: the leaf value)
    left: np.ndarray  # int64 per node: absolute index of the left child (-1 at leaves)
    right: np.ndarray
    default_left: np.ndarray  # bool per node: where a missing value goes
    roots: np.ndarray  # int64 per tree: absolute index of its root
    tree_output: np.ndarray  # int64 per tree: which booster (output column) it adds to
    base_score: np.ndarray  # float64 per booster
    max_depth: int

    @classmethod
    def from_boosters(cls, boosters: list, n_base: int, per_booster_column: bool) -> "CompiledForest":
        """Flatten `boosters`; with `per_booster_column`, booster j's last feature reads extended column n_base + j."""
        feature, threshold, left, right, default_left, roots, outputs, base = [], [], [], [], [], [], [], []
        offset, depth = 0, 1
        for j, booster in enumerate(boosters):
            model = json.loads(booster.save_raw("json"))
            base.append(float(str(model["learner"]["learner_model_param"]["base_score"]).strip("[]")))
            for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
                lc = np.asarray(tree["left_children"], dtype=np.int64)
                rc = np.asarray(tree["right_children"], dtype=np.int64)
                si = np.asarray(tree["split_indices"], dtype=np.int64)
                if per_booster_column:
                    si = np.where(si == n_base, n_base + j, si)  # the booster's own last column
                feature.append(si)
                threshold.append(np.asarray(tree["split_conditions"], dtype=np.float32))
                left.append(np.where(lc >= 0, lc + offset, -1))
                right.append(np.where(rc >= 0, rc + offset, -1))
                default_left.append(np.asarray(tree["default_left"], dtype=bool))
                roots.append(offset)
                outputs.append(j)
                depth = max(depth, _depth(lc, rc))
                offset += len(lc)
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
        return cls(cat(feature, np.int64), cat(threshold, np.float32), cat(left, np.int64), cat(right, np.int64),
                   cat(default_left, bool), np.asarray(roots, dtype=np.int64), np.asarray(outputs, dtype=np.int64),
                   np.asarray(base, dtype=float), depth)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(rows, boosters) margins for the extended float32 matrix `X`."""
        n = len(X)
        step, missing = self._walk
        has_nan = bool(np.isnan(X).any())
        # node index per (row, tree); one row walks 1-d arrays (cheaper indexing)
        node = self.roots if n == 1 else np.broadcast_to(self.roots, (n, len(self.roots)))
        x_of = (lambda f: X[0][f]) if n == 1 else (lambda f, rows=np.arange(n)[:, None]: X[rows, f])
        for _ in range(self.max_depth):  # leaves lead to themselves, so every tree may take max_depth steps
            x = x_of(self.feature[node])
            nxt = step[2 * node + (x < self.threshold[node])]  # right child at 2i, left at 2i + 1
            node = np.where(np.isnan(x), missing[node], nxt) if has_nan else nxt
        node = node.reshape(n, len(self.roots))
        leaves = self.threshold[node].astype(float)
        if self.contiguous:  # each booster's trees side by side (as `from_boosters` lays them out): one reduction
            return self.base_score + np.add.reduceat(leaves, self.first_tree, axis=1)
        out = np.tile(self.base_score, (n, 1))
        for j in range(len(self.base_score)):
            out[:, j] += leaves[:, self.tree_output == j].sum(axis=1)
        return out

    @functools.cached_property
    def _walk(self) -> tuple[np.ndarray, np.ndarray]:
        """(children of every node i interleaved: right at 2i, left at 2i + 1; the child a missing value takes),
        leaves leading to themselves."""
        leaf = self.left < 0
        own = np.arange(len(self.left))
        left = np.where(leaf, own, self.left)
        right = np.where(leaf, own, self.right)
        return np.stack([right, left], axis=1).ravel(), np.where(self.default_left, left, right)

    @functools.cached_property
    def first_tree(self) -> np.ndarray:
        """Index of each booster's first tree (with `contiguous`)."""
        return np.searchsorted(self.tree_output, np.arange(len(self.base_score)))

    @functools.cached_property
    def contiguous(self) -> bool:
        """True when booster j's trees form one block, in booster order, and every booster has trees."""
        t = self.tree_output
        return bool(len(t) and np.all(np.diff(t) >= 0) and np.array_equal(np.unique(t), np.arange(len(self.base_score))))


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    """Depth (edges from the root to the deepest leaf) of one tree given child arrays."""
    depth = np.zeros(len(left), dtype=np.int64)
    for i in range(len(left)):  # children always follow their parent in XGBoost's node order
        for c in (left[i], right[i]):
            if c >= 0:
                depth[c] = depth[i] + 1
    return int(depth.max()) if len(depth) else 0
