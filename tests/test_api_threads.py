"""The scheduler API: a Predictor and a Router shared by 8 threads give the answers one thread gives; the cached
single predict is sub-millisecond; the README's "Scheduler API" example runs as written."""

from __future__ import annotations

import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from predictor import Predictor
from predictor.router import Router

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
warnings.filterwarnings("ignore", category=RuntimeWarning)
CONFIGS = [dict(model=m, gpu=g, tp=tp, dp=dp, concurrency=c, workload=w, simulate=False)
           for m, g, tp, dp, c, w in [("qwen2.5-32b", "h200", 2, 4, 64, "reasoning"), ("llama-3.1-8b", "h100", 1, 8, 16, "chat"),
                                      ("llama-3.1-70b", "h200", 8, 1, 256, "chat"), ("qwen2.5-32b", "h200", 4, 2, 8, "chat"),
                                      ("mixtral-8x7b", "h100", 4, 2, 32, "reasoning"), ("llama-3.1-8b", "a100-80g", 2, 2, 128, "chat")]]


def _answers(p: Predictor, order: list[int]) -> dict[int, dict]:
    return {i: p.predict(**CONFIGS[i]).to_dict() for i in order}


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 3000
    return pd.DataFrame({"kind": "serving", "model": rng.choice(["llama-3.1-8b", "qwen2.5-32b", "mixtral-8x7b"], n),
                         "gpu": rng.choice(["h100", "h200", "a100-80g"], n), "tp": rng.choice([1, 2, 4, 8], n),
                         "dp": rng.choice([1, 2], n), "isl": rng.choice([128, 1024], n), "osl": rng.choice([256, 4096], n),
                         "concurrency": rng.choice([1, 16, 256], n)})


def test_eight_threads_get_the_answers_one_thread_gets():
    serial = Predictor()
    one = _answers(serial, list(range(len(CONFIGS))))
    frame = _frame()
    one_frame = serial.predict_frame(frame)
    shared = Predictor()  # fresh cache: threads race to fill it

    def work(k: int):
        order = list(range(len(CONFIGS)))
        order = order[k % len(order):] + order[: k % len(order)]
        got = _answers(shared, order)
        part = shared.predict_frame(frame.iloc[k * 300:(k + 1) * 300 + 500])
        return k, got, part

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(8)))
    for k, got, part in results:
        assert got == one
        cols = [c for c in part.columns if c.startswith("pred_")] + ["regime", "bottleneck"]
        expect = one_frame.iloc[k * 300:(k + 1) * 300 + 500].reset_index(drop=True)
        pd.testing.assert_frame_equal(part[cols].reset_index(drop=True), expect[cols])


@pytest.mark.skipif(not (SHARED / "gpu_probe").is_dir(), reason="../shared/data is absent (outside the workspace)")
def test_threads_share_a_learned_predictor():
    from collect.importers.gpu_probe import import_gpu_probe
    from train.frames import physics
    from train.residual import ResidualModel

    df, _ = import_gpu_probe(SHARED / "gpu_probe")
    steps = physics(df[df["kind"] == "step"].reset_index(drop=True))
    learned = ResidualModel(seed=0, n_estimators=20, inner_folds=2).fit(steps)
    p = Predictor(learned=learned)
    chunks = [steps.iloc[i::8].reset_index(drop=True) for i in range(8)]
    one = [p.predict_frame(c)["pred_layer_ms"].to_numpy() for c in chunks]
    with ThreadPoolExecutor(8) as ex:
        many = list(ex.map(lambda c: p.predict_frame(c)["pred_layer_ms"].to_numpy(), chunks * 3))
    for i, m in enumerate(many):
        np.testing.assert_array_equal(m, one[i % 8])


def test_cached_single_predict_is_sub_millisecond():
    p = Predictor()
    for c in CONFIGS:
        p.predict(**c)
    lat = []
    for _ in range(300):
        for c in CONFIGS:
            t = time.perf_counter()
            p.predict(**c)
            lat.append(time.perf_counter() - t)
    assert np.percentile(lat, 99) < 1e-3


def test_router_answers_and_is_thread_safe():
    r = Router(Predictor())
    ask = dict(model="llama-3.1-8b", gpu="h100", num_gpus=8, workload="chat", concurrency=256,
               slo={"ttft_ms": 1000.0, "tpot_ms": 40.0})
    with ThreadPoolExecutor(8) as ex:
        plans = list(ex.map(lambda _: r.best_layout(**ask), range(8)))
    assert all(pl == plans[0] for pl in plans)
    best = plans[0]["best"]
    assert best and best["pred_tpot_ms"] <= 40.0 and best["pred_ttft_ms"] <= 1000.0
    lat = r.replica_latency("llama-3.1-8b", "h100", concurrency=64, tp=2)
    assert lat["ttft_ms_lo"] <= lat["ttft_ms"] <= lat["ttft_ms_hi"] and lat["tpot_ms"] > 0
    curve = r.latency_curve("llama-3.1-8b", "h100", [1, 8, 64, 256], tp=2)
    assert curve["tpot_ms"].is_monotonic_increasing and curve["output_throughput"].is_monotonic_increasing
    # the vectorised curve and the single predict agree
    assert curve.loc[curve["concurrency"] == 64, "tpot_ms"].iloc[0] == pytest.approx(lat["tpot_ms"], rel=1e-9)
    slo = {"tpot_ms": float(curve["tpot_ms"].iloc[2]) * 1.01}  # met at 64, missed at 256
    n = r.max_concurrency("llama-3.1-8b", "h100", slo, tp=2)
    assert 64 <= n < 256
    at_n = r.latency_curve("llama-3.1-8b", "h100", [n, n + 1], tp=2)
    assert at_n["tpot_ms"].iloc[0] <= slo["tpot_ms"] < at_n["tpot_ms"].iloc[1]
    with pytest.raises(InputError):
        r.replica_latency("llama-3.1-8b", "h100", concurrency=0)
    with pytest.raises(InputError, match="does not divide"):
        r.latency_curve("qwen2.5-32b", "h100", [1, 2], tp=3)


def test_readme_scheduler_api_example_runs(capsys):
    text = (REPO / "README.md").read_text()
    section = text.split("## Scheduler API", 1)
    assert len(section) == 2, "README lacks the 'Scheduler API' section"
    code = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert code, "the Scheduler API section has no python example"
    exec(compile(code.group(1), "README.md:Scheduler API", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "TTFT" in out and "TPOT" in out



def test_tail_latency_is_never_below_its_mean():
    """p99 predictions (learned on far fewer rows) are held to at least the mean's prediction and band."""
    import itertools

    import pandas as pd

    from predictor import Predictor

    rows = [{"kind": "serving", "model": m, "gpu": g, "tp": tp, "isl": 1000, "osl": 1000, "concurrency": c}
            for m, g, tp, c in itertools.product(("llama-3.1-8b", "qwen2.5-32b"), ("h100", "h200"), (1, 2, 4),
                                                 (1, 16, 64, 256))]
    out = Predictor.load().predict_frame(pd.DataFrame(rows))
    for p99, mean in (("ttft_p99_ms", "ttft_ms"), ("tpot_p99_ms", "tpot_ms")):
        for sfx in ("", "_lo", "_hi"):
            a, b = out[f"pred_{p99}{sfx}"].to_numpy(float), out[f"pred_{mean}{sfx}"].to_numpy(float)
            ok = np.isfinite(a) & np.isfinite(b)
            assert ok.any() and (a[ok] >= b[ok]).all()
