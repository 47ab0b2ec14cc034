"""One vLLM v1 engine replica (scheduler + paged KV cache) at request granularity, with decode stepped in bulk.

Per-step rules, from vLLM v1 (`vllm/v1/core/sched/scheduler.py::Scheduler.schedule`, `_preempt_request`, and
`vllm/v1/core/kv_cache_manager.py::KVCacheManager.allocate_slots`; vLLM 0.32, FCFS policy, synchronous view of a
step, no prefix caching, no speculative decoding, watermark 0):

1. RUNNING requests are served in admission order while the token budget `max_num_batched_tokens` lasts; each gets
   `min(num_tokens - num_computed_tokens, budget_left)` tokens (1 for a decode, the next chunk of a prefill); the
   pass stops when the budget reaches 0.
2. Each needs `ceil((num_computed + new) / block_size) - blocks_held` new KV blocks; when fewer are free the scheduler
   pops the LAST running request (the most recently admitted), frees all its blocks, resets its computed tokens to 0
   and prepends it to the WAITING queue (preemption by recompute), repeating until the allocation fits or the request
   popped itself (then the running pass stops).
3. Only if nothing was preempted this step, WAITING requests are admitted in queue order while the budget lasts and
   `len(running) < max_num_seqs`: a (re-)admitted request prefills its prompt plus every token it generated before
   (chunked if `enable_chunked_prefill`, otherwise it must fit the budget whole), and with
   `scheduler_reserve_full_isl` (vLLM's default) only if the free blocks hold its whole current sequence.
4. After the step, a request whose computed tokens reach its token count samples one output token (the first output
   token comes out of the step that completes its prefill); after `osl` tokens it finishes and frees its blocks.

Pipeline parallelism (`pp` > 1; `vllm/v1/engine/core.py::EngineCore.step_with_batch_queue`): up to `pp` scheduled
micro-batches are in flight; `schedule()` advances a request's computed tokens when it schedules it, so a decoding
request in flight has nothing left to schedule and joins no other micro-batch until its output returns. The
simulator therefore steps in rounds: in one round every running request is scheduled once (by the rules above, with
`pp` micro-batch budgets), and the round lasts `pipeline_round_s` (pp x one stage's time for the largest micro-batch).

Speed. Decoding requests advance in lockstep, one token per step, so a decoder is fixed by its anchor (step, computed
tokens, generated tokens) and needs a new block exactly when `(computed - step) % block_size` comes round: decoders
sit in `block_size` buckets by that phase. A step costs O(requests that change) — admissions, preemptions,
completions — never O(batch). When all running requests decode and none can be admitted (queue empty, batch at
`max_num_seqs`, or free blocks short of the queue head's need; free blocks only shrink while decoding), the next K
steps are alike: K = min(steps to the next completion, steps to the first block shortfall), the latter in closed form
from the bucket sizes. Every step or run of steps is logged as one interval descriptor; step times are evaluated
later, one vectorised `step_time_s` call for all logged steps.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from typing import Callable

import numpy as np

from features.errors import InputError

StepTimeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

WAITING, PREFILL, DECODE, DONE = range(4)


def cdiv(a, b):
    """Ceiling division for ints or int arrays (blocks needed for `a` tokens)."""
    return -(-a // b)


def pipeline_round_s(stage_time_s: StepTimeFn, pp: int, max_num_batched_tokens: int, decode_seqs, decode_kv,
                     prefill) -> np.ndarray:
    """Seconds of one scheduling round of a PP engine: every running request advances once.

    vLLM v1 with PP keeps up to `pp` scheduled micro-batches in flight (`EngineCore.step_with_batch_queue`); a
    request in flight has no token left to schedule (its computed tokens already count the step), so the scheduler
    puts it in no other micro-batch until its output returns, and a decoding request advances once per round. The
    round's work splits into m = min(pp, max(decoders, prefill chunks of `max_num_batched_tokens`)) micro-batches
    (evenly: the largest holds ceil(decoders / m) decoders). Each micro-batch must cross all pp stages before its
    requests can be scheduled again, and each stage runs the m micro-batches one after another, so the round takes
    max(sum_k stage(mb_k), pp x max_k stage(mb_k)) = pp x stage(largest micro-batch): a full pipeline (m = pp)
    streams every stage's weights once per micro-batch, and a few requests (the tail of a closed batch) pay the
    whole pipeline's latency per token. `stage_time_s` gives one stage's time for one micro-batch.
    """
    n = np.asarray(decode_seqs, dtype=np.float64)
    kv = np.asarray(decode_kv, dtype=np.float64)
    pf = np.asarray(prefill, dtype=np.float64)
    m = np.clip(np.maximum(n, np.ceil(pf / max_num_batched_tokens)), 1, pp)
    mb = np.ceil(n / m)
    kv_mb = np.where(n > 0, kv * mb / np.maximum(n, 1), 0.0)
    return pp * np.asarray(stage_time_s(mb, kv_mb, pf / m), dtype=np.float64)


class RequestTable:
    """Per-request state shared by all replicas, as Python lists (scalar access in the event loop is the hot path)."""

    def __init__(self, isl: np.ndarray, osl: np.ndarray, arrival_s: np.ndarray):
        n = len(isl)
        self.isl, self.osl, self.arrival_s = isl, osl, arrival_s
        self.P = isl.tolist()
        self.O = osl.tolist()
        self.state = [WAITING] * n
        self.gen = [0] * n  # output tokens generated (valid while not decoding; decoders use their anchor)
        self.comp = [0] * n  # computed tokens (prefilling requests)
        self.blocks = [0] * n  # blocks held (prefilling requests)
        self.anchor = [(0, 0, 0)] * n  # decoders: (step, computed, generated) at that step
        self.rank = [0] * n  # admission sequence number within its replica (larger = admitted later)
        self.epoch = [0] * n  # invalidates stale completion-heap entries
        self.preemptions = [0] * n
        self.replica = [-1] * n
        self.first_admit_step = [-1] * n
        self.first_token_step = [-1] * n
        self.finish_step = [-1] * n
        self.admit_order: list[int] = []


@dataclass(frozen=True)
class EngineKnobs:
    """The scheduler knobs one replica runs with (vLLM names)."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    reserve_full_sequence: bool
    pp: int = 1  # pipeline stages = micro-batches in flight (vLLM's batch queue)

    @property
    def round_budget(self) -> int:
        """Tokens one scheduling round may schedule: `max_num_batched_tokens` per micro-batch, `pp` micro-batches."""
        return self.max_num_batched_tokens * self.pp


