"""Tests of the pair-noise diagnosis of the scheduler-fidelity benchmark (`benchmarks.fidelity_noise`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fidelity_noise import STATE_COLUMNS, gap_split_s, matched_steps, pair_diagnosis, session_spread


def _steps(states: np.ndarray) -> np.ndarray:
    """Logged step rows (10 columns) carrying the given scheduler states; times are irrelevant here."""
    rows = np.zeros((len(states), 10))
    rows[:, STATE_COLUMNS] = states
    return rows


def _random_states(rng: np.random.Generator, n: int) -> np.ndarray:
    decode = rng.integers(0, 17, n)
    return np.column_stack([decode + rng.integers(0, 2, n), rng.integers(0, 20, n), rng.integers(0, 40, n),
                            decode, decode * rng.integers(20, 700, n), rng.integers(0, 2, n) * rng.integers(1, 512, n)])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), head_a=st.integers(0, 30), head_b=st.integers(0, 30),
       common=st.integers(1, 200), tail=st.integers(0, 30))
def test_identical_state_steps_carry_no_model_gap(seed, head_a, head_b, common, tail):
    """Runs that share a stretch of states: the stretch is matched, every matched pair has one state, and any step
    model (a function of the state) gives zero gap on the matched steps while the split adds up to the total."""
    rng = np.random.default_rng(seed)
    shared = _random_states(rng, common)
    a = _steps(np.vstack([_random_states(rng, head_a), shared, _random_states(rng, tail)]))
    b = _steps(np.vstack([_random_states(rng, head_b), shared]))
    ia, ib = matched_steps(a, b)
    assert len(ia) == len(ib) >= common
    assert np.array_equal(a[ia][:, STATE_COLUMNS], b[ib][:, STATE_COLUMNS])
    assert np.all(np.diff(ia) > 0) and np.all(np.diff(ib) > 0)
    w = rng.uniform(0, 1e-4, len(STATE_COLUMNS))

    def model_s(steps):  # an arbitrary (non-linear) function of the state
        s = steps[:, STATE_COLUMNS]
        return 1e-3 + s @ w + 1e-6 * np.sqrt(s[:, 4]) * s[:, 3]

    split = gap_split_s(model_s(a), model_s(b), ia, ib)
    assert split["identical_steps_s"] == pytest.approx(0.0, abs=1e-12)
    assert split["total_s"] == pytest.approx(model_s(b).sum() - model_s(a).sum(), rel=1e-9, abs=1e-12)


def test_gap_on_identical_steps_is_measured_noise():
    """A real run b slower by 10 us on every step: its gap sits on the identical-state steps, the model's does not."""
    rng = np.random.default_rng(0)
    shared = _random_states(rng, 100)
    a = _steps(np.vstack([_random_states(rng, 5), shared]))
    b = _steps(np.vstack([_random_states(rng, 3), shared]))
    model_a, model_b = np.full(len(a), 2e-3), np.full(len(b), 2e-3)
    d = pair_diagnosis(a, b, model_a, model_b + 10e-6, model_a, model_b)
    assert d["identical_steps"] >= 100
    assert d["real_gap_s"]["identical_steps_s"] == pytest.approx(10e-6 * d["identical_steps"])
    assert d["sim_gap_s"]["identical_steps_s"] == pytest.approx(0.0)
    assert d["sim_gap_s"]["total_s"] == pytest.approx(-2 * 2e-3)


def test_session_spread():
    r = session_spread([0.02, -0.03, 0.05], 0.016)
    assert r["within_noise"] is True and r["sessions_with_pooled_sign"] == 2  # the sign flips between sessions
    r = session_spread([0.01, 0.5, 0.02], 0.03)  # one wild session, but every session agrees on the sign
    assert r["within_noise"] is False and r["sign_flips_between_sessions"] is False and r["half_range"] > 0.03
    assert session_spread([0.05], 0.05)["within_noise"] is None
