"""How much of a real makespan gap between two `max_num_seqs` settings any step-time model could reproduce.

The scheduler-fidelity benchmark runs each setting as a closed batch; its schedule is reproduced step by step by the
simulator, so two settings' runs can be compared step by step. Long stretches of the two runs are in the *same*
scheduler state (same running/waiting counts, KV blocks, decoding sequences, decode KV tokens and prefill tokens):
after the settings' early differences die out, the same requests decode the same tokens. A step-time model is a
function of that state, so it prices those steps identically in both runs: the real gap they carry is measurement
noise (the machine's contention during each run, or history the state does not record) that no step model can
reproduce. Only the differing steps can carry a model-explainable gap. Per-session floors show how far the pair's
real gap moves between sessions of repeats; a pair whose gap changes sign between sessions is ordered by noise (the
session), not by the engine.

Pure functions of logged step arrays (rows as `benchmarks.scheduler_fidelity` logs them).
"""

from __future__ import annotations

import difflib

import numpy as np

# step-log columns (benchmarks.scheduler_fidelity: T_START, T_END, CPU_START, RUNNING, WAITING, KV_BLOCKS,
# DECODE_SEQS, DECODE_KV, PREFILL, PREEMPTED)
STATE_COLUMNS = (3, 4, 5, 6, 7, 8)  # running, waiting, KV blocks, decode seqs, decode KV tokens, prefill tokens


def matched_steps(steps_a: np.ndarray, steps_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into run a, into run b) of the steps the two runs take in identical scheduler state, in order.

    The matching is the longest common subsequence blocks of the two state sequences (`difflib`, no junk
    heuristic), so each matched pair of steps sits in aligned stretches of the two schedules."""
    a = np.asarray(steps_a, dtype=np.float64)[:, STATE_COLUMNS].astype(np.int64)
    b = np.asarray(steps_b, dtype=np.float64)[:, STATE_COLUMNS].astype(np.int64)
    sm = difflib.SequenceMatcher(None, list(map(tuple, a)), list(map(tuple, b)), autojunk=False)
    blocks = [m for m in sm.get_matching_blocks() if m.size > 0]
    if not blocks:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ia = np.concatenate([np.arange(m.a, m.a + m.size) for m in blocks])
    ib = np.concatenate([np.arange(m.b, m.b + m.size) for m in blocks])
    return ia, ib


def gap_split_s(dur_a_s: np.ndarray, dur_b_s: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> dict:
    """Makespan gap (b - a, seconds) split into the matched (identical-state) steps and the others."""
    dur_a_s, dur_b_s = np.asarray(dur_a_s, float), np.asarray(dur_b_s, float)
    rest_a = np.ones(len(dur_a_s), bool)
    rest_a[ia] = False
    rest_b = np.ones(len(dur_b_s), bool)
    rest_b[ib] = False
    same = float(dur_b_s[ib].sum() - dur_a_s[ia].sum())
    other = float(dur_b_s[rest_b].sum() - dur_a_s[rest_a].sum())
    return {"total_s": same + other, "identical_steps_s": same, "differing_steps_s": other}


def session_spread(session_gaps: list[float], pooled_gap: float) -> dict:
    """Whether the sign of a pooled relative gap is reproducible (sessions: gaps from each session's own floor).
    Within noise when the sessions disagree on the sign: which setting is faster then depends on the session."""
    g = np.asarray(session_gaps, dtype=float)
    if len(g) < 2:
        return {"sessions": int(len(g)), "session_gaps": g.tolist(), "within_noise": None}
    flips = bool((g > 0).any() and (g < 0).any())
    return {"sessions": int(len(g)), "session_gaps": [round(float(x), 4) for x in g],
            "half_range": float((g.max() - g.min()) / 2),
            "sessions_with_pooled_sign": int((np.sign(g) == np.sign(pooled_gap)).sum()),
            "sign_flips_between_sessions": flips, "within_noise": flips}


def pair_diagnosis(real_a: np.ndarray, real_b: np.ndarray, floor_a_s: np.ndarray, floor_b_s: np.ndarray,
                   sim_a_s: np.ndarray, sim_b_s: np.ndarray) -> dict:
    """The real (per-step floor durations) and simulated (per-step durations on the same schedule) gap of one pair
    of runs, split into identical-state and differing steps. `real_a`/`real_b` are the logged step arrays."""
    ia, ib = matched_steps(real_a, real_b)
    real = gap_split_s(floor_a_s, floor_b_s, ia, ib)
    sim = gap_split_s(sim_a_s, sim_b_s, ia, ib)
    base = float(np.sum(floor_a_s))
    return {"identical_steps": int(len(ia)), "steps": [int(len(real_a)), int(len(real_b))],
            "real_gap_s": real, "sim_gap_s": sim, "real_gap": real["total_s"] / base,
            "real_identical_steps_share": real["identical_steps_s"] / real["total_s"] if real["total_s"] else None,
            "differing_steps_agree": bool(np.sign(real["differing_steps_s"]) == np.sign(sim["differing_steps_s"]))}
