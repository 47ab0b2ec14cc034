"""Importer for ai-dynamo/aiconfigurator data: end-to-end silicon measurements and the op_perf kernel tables.

End-to-end (`silicon_sample_e2e.csv`, aggregated and disaggregated serving, TRT-LLM / vLLM / SGLang):
- concurrency is the client concurrency recorded in `silicon_data_source` (`batch_size` is per attention-DP rank);
- `output_throughput` = concurrency x OSL / (TTFT + (OSL - 1) x TPOT) for the whole deployment, and
  `request_throughput`, `total_throughput` from it: all three are named in `derived` (the data has no throughput);
- repeated measurements of one configuration (same config, TTFT, TPOT under two dump ids) are kept once, the other
  ids listed in `detail.duplicate_ids`; rows of the curated `silicon_refs_subset.csv` are marked `detail.anchor`;
- layout: attention-DP of degree A with attention TP 1 is `tp=A, attention_dp=true` (DEP-A); with attention TP T > 1
  it is vLLM's DP+EP form `tp=T, dp=A`; `ep` is the MoE expert-parallel degree. Where an aggregated row leaves
  `attention_dp_size` empty but its MoE group (moe_tp x moe_ep) spans more GPUs than `tp_size`, A is that ratio
  (vLLM shards MoE layers over all DP x TP ranks: e.g. Qwen3-235B at tp 1, moe_tp 2 runs on 2 GPUs, not 1).
  Disaggregated rows carry the decode worker's layout (`dp` x decode workers where known) with `num_gpus` = all
  prefill + decode GPUs where the worker counts are recorded, and both pools in `detail` (`mode=disagg`);
- engine knobs are not in the data; aggregated rows get those aiconfigurator's benchmark generator launches a worker
  with (`generator/rule_plugin/benchmark/<backend>.rule`), named in `detail.engine_knobs_from`: `max_num_seqs` =
  `batch_size` (per attention-DP rank) and a token budget `max_num_batched_tokens` = `batch_size` + ISL + 1500.
  The request count is left unknown: the generator's benchmark script runs 50 x concurrency requests after a
  warm-up, which would make TTFT a steady-state mean, but the measured TTFTs sit well above the physics' steady
  state and closer to its opening burst, so that harness is not assumed for these rows.

op_perf (`op_perf/<system>/<family>/<framework>/<version>/*.parquet`, about 3 M rows): `--ops` chooses what to import:
`sample` (default) keeps every communication row (NCCL and custom all-reduce) and 1 in 20 of every other table,
chosen by a stable hash of the row, so repeated imports pick the same rows; `comm` keeps only communication rows;
`all` keeps everything (use `stream_aiconfigurator`/`layoutcast import`: one table in memory at a time); `none`
imports only the end-to-end rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, drop_duplicate_rows,
                                       dtype_name, finish, numeric, read_csv_checked, read_parquet_checked,
                                       require_path, require_values, row_keys, with_progress)
from features.errors import InputError

SOURCE = "aiconfigurator"
E2E_FILE = "silicon_sample_e2e.csv"
REFS_FILE = "silicon_refs_subset.csv"
OPS_MODES = ("sample", "comm", "all", "none")
DEFAULT_SAMPLE_EVERY = 20
COMM_TABLES = ("nccl_perf", "custom_allreduce_perf")
# aiconfigurator's benchmark generator: an aggregated worker's token budget = max_batch_size + ISL + this
BENCH_EXTRA_TOKENS = 1500
ENGINE_KNOBS_FROM = "aiconfigurator benchmark generator (rule_plugin/benchmark/<backend>.rule), not recorded in the row"

WORKER_COLS = ("batch_size", "num_workers", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
AGG_LAYOUT = ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
LAYOUT_COLS = AGG_LAYOUT + tuple(f"{side}_{c}" for side in ("prefill", "decode") for c in WORKER_COLS)
E2E_REQUIRED = ("id", "silicon_data_source", "backend", "backend_version", "model_path", "system", "precision", "mode",
                "isl", "osl", "gemm_quant_mode", "moe_quant_mode", "batch_size", *LAYOUT_COLS,
                "silicon_ttft_ms", "silicon_tpot_ms")
E2E_NUMERIC = ("isl", "osl", "batch_size", *LAYOUT_COLS, "silicon_ttft_ms", "silicon_tpot_ms")


# --- end-to-end rows -----------------------------------------------------------------------------------------

def _provenance(text: pd.Series) -> pd.DataFrame:
    """Client concurrency, measurement time, container image and the wip flag parsed from `silicon_data_source`."""
    t = text.fillna("").astype(str)
    segments = t.str.split(r";\s*")

    def image(parts: list[str]) -> str | None:
        for seg in parts:
            seg = seg.strip()
            if seg.startswith("image="):
                return seg[len("image="):] or None
            if "/" in seg and ":" in seg and "=" not in seg:
                return seg
        return None

    return pd.DataFrame({
        "concurrency": pd.to_numeric(t.str.extract(r"silicon_concurrency=(\d+)")[0], errors="coerce"),
        "measured_at": t.str.extract(r"measured=([0-9][0-9T:.\-+Z]*)")[0],
        "image": segments.map(image),
        "wip": t.str.extract(r"wip=(True|False)")[0],
    }, index=text.index)


def _version_from_image(image: pd.Series) -> pd.Series:
    """The engine version in a container image tag (`vllm/vllm-openai:v0.16.0-cu130` -> `0.16.0`)."""
    tag = image.fillna("").astype(str).str.extract(r":([^:/]+)$")[0]
    return tag.str.replace(r"^v", "", regex=True).str.replace(r"-cu\d+.*$", "", regex=True)


def _one(x: pd.Series) -> np.ndarray:
    """Sizes where 0 or missing means 1 (the source writes 0 for "not used")."""
    v = x.to_numpy(dtype=float)
    return np.where(np.isnan(v) | (v <= 0), 1.0, v)


def _worker_layout(tp: pd.Series, pp: pd.Series, adp: pd.Series, moe_ep: pd.Series,
                   moe_tp: pd.Series | None = None) -> dict[str, np.ndarray]:
    """Schema layout columns for one aiconfigurator worker (see the module docstring for the mapping)."""
    t, p, a = _one(tp), _one(pp), _one(adp)
    if moe_tp is not None:  # attention-DP not recorded: the MoE group (moe_tp x moe_ep) spans tp x DP ranks
        group = moe_tp.to_numpy(dtype=float) * moe_ep.to_numpy(dtype=float)
        implied = group / t
        unrecorded = adp.isna().to_numpy() & np.isfinite(implied) & (implied > 1) & (implied == np.round(implied))
        a = np.where(unrecorded, implied, a)
    e = moe_ep.to_numpy(dtype=float)
    e = np.where(np.isnan(e) | (e <= 0), np.nan, e)
    dep = (a > 1) & (t == 1)
    dpep = (a > 1) & (t > 1)
    return {"tp": np.where(dep, a, t), "pp": p, "dp": np.where(dpep, a, 1.0), "ep": e, "attention_dp": dep,
            "gpus": t * p * a}


def _e2e_frame(raw: pd.DataFrame, names: NameResolver) -> pd.DataFrame:
    """Schema rows for end-to-end measurements (before de-duplication)."""
    prov = _provenance(raw["silicon_data_source"])
    disagg = (raw["mode"].astype(str) == "disagg").to_numpy()
    agg_l = _worker_layout(raw["tp_size"], raw["pp_size"], raw["attention_dp_size"], raw["moe_ep_size"],
                           raw["moe_tp_size"])
    dec_l = _worker_layout(raw["decode_tp_size"], raw["decode_pp_size"], raw["decode_attention_dp_size"],
                           raw["decode_moe_ep_size"])
    pre_l = _worker_layout(raw["prefill_tp_size"], raw["prefill_pp_size"], raw["prefill_attention_dp_size"],
                           raw["prefill_moe_ep_size"])
    dw, pw = raw["decode_num_workers"].to_numpy(dtype=float), raw["prefill_num_workers"].to_numpy(dtype=float)
    layout = {k: np.where(disagg, dec_l[k], agg_l[k]) for k in ("tp", "pp", "ep", "attention_dp")}
    layout["dp"] = np.where(disagg, dec_l["dp"] * np.where(np.isnan(dw), 1.0, dw), agg_l["dp"])
    num_gpus = np.where(disagg, pw * pre_l["gpus"] + dw * dec_l["gpus"], agg_l["gpus"])  # NaN where workers unknown
    conc = prov["concurrency"].to_numpy(dtype=float)
    fallback = raw["batch_size"].to_numpy(dtype=float)
    conc = np.where(np.isnan(conc) & ~disagg & (_one(raw["attention_dp_size"]) == 1), fallback, conc)
    ttft, tpot, osl, isl = (raw[c].to_numpy(dtype=float) for c in ("silicon_ttft_ms", "silicon_tpot_ms", "osl", "isl"))
    batch = np.where(disagg, np.nan, raw["batch_size"].to_numpy(dtype=float))  # per attention-DP rank
    request_s = (ttft + (osl - 1.0) * tpot) / 1000.0
    req_tput = conc / request_s
    version = raw["backend_version"].astype("string")
    from_image = _version_from_image(prov["image"]).replace("", pd.NA).astype("string")
    engine_version = version.fillna(from_image)
    detail_src = raw.assign(
        version_from=np.where(version.isna() & from_image.notna(), "container image tag", None),
        image=prov["image"], wip=prov["wip"],
        knobs_from=np.where(np.isnan(batch), None, ENGINE_KNOBS_FROM),
        total_gpus_note=np.where(disagg & np.isnan(num_gpus), "prefill/decode worker counts not recorded", None))
    detail_cols = {c: c for c in LAYOUT_COLS}
    detail_cols.update({"mode": "mode", "gemm_quant_mode": "gemm_quant_mode", "moe_quant_mode": "moe_quant_mode",
                        "silicon_data_source": "data_source", "version_from": "engine_version_from", "image": "image",
                        "wip": "wip", "total_gpus_note": "num_gpus_note", "knobs_from": "engine_knobs_from"})
    out = pd.DataFrame({
        "kind": "serving",
        "source": SOURCE,
        "engine": raw["backend"].astype(str).str.lower(),
        "engine_version": engine_version,
        "measured_at": prov["measured_at"],
        "status": "ok",
        "model": names.map_models(raw["model_path"]),
        "weight_dtype": raw["precision"].map(dtype_name),
        "gpu": names.map_gpus(raw["system"]),
        "num_gpus": num_gpus,
        **{k: layout[k] for k in ("tp", "pp", "dp", "ep", "attention_dp")},
        "isl": isl,
        "osl": osl,
        "isl_dist": "fixed:" + raw["isl"].astype("Int64").astype(str),
        "osl_dist": "fixed:" + raw["osl"].astype("Int64").astype(str),
        "concurrency": conc,
        "max_num_seqs": batch,
        "max_num_batched_tokens": batch + isl + BENCH_EXTRA_TOKENS,
        "output_throughput": req_tput * osl,
        "total_throughput": req_tput * (isl + osl),
        "request_throughput": req_tput,
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "derived": np.where(np.isnan(conc), None, "output_throughput,total_throughput,request_throughput"),
        "detail": detail_from_columns(detail_src, detail_cols),
        "run_id": SOURCE + ":" + raw["id"].astype(str),
    })
    return out


def _dedup_key(raw: pd.DataFrame, conc: pd.Series) -> pd.Series:
    """One string per row naming the configuration and its measured TTFT and TPOT (to 1e-4 ms)."""
    cols = ["backend", "model_path", "system", "precision", "mode", "isl", "osl", "gemm_quant_mode", "moe_quant_mode",
            *LAYOUT_COLS]
    return row_keys(raw[cols].assign(conc=conc, ttft=raw["silicon_ttft_ms"].round(4),
                                     tpot=raw["silicon_tpot_ms"].round(4)))


def _import_e2e(folder: Path, report: ImportReport, names: NameResolver) -> pd.DataFrame:
    f = folder / E2E_FILE
    require_path(f, SOURCE, is_dir=False)
    frames = []
    for path, is_ref in ((f, False), (folder / REFS_FILE, True)):
        if is_ref and not path.is_file():
            continue
        raw = read_csv_checked(path, E2E_REQUIRED)
        require_values(raw, ["id", "backend", "model_path", "system", "mode", "isl", "osl", "silicon_ttft_ms",
                             "silicon_tpot_ms"], path)
        numeric(raw, E2E_NUMERIC, path)
        bad_mode = ~raw["mode"].isin(["agg", "disagg"])
        if bad_mode.any():
            i = int(np.flatnonzero(bad_mode.to_numpy())[0])
            raise InputError(f"{str(path)!r} line {i + 2}: mode {raw['mode'].iloc[i]!r} is neither agg nor disagg")
        report.rows_read += len(raw)
        report.files += 1
        frames.append(raw.assign(_ref=is_ref))
    raw = pd.concat(frames, ignore_index=True)
    key = _dedup_key(raw, _provenance(raw["silicon_data_source"])["concurrency"])
    first = ~key.duplicated()
    groups = raw.groupby(key.to_numpy(), sort=False)
    dup_ids = groups["id"].agg(lambda s: ",".join(map(str, s.iloc[1:])) if len(s) > 1 else None)
    anchors = groups["_ref"].any()
    n_dup = int((~first & ~raw["_ref"]).sum())
    n_ref_dup = int((~first & raw["_ref"]).sum())
    kept = raw.loc[first].reset_index(drop=True)
    kept_key = key[first].to_numpy()
    out = _e2e_frame(kept, names)
    extra = pd.DataFrame({"duplicate_ids": dup_ids.reindex(kept_key).to_numpy(),
                          "anchor": np.where(anchors.reindex(kept_key).to_numpy(dtype=bool), True, None)})
    out["detail"] = [_merge_detail(d, e) for d, e in zip(out["detail"], detail_from_columns(
        extra, {"duplicate_ids": "duplicate_ids", "anchor": "anchor"}))]
    report.duplicates += n_dup + n_ref_dup
    report.notes.append(f"end-to-end: {len(kept)} measurements; {n_dup} repeated measurements (same config, TTFT, "
                        f"TPOT under another id) kept once; {n_ref_dup} rows of {REFS_FILE} are anchors already in "
                        f"{E2E_FILE} (marked detail.anchor); throughputs derived from concurrency, TTFT and TPOT")
    workers_unknown = kept["decode_num_workers"].isna() | kept["prefill_num_workers"].isna()
    n_unknown = int((kept["mode"].eq("disagg") & workers_unknown).sum())
    if n_unknown:
        report.notes.append(f"{n_unknown} disaggregated rows lack worker counts: num_gpus there counts one decode "
                            "worker only (detail.num_gpus_note)")
    return out


def _merge_detail(a: str | None, b: str | None) -> str | None:
    """Two detail JSON objects as one canonical (sorted-key) object."""
    if not b:
        return a
    if not a:
        return b
    return json.dumps({**json.loads(a), **json.loads(b)}, sort_keys=True, separators=(",", ":"))


# --- op_perf tables --------------------------------------------------------------------------------------------

MAPPED_TABLES = ("gemm_perf", "context_attention_perf", "generation_attention_perf", "context_mla_perf",
                 "generation_mla_perf", "mla_context_module_perf", "mla_generation_module_perf", "mla_bmm_perf",
                 "moe_perf", "dsv4_megamoe_module_perf", "nccl_perf", "custom_allreduce_perf")
_NCCL_OPS = {"all_gather": "allgather", "all_reduce": "allreduce", "alltoall": "alltoall",
             "reduce_scatter": "reducescatter"}


def _col(raw: pd.DataFrame, name: str) -> pd.Series:
    return raw[name] if name in raw.columns else pd.Series(np.nan, index=raw.index)


def _attention(raw: pd.DataFrame, decode: bool, op: str, extra_detail: dict[str, str]) -> dict:
    batch, isl, step = _col(raw, "batch_size"), _col(raw, "isl"), _col(raw, "step").fillna(0)
    context = isl + step if decode else isl
    return {"op": op, "phase": "decode" if decode else "prefill", "batch": batch, "context": context,
            "tokens": batch if decode else batch * isl, "kv_dtype": _col(raw, "kv_cache_dtype").map(dtype_name),
            "_detail": {"num_heads": "num_heads", "num_key_value_heads": "num_kv_heads", "head_dim": "head_dim",
                        "beam_width": "beam_width", "isl": "isl", "step": "step", "kv_cache_dtype": "kv_cache_dtype",
                        **extra_detail}}


def _map_table(table: str, raw: pd.DataFrame, names: NameResolver) -> dict:
    """Schema columns (plus `_detail`: source column -> detail key) for one of the MAPPED_TABLES."""
    if table == "gemm_perf":
        return {"op": "gemm", "tokens": raw["m"], "weight_dtype": raw["gemm_dtype"].map(dtype_name),
                "_detail": {"m": "m", "n": "n", "k": "k", "gemm_dtype": "quant"}}
    if table in ("context_attention_perf", "generation_attention_perf"):
        decode = table.startswith("generation")
        return _attention(raw, decode, "attn_decode" if decode else "attn_prefill", {"attn_dtype": "attn_dtype"})
    if table in ("context_mla_perf", "generation_mla_perf", "mla_context_module_perf", "mla_generation_module_perf"):
        decode = "generation" in table
        op = ("mla_decode" if decode else "mla_prefill") + ("_module" if "module" in table else "")
        cols = _attention(raw, decode, op, {"mla_dtype": "mla_dtype", "tp_size": "tp_size", "gemm_type": "gemm_type",
                                            "architecture": "architecture"})
        cols["tp"] = _col(raw, "tp_size")
        if "model" in raw.columns:
            cols["model"] = names.map_models(raw["model"])
        return cols
    if table == "mla_bmm_perf":
        return {"op": "mla_bmm_" + raw["op_name"].astype(str).str.replace("mla_gen_", "", regex=False),
                "phase": "decode", "tokens": raw["num_tokens"], "weight_dtype": raw["bmm_dtype"].map(dtype_name),
                "_detail": {"num_tokens": "num_tokens", "num_heads": "num_heads", "bmm_dtype": "quant"}}
    if table in ("moe_perf", "dsv4_megamoe_module_perf"):
        moe_tp, moe_ep = _one(raw["moe_tp_size"]), _one(raw["moe_ep_size"])
        cols = {"op": "moe_ffn" if table == "moe_perf" else "moe_module", "tokens": raw["num_tokens"],
                "tp": moe_tp * moe_ep, "ep": moe_ep, "weight_dtype": raw["moe_dtype"].map(dtype_name),
                "_detail": {c: c for c in ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
                                           "moe_tp_size", "moe_ep_size", "distribution", "num_fused_shared_experts",
                                           "global_num_tokens", "kernel_dtype", "pre_dispatch", "source_policy",
                                           "used_cuda_graph", "buffer_policy")} | {"moe_dtype": "quant"}}
        if "phase" in raw.columns:
            cols["phase"] = raw["phase"].map({"context": "prefill", "generation": "decode", "decode": "decode"})
        return cols
    if table == "nccl_perf":
        return {"op": raw["op_name"].map(_NCCL_OPS).fillna(raw["op_name"]), "tp": raw["num_gpus"],
                "num_gpus": raw["num_gpus"],
                "_detail": {"message_size": "message_size", "nccl_dtype": "dtype", "num_gpus": "num_gpus"}}
    if table == "custom_allreduce_perf":
        return {"op": "allreduce", "tp": raw["num_gpus"], "num_gpus": raw["num_gpus"],
                "_detail": {"message_size": "message_size", "allreduce_dtype": "dtype", "backend": "backend",
                            "num_gpus": "num_gpus"}}
    raise AssertionError(f"unmapped op table {table}")


def _op_files(folder: Path) -> list[tuple[Path, str, str, str, str]]:
    """(file, system, family, framework, version) for every op_perf parquet table."""
    root = folder / "op_perf"
    if not root.is_dir():
        raise InputError(f"{SOURCE}: no op_perf folder in {str(folder)!r}")
    out = []
    for f in sorted(root.glob("*/*/*/*/*.parquet")):
        system, family, framework, version = f.relative_to(root).parts[:4]
        out.append((f, system, family, framework, version))
    if not out:
        raise InputError(f"{SOURCE}: no parquet tables under {str(root)!r}")
    return out


def _provenance_of(folder: Path) -> str | None:
    meta = folder / "collection_meta.yaml"
    if not meta.is_file():
        return None
    try:
        doc = yaml.safe_load(meta.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{str(meta)!r} is not valid YAML: {e}") from None
    return doc.get("provenance") if isinstance(doc, dict) else None


def _stable_sample(raw: pd.DataFrame, every: int) -> np.ndarray:
    """Rows kept by a hash of their whole content: the same rows on every run, about 1 in `every`."""
    h = pd.util.hash_pandas_object(raw, index=False).to_numpy()
    return (h % np.uint64(every)) == 0


def _check_op_names(files: list[tuple[Path, str, str, str, str]], names: NameResolver) -> None:
    """Resolve every GPU (system folder) and model named by the op tables before any row is produced."""
    for f, system, *_ in files:
        names.gpu(system)
        if f.stem in ("mla_context_module_perf", "mla_generation_module_perf"):
            try:
                models = pd.read_parquet(f, columns=["model"])["model"]
            except Exception as e:  # pyarrow raises many types for corrupt files
                raise InputError(f"{str(f)!r} is not a readable parquet file: {str(e).splitlines()[0]}") from None
            for m in pd.unique(models.dropna()):
                names.model(m)


def _op_frames(files: list[tuple[Path, str, str, str, str]], mode: str, every: int, report: ImportReport,
               names: NameResolver, progress: bool) -> Iterator[pd.DataFrame]:
    """Schema rows of each op_perf table in turn (what `mode` keeps of it)."""
    for f, system, family, framework, version in with_progress(files, progress, "reading op_perf tables"):
        table = f.stem
        raw = read_parquet_checked(f, ["latency"])
        report.rows_read += len(raw)
        report.files += 1
        is_comm = table in COMM_TABLES
        if mode == "comm" and not is_comm:
            report.leave_out("--ops comm: compute op tables not imported", len(raw))
            continue
        if mode == "sample" and not is_comm:
            keep = _stable_sample(raw, every)
            report.leave_out(f"--ops sample: outside the 1-in-{every} stable-hash subsample of compute op tables",
                             int((~keep).sum()))
            raw = raw.loc[keep].reset_index(drop=True)
        if table not in MAPPED_TABLES:
            report.leave_out(f"op table {table} has no mapping to the schema", len(raw))
            continue
        lat = pd.to_numeric(raw["latency"], errors="coerce")
        bad = lat.isna() | (lat <= 0)
        report.leave_out("op latency missing or not positive", int(bad.sum()))
        raw, lat = raw.loc[~bad].reset_index(drop=True), lat[~bad].reset_index(drop=True)
        if not len(raw):
            continue
        cols = _map_table(table, raw, names)
        detail_map = cols.pop("_detail")
        detail_map.update({"kernel_source": "kernel_source", "op_name": "op_name", "version": "version_reported"})
        prov = _provenance_of(f.parent)
        yield pd.DataFrame({
            "kind": "op", "source": SOURCE, "engine": framework.lower(), "engine_version": version, "status": "ok",
            "gpu": names.gpu(system), **cols, "op_ms": lat,
            "detail": detail_from_columns(raw, detail_map, {"table": table, "provenance": prov}),
            "run_id": f"{SOURCE}:op_perf/{system}/{family}/{framework}/{version}",
        })


_OPS_NOTES = {"sample": "op tables: every communication row kept, 1 in {every} of the other rows (stable hash; "
                        "--ops all imports everything)",
              "comm": "op tables: communication rows only (--ops comm)",
              "all": "op tables: every row (--ops all)",
              "none": "op tables not read (--ops none)"}


def stream_aiconfigurator(path: str | Path, ops: str = "sample", sample_every: int = DEFAULT_SAMPLE_EVERY,
                          progress: bool = False) -> tuple[Iterator[pd.DataFrame], ImportReport]:
    """The import as a stream of schema frames (end-to-end rows, then one frame per op table) and its report.

    Everything that can fail on names or on the end-to-end files fails before the first frame; the report is
    complete once the stream is exhausted. Memory holds one op table at a time (for `--ops all`). Rows repeated
    across op tables are not collapsed here (the store keeps one copy).
    """
    if ops not in OPS_MODES:
        raise InputError(f"--ops must be one of {', '.join(OPS_MODES)}, not {ops!r}")
    if sample_every < 1:
        raise InputError("sample_every must be at least 1")
    folder = require_path(path, SOURCE, is_dir=True)
    report = ImportReport(SOURCE, str(folder))
    names = NameResolver()
    e2e = _import_e2e(folder, report, names)
    files = _op_files(folder) if ops != "none" else []
    _check_op_names(files, names)
    names.raise_if_unknown(SOURCE)
    report.notes.append(_OPS_NOTES[ops].format(every=sample_every))
    if (folder / "fpm_golden_runs_vllm").is_dir():
        report.notes.append("fpm_golden_runs_vllm/ is a separate source: `layoutcast import fpm PATH`")

    def frames() -> Iterator[pd.DataFrame]:
        yield finish(e2e, report, final=False)
        for frame in _op_frames(files, ops, sample_every, report, names, progress):
            yield finish(frame, report, final=False)
        report.check_balance()

    return frames(), report


def import_aiconfigurator(path: str | Path, ops: str = "sample", sample_every: int = DEFAULT_SAMPLE_EVERY,
                          progress: bool = False) -> tuple[pd.DataFrame, ImportReport]:
    """End-to-end rows and (per `ops`) op_perf rows of the aiconfigurator folder `path` in the schema, as one frame
    (identical rows across op tables collapsed too)."""
    stream, report = stream_aiconfigurator(path, ops=ops, sample_every=sample_every, progress=progress)
    frame = pd.concat([f for f in stream if len(f)], ignore_index=True)
    kept = drop_duplicate_rows(frame, report)
    report.rows_kept -= len(frame) - len(kept)
    report.check_balance()
    return kept, report