class StepLog:
    """Steps as interval descriptors (one per bulk run or single step), expanded to per-step arrays with numpy."""

    FIELDS = ("steps", "decode_seqs", "decode_kv_first", "prefill", "running", "waiting", "kv_blocks0", "kv_full",
              "emitted", "pattern")

    def __init__(self, block_size: int):
        self.block_size = block_size
        # flat int64 buffers (appending is cheap and numpy reads them without a copy)
        self.rows = array("q")
        self.patterns = array("q", [0] * (block_size + 1))  # pattern 0: no block growth inside the interval
        self.n_rows = 0
        self.n_patterns = 1

    def add(self, steps, decode_seqs, decode_kv_first, prefill, running, waiting, kv_blocks0, kv_full, emitted,
            pattern=None):
        """Log `steps` steps; step k (0-based) has decode_kv_first + decode_seqs*k KV tokens and, at its end,
        kv_blocks0 + (full cycles)*decode_seqs + pattern[rest] blocks in use (pattern: cumulative block needs)."""
        if pattern is None:
            p = 0
        else:
            self.patterns.extend(pattern)
            p = self.n_patterns
            self.n_patterns = p + 1
        self.rows.extend((steps, decode_seqs, decode_kv_first, prefill, running, waiting, kv_blocks0, kv_full,
                          emitted, p))
        self.n_rows += 1

    def __len__(self) -> int:
        return self.n_rows

    def expand(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-step arrays for descriptors [start, stop)."""
        stop = len(self) if stop is None else stop
        nf = len(self.FIELDS)
        rows = np.frombuffer(self.rows, dtype=np.int64)[start * nf: stop * nf].reshape(-1, nf).copy()
        a = {f: rows[:, i] for i, f in enumerate(self.FIELDS)}
        k_steps = a["steps"]
        total = int(k_steps.sum())
        idx = np.repeat(np.arange(len(k_steps)), k_steps)
        offsets = np.cumsum(k_steps) - k_steps
        k = np.arange(total, dtype=np.int64) - offsets[idx]
        n = a["decode_seqs"][idx]
        q, r = np.divmod(k + 1, self.block_size)
        pat = np.frombuffer(self.patterns, dtype=np.int64).reshape(-1, self.block_size + 1).copy()
        growth = np.where(a["pattern"][idx] > 0, q * n + pat[a["pattern"][idx], r], 0)
        return {
            "decode_seqs": n,
            "decode_kv_tokens": a["decode_kv_first"][idx] + n * k,
            "prefill_tokens": a["prefill"][idx],
            "running": a["running"][idx],
            "waiting": a["waiting"][idx],
            "kv_blocks": a["kv_blocks0"][idx] + growth,
            "kv_full": a["kv_full"][idx].astype(bool),
            "emitted": a["emitted"][idx],
            "interval": idx,
            "k": k,
            "interval_steps": k_steps,
        }


class Replica:
    """One engine: running set in admission order, FCFS waiting deque, block pool, and a step log."""

    LOG_FIELDS = ("decode_seqs", "decode_kv_tokens", "prefill_tokens", "running", "waiting", "kv_blocks", "kv_full",
                  "emitted")

    def __init__(self, index: int, table: RequestTable, knobs: EngineKnobs, step_time_s: StepTimeFn,
                 interpolate_step_times: bool = False):
        self.index, self.table, self.knobs, self.step_time_s = index, table, knobs, step_time_s
        self.interpolate = interpolate_step_times
        self.bs = knobs.block_size
        self.ranks: list[int] = []  # running requests' ranks, ascending = admission order
        self.rid_of_rank: dict[int, int] = {}
        self.next_rank = 0
        self.prefilling: list[int] = []  # running requests still prefilling, in admission order
        self.buckets: list[set[int]] = [set() for _ in range(self.bs)]  # decoders by (computed - step) % bs
        self.bucket_n = [0] * self.bs
        self.n_dec = 0
        self.dec_offset = 0  # sum over decoders of (anchor computed - anchor step): their KV at step t = this + n*t
        self.done_heap: list[tuple[int, int, int, int]] = []  # (finish step count, rank, request, epoch)
        self.waiting: deque[int] = deque()
        self.wait_since_step: dict[int, int] = {}
        self.free = knobs.num_blocks
        self.tau = 0  # steps executed
        self.log = StepLog(self.bs)
        self.resolved_desc = 0
        self.clock_s = 0.0
        self._starts: list[np.ndarray] = []
        self._chunks: list[dict[str, np.ndarray]] = []
        self._durs: list[np.ndarray] = []
        self.requeues: list[tuple[int, int, int]] = []  # (request, preempted at step, re-admitted at step)
        self.preemptions = 0
        self.recompute_tokens = 0
        self.finished = 0

    # ---- queue -------------------------------------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.ranks) or bool(self.waiting)

    def load(self) -> int:
        """Requests this replica holds (running + waiting): what vLLM's DP load balancer compares."""
        return len(self.ranks) + len(self.waiting)

    def add(self, rid: int, t_s: float) -> None:
        """A request arrives at `t_s` (the replica has been advanced to t_s, or is idle)."""
        if not self.has_work():
            self.resolve()
            self.clock_s = max(self.clock_s, t_s)
        self.table.replica[rid] = self.index
        self.table.arrival_s[rid] = t_s
        self.waiting.append(rid)

    # ---- decoder bookkeeping -----------------------------------------------------------------------------------
    def _add_decoder(self, rid: int, step: int, comp: int, gen: int) -> None:
        """Make `rid` a decoder anchored at (`step` steps done, `comp` computed, `gen` generated)."""
        T = self.table
        T.state[rid] = DECODE
        T.anchor[rid] = (step, comp, gen)
        phase = (comp - step) % self.bs
        self.buckets[phase].add(rid)
        self.bucket_n[phase] += 1
        self.n_dec += 1
        self.dec_offset += comp - step
        T.epoch[rid] += 1
        heapq.heappush(self.done_heap, (step + T.O[rid] - gen, T.rank[rid], rid, T.epoch[rid]))

    def _drop_decoder(self, rid: int) -> tuple[int, int]:
        """Remove a decoder from the decode structures; returns its (computed, generated) now."""
        T = self.table
        t0, c0, g0 = T.anchor[rid]
        phase = (c0 - t0) % self.bs
        self.buckets[phase].remove(rid)
        self.bucket_n[phase] -= 1
        self.n_dec -= 1
        self.dec_offset -= c0 - t0
        T.epoch[rid] += 1
        return c0 + self.tau - t0, g0 + self.tau - t0

    def _remove_running(self, rid: int) -> None:
        """Take `rid` out of the running order."""
        r = self.table.rank[rid]
        i = bisect_left(self.ranks, r)
        del self.ranks[i]
        del self.rid_of_rank[r]

    # ---- stepping ----------------------------------------------------------------------------------------------
    def advance(self, until_s: float = np.inf, stop_on_finish: bool = False) -> int:
        """Run steps that start before `until_s` (all of them by default); returns how many requests finished."""
        finished0 = self.finished
        bounded = until_s != np.inf
        while self.ranks or self.waiting:
            if bounded:
                self.resolve()
                if self.clock_s >= until_s:
                    break
            if not self._bulk_decode(until_s if bounded else None):
                self._exact_step()
            if stop_on_finish and self.finished > finished0:
                break
        return self.finished - finished0

    def _admission_blocked(self) -> tuple[bool, bool]:
        """At a pure-decode step: (no waiting request can be admitted, and the KV cache is why)."""
        k = self.knobs
        n = len(self.ranks)
        if not self.waiting or n >= k.max_num_seqs:
            return True, False
        budget_left = k.round_budget - n
        if budget_left <= 0:
            return True, False
        head = self.waiting[0]
        tok = self.table.P[head] + self.table.gen[head]
        if not k.enable_chunked_prefill and tok > budget_left:
            return True, False
        short = cdiv(tok if k.reserve_full_sequence else min(tok, budget_left), self.bs) > self.free
        return short, short

    def _bulk_decode(self, until_s: float | None) -> bool:
        """Apply the next K identical decode steps at once; False when the next step is not one of them."""
        n = self.n_dec
        if n == 0 or self.prefilling:
            return False
        blocked, kv_bound = self._admission_blocked()
        if not blocked:
            return False
        heap, T = self.done_heap, self.table
        while heap[0][3] != T.epoch[heap[0][2]]:
            heapq.heappop(heap)
        to_finish = heap[0][0] - self.tau
        bs, tau, bn = self.bs, self.tau, self.bucket_n
        base = (-tau) % bs  # phase needing a block in the next step; the phase one lower the step after, ...
        pattern = list(accumulate(bn[base::-1] + bn[:base:-1], initial=0))
        q0, rem = divmod(self.free, n)
        shortfall = q0 * bs + bisect_right(pattern, rem)  # first step needing more blocks than are free
        steps = min(to_finish, shortfall - 1)
        if steps < 1:
            if until_s is None:  # the next step is a plain decode step that preempts
                self._decode_shortfall_step()
                return True
            return False
        kv_first = self.dec_offset + n * tau + n
        if until_s is not None:  # arrivals pending: keep only the steps that start before the next arrival
            ks = np.arange(steps, dtype=np.int64)
            if self.interpolate:
                d_ends = self._eval(np.full(2, n), kv_first + n * np.array([0, steps - 1]), np.zeros(2, np.int64))
                d = d_ends[0] + (d_ends[1] - d_ends[0]) * ks / max(steps - 1, 1)
            else:
                d = self._eval(np.full(steps, n), kv_first + n * ks, np.zeros(steps, np.int64))
            starts = self.clock_s + np.cumsum(d) - d
            steps = max(1, int(np.searchsorted(starts, until_s, side="left")))
        used0 = self.knobs.num_blocks - self.free
        self.log.add(steps, n, kv_first, 0, n, len(self.waiting), used0, kv_bound, n, pattern)
        q, r = divmod(steps, bs)
        self.free -= q * n + pattern[r]
        self.tau += steps
        if until_s is not None:
            self.resolve()
        self._retire()
        if until_s is None and steps == shortfall - 1 < to_finish:  # nothing finished: the shortfall still comes
            self._decode_shortfall_step()
        return True

    def _decode_shortfall_step(self) -> None:
        """`_exact_step` for a step where every running request decodes and the blocks run out (so no admission):
        the decoders whose phase needs a block claim one each in admission order; the tail is preempted to pay."""
        # Claims go in admission order and each shortfall pops the running tail, so the victims are the shortest
        # tail of the running order whose freed blocks (and withdrawn claims) cover the claims left: no sort needed.
        # (A claim never fails after its own request was popped: then every later claim was popped too.)
        tau, ranks, rid_of_rank = self.tau, self.ranks, self.rid_of_rank
        claimants = self.buckets[(-tau) % self.bs]
        need = len(claimants)
        avail = self.free
        while need > avail:
            victim = rid_of_rank[ranks[-1]]
            if victim in claimants:
                need -= 1
            avail += self._preempt(victim, tau)
        avail -= need
        self.free = avail
        n = self.n_dec
        self.log.add(1, n, self.dec_offset + n * (tau + 1), 0, len(ranks), len(self.waiting),
                     self.knobs.num_blocks - avail, True, n)
        self.tau = tau + 1
        self._retire()

    def _exact_step(self) -> None:
        """One scheduler step exactly as vLLM's `schedule()`: running pass, preemptions, admissions, then the step."""
        T, k, bs = self.table, self.knobs, self.bs
        tau, ranks = self.tau, self.ranks
        budget = k.round_budget
        # 1. Token budget over the running order. Decoders take 1 token each and always fit (running <=
        # max_num_seqs <= max_num_batched_tokens). Requests still prefilling are always the newest running ones: a
        # partial chunk exhausts the budget, so nothing is admitted behind it. So only they can miss the budget.
        used = self.n_dec
        chunks: dict[int, int] = {}
        for rid in self.prefilling:
            if used >= budget:
                break
            chunk = min(T.P[rid] + T.gen[rid] - T.comp[rid], budget - used)
            chunks[rid] = chunk
            used += chunk
        # 2. Block claims in admission order: decoders whose phase needs a block now, and prefill chunks.
        phase = (-tau) % bs
        total_need = self.bucket_n[phase]
        pf_claims = []
        for rid, chunk in chunks.items():
            need = cdiv(T.comp[rid] + chunk, bs) - T.blocks[rid]
            if need > 0:
                pf_claims.append((T.rank[rid], rid, need))
                total_need += need
        preempted: list[int] = []
        if total_need <= self.free:
            self.free -= total_need
        else:
            claims = sorted([(T.rank[r], r, 1) for r in self.buckets[phase]] + pf_claims)
            avail = self.free
            for rank, rid, need in claims:
                if rank not in self.rid_of_rank:  # popped as the tail earlier in this pass
                    continue
                while need > avail:
                    victim = self.rid_of_rank[ranks[-1]]
                    avail += self._preempt(victim, tau)
                    preempted.append(victim)
                    if victim == rid:
                        break
                if preempted and preempted[-1] == rid:  # it popped itself: the running pass stops
                    break
                avail -= need
            self.free = avail
            for rid in preempted:
                chunks.pop(rid, None)
            used = self.n_dec + sum(chunks.values())
        sched_dec = self.n_dec
        kv_dec = self.dec_offset + self.n_dec * (tau + 1)
        # 3. Admissions (only when nothing was preempted).
        kv_bound = bool(preempted)
        admitted: list[tuple[int, int]] = []
        if not preempted:
            budget_left = budget - used
            nrun = len(ranks)
            while self.waiting and budget_left > 0 and nrun < k.max_num_seqs:
                rid = self.waiting[0]
                tok = T.P[rid] + T.gen[rid]
                if not k.enable_chunked_prefill and tok > budget_left:
                    break
                chunk = min(tok, budget_left)
                if cdiv(tok if k.reserve_full_sequence else chunk, bs) > self.free:
                    kv_bound = True
                    break
                self.waiting.popleft()
                self._admit(rid, tau)
                self.free -= cdiv(chunk, bs)
                T.comp[rid], T.blocks[rid] = 0, cdiv(chunk, bs)
                admitted.append((rid, chunk))
                budget_left -= chunk
                nrun += 1
        # 4. Log the step, then apply it: prefill chunks advance; completed prefills sample their next token.
        work = list(chunks.items()) + admitted if chunks else admitted
        decode_seqs, decode_kv, prefill = sched_dec, kv_dec, 0
        for rid, chunk in work:
            if chunk == 1:  # a one-token chunk costs what a decode does
                decode_seqs += 1
                decode_kv += T.comp[rid] + 1
            else:
                prefill += chunk
        emitted = sched_dec + sum(1 for rid, chunk in work if T.comp[rid] + chunk == T.P[rid] + T.gen[rid])
        self.log.add(1, decode_seqs, decode_kv, prefill, len(ranks), len(self.waiting),
                     k.num_blocks - self.free, kv_bound, emitted)
        self.tau = tau + 1
        for rid, chunk in work:
            c = T.comp[rid] + chunk
            T.comp[rid] = c
            T.blocks[rid] = cdiv(c, bs)
            if c == T.P[rid] + T.gen[rid]:
                self._prefill_done(rid)
            elif rid not in self.prefilling:  # admitted this step with a partial chunk (highest rank: order kept)
                self.prefilling.append(rid)
        self._retire()

    def _prefill_done(self, rid: int) -> None:
        """A request computed all its tokens: it samples one output token and decodes from the next step."""
        T = self.table
        if rid in self.prefilling:
            self.prefilling.remove(rid)
        g = T.gen[rid] + 1
        T.gen[rid] = g
        if g == 1:
            T.first_token_step[rid] = self.tau - 1
        if g >= T.O[rid]:
            self._finish(rid, T.blocks[rid])
        else:
            self._add_decoder(rid, self.tau, T.comp[rid], g)

    def _admit(self, rid: int, step: int) -> None:
        """Append `rid` to the running order; record FCFS first admission or the end of a post-preemption wait."""
        T = self.table
        T.rank[rid] = self.next_rank
        self.ranks.append(self.next_rank)
        self.rid_of_rank[self.next_rank] = rid
        self.next_rank += 1
        T.state[rid] = PREFILL  # until its prefill completes (set properly after the step)
        if T.first_admit_step[rid] < 0:
            T.first_admit_step[rid] = step
            T.admit_order.append(rid)
        else:
            self.requeues.append((rid, self.wait_since_step.pop(rid), step))

    def _preempt(self, rid: int, step: int) -> int:
        """vLLM's `_preempt_request` on the last running request: free its blocks, prepend it to WAITING."""
        T = self.table
        if T.state[rid] == DECODE:
            c, g = self._drop_decoder(rid)
            blocks = cdiv(c, self.bs)
            T.gen[rid] = g
        else:
            blocks = T.blocks[rid]
            self.prefilling.remove(rid)
        self._remove_running(rid)
        T.state[rid] = WAITING
        T.comp[rid] = T.blocks[rid] = 0
        T.preemptions[rid] += 1
        self.preemptions += 1
        self.recompute_tokens += T.P[rid] + T.gen[rid]
        self.waiting.appendleft(rid)
        self.wait_since_step[rid] = step
        return blocks

    def _finish(self, rid: int, blocks: int) -> None:
        """`rid` produced its last token in the step just done: free its blocks."""
        T = self.table
        T.state[rid] = DONE
        T.finish_step[rid] = self.tau - 1
        self.finished += 1
        self.free += blocks
        self._remove_running(rid)

    def _retire(self) -> None:
        """Finish the decoders whose last token came out of the step just done."""
        heap, T = self.done_heap, self.table
        while heap and heap[0][0] <= self.tau:
            _, _, rid, epoch = heapq.heappop(heap)
            if epoch != T.epoch[rid]:
                continue
            c, g = self._drop_decoder(rid)
            T.gen[rid] = g
            self._finish(rid, cdiv(c, self.bs))

    # ---- step times --------------------------------------------------------------------------------------------
    def _eval(self, decode_seqs: np.ndarray, decode_kv: np.ndarray, prefill: np.ndarray) -> np.ndarray:
        """Call the step-time model on an array of steps (PP: rounds, see `pipeline_round_s`) and check it."""
        if self.knobs.pp > 1:
            d = pipeline_round_s(self.step_time_s, self.knobs.pp, self.knobs.max_num_batched_tokens, decode_seqs,
                                 decode_kv, prefill)
        else:
            d = self.step_time_s(decode_seqs, decode_kv, prefill)
        d = np.asarray(d, dtype=np.float64)
        d = np.broadcast_to(d, decode_seqs.shape)
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            raise InputError("step_time_s returned a non-positive or non-finite step time")
        return d

    def resolve(self) -> None:
        """Evaluate the step times of every step logged since the last call (one call) and advance the clock."""
        if self.resolved_desc == len(self.log):
            return
        a = self.log.expand(self.resolved_desc)
        self.resolved_desc = len(self.log)
        self._chunks.append({f: a[f] for f in self.LOG_FIELDS})  # kept for log_arrays: expand each step once
        if self.interpolate:  # each interval's first and last step only; linear in between (decode KV grows linearly)
            counts = a["interval_steps"]
            first = np.cumsum(counts) - counts
            rows = np.concatenate([first, first + counts - 1])
            e = self._eval(a["decode_seqs"][rows], a["decode_kv_tokens"][rows], a["prefill_tokens"][rows])
            d0, d1 = e[: len(first)], e[len(first):]
            i = a["interval"]
            d = d0[i] + (d1[i] - d0[i]) * a["k"] / np.maximum(counts[i] - 1, 1)
        else:
            d = self._eval(a["decode_seqs"], a["decode_kv_tokens"], a["prefill_tokens"])
        ends = self.clock_s + np.cumsum(d)
        self._starts.append(ends - d)
        self._durs.append(d)
        self.clock_s = float(ends[-1])

    def log_arrays(self) -> dict[str, np.ndarray]:
        """The full per-step log of this replica with start and duration of each step (call after the run)."""
        self.resolve()
        out = {f: np.concatenate([c[f] for c in self._chunks]) if self._chunks else np.empty(0, np.int64)
               for f in self.LOG_FIELDS}
        out["start_s"] = np.concatenate(self._starts) if self._starts else np.empty(0)
        out["dur_s"] = np.concatenate(self._durs) if self._durs else np.empty(0)
        return out
