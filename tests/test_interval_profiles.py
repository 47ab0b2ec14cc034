"""Interval terms, looked up per row profile (stratum x novelty), equal the terms worked out row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictor import Predictor
from train.intervals import NOVELTY_DIMS


def _rows(cal, n: int, seed: int) -> pd.DataFrame:
    """Rows mixing seen and unseen models, GPUs and layouts, over seen, query and unknown sources."""
    rng = np.random.default_rng(seed)
    seen = {dim: sorted(cal.seen.get(dim, ()), key=str)[:3] for dim in NOVELTY_DIMS}
    pick = lambda vals: [vals[i] for i in rng.integers(0, len(vals), n)]  # noqa: E731
    strata = sorted(cal.seen_strata)[:4] + [None, "", "prediction", "a-new-data-set"]
    return pd.DataFrame({
        "model": pick(seen["model"] + ["no-such-model"]), "gpu": pick(seen["gpu"] + ["no-such-gpu"]),
        "tp": pick([1, 2, 4, 8, 3]), "dp": pick([1, 2, 5]), "source": pick(strata)})


def test_profile_lookup_equals_row_by_row_terms():
    learned = Predictor.load().learned
    if learned is None:
        pytest.skip("no bundled learned model")
    for target, cal in learned.calibration_.items():
        if not cal.offsets:
            continue
        for seed in range(3):
            rows = _rows(cal, 40 if seed else 400, seed)  # a few rows, and enough to factorise
            looked_up = cal.terms(rows, {})
            worked_out = cal._row_terms(rows, {})
            for a, b in zip(looked_up, worked_out):
                np.testing.assert_array_equal(a, b, err_msg=target)
