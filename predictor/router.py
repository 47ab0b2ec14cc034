"""The scheduler API: answers a cluster scheduler or a request router asks thousands of times a minute.

- `best_layout`: the best deployment (layout, replica mix or prefill/decode pools, knobs) for these GPUs and this
  load under SLOs — every candidate scored in vectorised passes (no sampling, so the answer is deterministic),
  cached per question;
- `replica_latency`: predicted TTFT/TPOT (with 80% intervals) of one replica at a concurrency — the cached
  single `Predictor.predict` (microseconds when repeated);
- `latency_curve`: the same for many concurrencies in one vectorised `predict_frame` call;
- `max_concurrency`: the largest concurrency a replica takes while meeting an SLO (admission control).
All methods are thread-safe: the Predictor holds no mutable state but its lock-guarded cache, and so does this.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
import pandas as pd

from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.errors import InputError
from features.layouts import check_layout
from features.specs import EngineConfig, Layout
from predictor.api import Predictor, scenario_row
from predictor.search import SLO_COLUMNS, search
from predictor.space import MODES


class Router:
    """Thread-safe, cached scheduler-facing queries on one Predictor."""

    def __init__(self, predictor: Predictor | None = None, cache_size: int = 1024):
        self.predictor = predictor or Predictor.load()
        self._cache: OrderedDict = OrderedDict()
        self._pending: dict = {}
        self._lock = threading.Lock()
        self._cache_size = int(cache_size)

    def _cached(self, key, compute):
        """The cached answer; threads asking the same new question at once wait for one computation."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        if not owner:
            return pending.result()
        try:
            value = compute()
        except BaseException as e:
            with self._lock:
                del self._pending[key]
            pending.set_exception(e)
            raise
        with self._lock:
            self._cache[key] = value
            del self._pending[key]
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        pending.set_result(value)
        return value

    def best_layout(self, model: str, gpu: str, num_gpus: int, workload: str = "chat", concurrency: int = 0,
                    request_rate: float = 0.0, num_requests: int = 0, slo: dict | None = None,
                    objective: str = "throughput", modes: tuple[str, ...] = MODES, knobs: dict | None = None,
                    weight_dtype: str | None = None) -> dict:
        """The best deployment of `num_gpus` GPUs for this load: mode, layout, members, knobs, predicted
        throughput/TTFT/TPOT with intervals, regime and bottleneck; `best` is None (with `message` naming the
        closest candidate) when nothing meets the SLO."""
        key = ("best", model, gpu, int(num_gpus), str(workload), int(concurrency), float(request_rate),
               int(num_requests), tuple(sorted((slo or {}).items())), objective, tuple(modes),
               repr(sorted((knobs or {}).items())), weight_dtype)

        def compute():
            res = search(model=model, gpu=gpu, num_gpus=num_gpus, workload=workload, objective=objective, slo=slo,
                         exhaustive=True, num_requests=num_requests or None, concurrency=concurrency,
                         request_rate=request_rate, knobs=knobs, weight_dtype=weight_dtype, refine_top=0,
                         predictor=self.predictor, modes=modes)
            return {"best": res.best, "message": res.message, "candidates": res.space_size,
                    "seconds": res.timings_s["total"]}

        return self._cached(key, compute)

    def replica_latency(self, model: str, gpu: str, concurrency: int, tp: int = 1, pp: int = 1, ep: int = 1,
                        attention_dp: bool = False, workload: str = "chat", isl: int | None = None,
                        osl: int | None = None, **engine_knobs) -> dict:
        """Predicted TTFT and TPOT (mean and p99, with 80% intervals) of one replica holding `concurrency`
        requests, its throughput, KV capacity and the limit that binds."""
        if concurrency < 1:
            raise InputError("concurrency must be at least 1")
        p = self.predictor.predict(model, gpu, tp=tp, pp=pp, dp=1, ep=ep, attention_dp=attention_dp, workload=workload,
                                   concurrency=int(concurrency), isl=isl, osl=osl, simulate=False, **engine_knobs)
        out = {"layout": p.layout, "concurrency": int(concurrency), "regime": p.regime, "bottleneck": p.bottleneck,
               "kv_capacity_tokens": p.kv_capacity_tokens, "steady_batch": p.steady_batch}
        for t in ("ttft_ms", "tpot_ms", "ttft_p99_ms", "tpot_p99_ms", "output_throughput"):
            v = p.targets.get(t, {})
            out[t], out[f"{t}_lo"], out[f"{t}_hi"] = v.get("value"), v.get("lo"), v.get("hi")
        return out

    def latency_curve(self, model: str, gpu: str, concurrencies, tp: int = 1, pp: int = 1, ep: int = 1,
                      attention_dp: bool = False, workload: str = "chat", isl: int | None = None,
                      osl: int | None = None, engine: EngineConfig | None = None) -> pd.DataFrame:
        """TTFT/TPOT/throughput of one replica at each concurrency, in one vectorised predict_frame call."""
        conc = np.asarray(list(concurrencies), dtype=np.int64)
        if conc.size == 0 or (conc < 1).any():
            raise InputError("concurrencies must be a non-empty list of positive integers")
        m = resolve_model(model)
        g = resolve_gpu(gpu)
        eng = engine or EngineConfig(weight_dtype=m.native_dtype)
        wl = resolve_workload(workload, isl, osl)
        layout = Layout(tp, pp, 1, ep, attention_dp)
        check_layout(m, g, layout, eng, min_tokens=int(min(wl.isl.max_tokens, wl.isl.median * 4)) + 1)
        base = scenario_row(model, g.name, layout, wl, eng)
        frame = pd.DataFrame([base] * len(conc))
        frame["concurrency"] = conc
        pred = self.predictor.predict_frame(frame)
        cols = {"concurrency": conc}
        for t in ("ttft_ms", "tpot_ms", "ttft_p99_ms", "tpot_p99_ms", "output_throughput"):
            for s in ("", "_lo", "_hi"):
                cols[f"{t}{s}"] = pred[f"pred_{t}{s}"].to_numpy(dtype=float)
        cols["regime"] = pred["regime"].astype(str).to_numpy()
        cols["bottleneck"] = pred["bottleneck"].astype(str).to_numpy()
        return pd.DataFrame(cols)

    def max_concurrency(self, model: str, gpu: str, slo: dict, tp: int = 1, pp: int = 1, ep: int = 1,
                        attention_dp: bool = False, workload: str = "chat", isl: int | None = None,
                        osl: int | None = None, limit: int = 4096) -> int:
        """The largest concurrency (up to `limit`) at which the replica's predicted latencies meet `slo`
        ({"ttft_ms": ..., "tpot_ms": ...}); 0 when even one request misses it."""
        bad = [k for k in slo if k not in SLO_COLUMNS]
        if bad or not slo:
            raise InputError(f"slo needs some of {sorted(SLO_COLUMNS)}")
        key = ("maxc", model, gpu, tp, pp, ep, attention_dp, str(workload), isl, osl, tuple(sorted(slo.items())), limit)

        def meets(concurrencies) -> np.ndarray:
            curve = self.latency_curve(model, gpu, concurrencies, tp, pp, ep, attention_dp, workload, isl, osl)
            ok = np.ones(len(curve), dtype=bool)
            for k, v in slo.items():
                ok &= curve[k].to_numpy(dtype=float) <= v
            return ok

        def compute():
            grid = np.unique(np.round(np.geomspace(1, limit, 64)).astype(np.int64))
            ok = meets(grid)
            if not ok[0]:
                return 0
            last = int(np.flatnonzero(~ok)[0]) if (~ok).any() else len(ok)
            lo, hi = int(grid[last - 1]), int(grid[last]) if last < len(grid) else int(grid[-1])
            if last == len(ok):
                return lo
            fine = np.arange(lo, hi + 1)
            ok2 = meets(fine)
            return int(fine[ok2].max()) if ok2.any() else lo

        return self._cached(key, compute)
