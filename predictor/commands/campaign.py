"""`layoutcast campaign`: an active-learning collection campaign (collect.campaign) from the command line.

Candidates: `--space FILE` enumerates valid, memory-feasible configurations (vllm, torch); `--pool` (replay) takes the
configurations of recorded rows, narrowed by `--space` when given. Restarting the same command resumes the campaign
from the store. `--out DIR` writes measured.csv, runs.csv, model.joblib, learning_curve.png and campaign.json.
"""

from __future__ import annotations

import json
import sys

from features.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("campaign", help="measure the configurations that teach the most, until a budget is spent")
    p.add_argument("--backend", required=True, choices=["vllm", "torch", "replay"], help="measurement backend")
    p.add_argument("--pool", default=None, help="replay: a schema CSV/parquet, SOURCE:PATH for an importer "
                   "(e.g. dli:../shared/data/public/nvidia_dli_nim_genaiperf), or a store URL")
    p.add_argument("--space", default=None, help="campaign space file (YAML/JSON): models, GPUs, layouts, workloads, "
                   "knobs, constraints")
    p.add_argument("--budget", required=True, help="number of runs (e.g. 40) or GPU-hours (e.g. 2.5gpu-h)")
    p.add_argument("--strategy", default="uncertainty", choices=["random", "uncertainty", "search"])
    p.add_argument("--store", default=None, help="store URL or SQLite path (default: $LAYOUTCAST_STORE or "
                   "~/.layoutcast/measurements.sqlite)")
    p.add_argument("--out", default=None, help="folder for measured.csv, model.joblib, learning_curve.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4, help="runs chosen per iteration (default 4)")
    p.add_argument("--init", type=int, default=0, help="size of the space-filling first batch (default: --batch)")
    p.add_argument("--workers", type=int, default=1, help="parallel local worker processes (default 1)")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="dispatch runs as Ray tasks (auto, ray://host:port, "
                   "or local)")
    p.add_argument("--campaign", default=None, metavar="ID", help="campaign id (default: derived from the settings, "
                   "so the same command resumes)")
    p.add_argument("--objective", default=None, choices=["throughput", "makespan", "tpot", "ttft", "layer"],
                   help="what search optimises (default: throughput per GPU; layer time for step campaigns)")
    p.add_argument("--targets", default=None, help="comma-separated targets the model learns (default: the "
                   "objective's, TTFT and TPOT)")
    p.add_argument("--scenario", default=None, help="comma-separated configuration columns that make a scenario "
                   "(default: everything but the layout, GPU count and engine knobs)")
    p.add_argument("--gpu", default=None, help="vllm: the catalog name of this machine's GPU (default: detected; "
                   "`cpu` for vLLM-CPU)")
    p.add_argument("--mode", default="offline", choices=["offline", "online"], help="vllm backend mode")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a vLLM run may take")
    p.add_argument("--device", default=None, help="torch: cpu or cuda[:N] (default: cuda if present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    p.add_argument("--json", action="store_true", help="print the campaign summary as one JSON document")
    p.set_defaults(func=run)


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else ()


def _candidates(args, space):
    """(candidates, replay backend or None, kind) for the chosen backend."""
    from collect.sampler import enumerate_space, narrow_pool, pool_candidates

    if args.backend == "replay":
        from collect.backends.replay import ReplayBackend
        from collect.dispatch import load_pool

        if not args.pool:
            raise InputError("the replay backend needs --pool (the recorded rows it answers from)")
        rb = ReplayBackend(load_pool(args.pool))
        cand = pool_candidates(rb.frame)
        kinds = cand["kind"].astype("string").fillna("").value_counts()
        kind = space.kind if space else next((k for k in ("serving", "step") if k in kinds.index), None)
        if kind is None:
            raise InputError(f"pool {args.pool!r} has no serving or step rows")
        cand = narrow_pool(cand, space) if space else cand[cand["kind"] == kind].reset_index(drop=True)
        if cand.empty:
            raise InputError(f"no configuration of pool {args.pool!r} is inside the space")
        return cand, rb, kind
    if args.pool:
        raise InputError("--pool is for the replay backend; the vllm and torch backends measure a --space")
    if space is None:
        raise InputError(f"the {args.backend} backend needs --space (which configurations to measure)")
    if args.backend == "torch" and space.kind != "step":
        raise InputError("the torch backend measures decoder steps: use a space file with `kind: step`")
    if args.backend == "vllm" and space.kind != "serving":
        raise InputError("the vllm backend measures serving: use a space file with `kind: serving`")
    cand = enumerate_space(space)
    return cand, None, space.kind


def _local_device(args, cand):
    """The GPU label local runs carry; candidates on other GPUs cannot be measured here."""
    if args.backend == "vllm":
        from collect.backends.vllm import detect_gpu, vllm_install
        from features.catalog import resolve_gpu

        gpu = resolve_gpu(args.gpu).name if args.gpu else detect_gpu(vllm_install())
    else:
        from collect.backends.torch_step import catalog_gpu_name, device_info, resolve_device

        dev = resolve_device(args.device)
        gpu = "cpu" if not dev.startswith("cuda") else catalog_gpu_name(device_info(dev)["device_name"])
    here = cand[cand["gpu"] == gpu].reset_index(drop=True)
    if here.empty:
        raise InputError(f"this machine's device is {gpu!r}, which the space does not list (its GPUs: "
                         f"{', '.join(sorted(cand['gpu'].dropna().unique()))}); give --gpu or use --ray")
    return here, gpu


def run(args) -> int:
    from rich.console import Console

    from collect.campaign import Campaign, CampaignSettings, PoolEvaluator, default_targets, parse_budget
    from collect.acquisition import resolve_objective
    from collect.dispatch import BackendSpec, install_backend, make_dispatcher
    from collect.sampler import load_space
    from collect.store import Store

    if args.batch < 1 or args.workers < 1 or args.init < 0 or args.timeout <= 0:
        raise InputError("--batch and --workers must be at least 1, --init not negative, --timeout positive")
    budget = parse_budget(args.budget)
    space = load_space(args.space) if args.space else None
    cand, rb, kind = _candidates(args, space)
    options = dict(space.backend_options) if space else {}
    if args.backend == "replay":
        options["pool"] = args.pool
    elif args.backend == "vllm":
        options.update(mode=args.mode, timeout_s=args.timeout)
    else:
        options.update(device=args.device)
    if args.backend != "replay" and not args.ray:
        cand, gpu = _local_device(args, cand)
        if args.backend == "vllm":
            options["gpu"] = gpu
    spec = BackendSpec.make(args.backend, **options)
    if rb is not None:
        install_backend(spec, rb)
    objective = resolve_objective(args.objective or (space.objective if space else None) or None, kind)
    if rb is not None:
        from collect.sampler import answerable

        cand = answerable(cand, rb.frame, objective.target)
        if cand.empty:
            raise InputError(f"pool {args.pool!r} records no {objective.target} for any configuration in the space")
    scenario = _csv(args.scenario) or (space.scenario if space and space.scenario else ())
    settings_kwargs = {"scenario": scenario} if scenario else {}
    settings = CampaignSettings(backend=args.backend, strategy=args.strategy, budget=budget, batch=args.batch,
                                seed=args.seed, objective=objective.name, targets=_csv(args.targets),
                                init_runs=args.init, **settings_kwargs)
    err = Console(stderr=True)
    store = Store(args.store)
    evaluator = None
    if rb is not None:
        targets = tuple(dict.fromkeys((objective.target,) + (settings.targets or default_targets(kind, objective))))
        evaluator = PoolEvaluator(rb.frame, objective, settings.scenario, targets, kind)
    dispatcher = make_dispatcher(spec, store, workers=args.workers, ray_address=args.ray)
    try:
        campaign = Campaign(settings, cand, dispatcher, store, campaign_id=args.campaign, evaluator=evaluator,
                            progress=not args.quiet and not args.json,
                            log=None if args.quiet else err.print)
        err.print(f"campaign {campaign.campaign_id}: {len(campaign.cand):,} candidate configurations, "
                  f"budget {budget.label()}, strategy {args.strategy}, store {store!r}")
        result = campaign.run()
    finally:
        dispatcher.close()
    written = {}
    if args.out:
        from collect.campaign_outputs import write_outputs

        written = write_outputs(result, args.out)
    summary = result.summary()
    summary["outputs"] = {k: str(v) for k, v in written.items()}
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    else:
        _print_summary(result, written)
    store.close()
    return 0


def _print_summary(result, written) -> None:
    from rich.console import Console
    from rich.table import Table

    from collect.campaign_outputs import runs_table

    t = Table(title=f"campaign {result.campaign_id}")
    for c in ("#", "iter", "configuration", "status", "est. GPU-h"):
        t.add_column(c, justify="right" if c in ("#", "iter", "est. GPU-h") else "left")
    for _, r in runs_table(result.runs).iterrows():
        t.add_row(str(r["seq"]), str(r["iteration"]), r["config"], str(r["status"]),
                  "-" if r["cost_gpu_h"] is None else f"{float(r['cost_gpu_h']):.3g}")
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(t)
    last = result.curve[-1] if result.curve else None
    if last is not None:
        line = f"{last.runs} runs ({last.ok_runs} ok), {last.gpu_hours:.3g} estimated GPU-hours"
        if last.heldout:
            line += "; held-out median error " + ", ".join(f"{k} {v:.1%}" for k, v in last.heldout.items())
        elif last.oof_median_ape is not None:
            line += f"; cross-validated median error {last.oof_median_ape:.1%}"
        if "within_3pct" in last.best:
            line += f"; best layout within 3% in {last.best['within_3pct']:.0%} of scenarios"
        out.print(line)
    for k, v in written.items():
        out.print(f"wrote {k}: {v}")
