"""Command line: `python -m engine run CONFIG.yaml`, `resume RUN`, `worker`, `playground`, `runs`, `show RUN`,
`rescore RUN` (the relevance check added from stored responses), `export RUN` (its data; `--policy OUT [--step N] [--merge]`: its trained policy), `init`, `validate`.

`run` executes a run in this process, holding its lease (owner "cli-<host>-<pid>-<hex>", heartbeated by a thread) so
no other process takes it for dead while it lives. With method reward_model and reward_model.then_ppo it runs RLHF's
two stages (engine.runner.rlhf_chain) and prints both run ids. `worker` serves the store's queue (engine.worker).

A thin layer over engine.runner and engine.store: it parses arguments, prints, and exits non-zero
with a clear message on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

# Progress-bar postfix: (label, metric key) of PPO and of the TRL methods; those a step logs are shown.
POSTFIX = (("kl", "objective/kl"), ("ret", "ppo/returns/mean"), ("reward", "env/reward_mean"),
           ("loss", "rm/loss"), ("acc", "rm/accuracy"), ("loss", "dpo/loss"), ("margin", "dpo/rewards/margins"))


# What a phase's `done` counts when its Progress does not say (Progress.unit).
UNITS = {"train": "step", "eval_before": "response", "eval_after": "response", "label": "prompt"}


class ProgressBars:
    """The CLI's progress listener: one tqdm bar per phase, printed messages for the rest.

    A bar is drawn at its phase's first report, which the phases send at their start (done = 0, or a resumed run's
    step), so the rate and the ETA count from the phase's start: `initial` keeps steps done before this process
    out of the rate, and smoothing 0 makes the rate the average since the start (not the last update's burst)."""

    def __init__(self, file=None) -> None:
        self.bars: dict = {}
        self.file = file

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if p.phase == "done":  # a chain's next run draws fresh bars
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()
        if p.total and p.phase != "done":
            bar = self.bars.get(p.phase)
            if bar is None:
                unit = getattr(p, "unit", "") or UNITS.get(p.phase, "item")
                bar = self.bars[p.phase] = tqdm(total=p.total, initial=p.done, desc=p.phase, unit=unit,
                                                smoothing=0, file=self.file)
            bar.update(max(p.done - bar.n, 0))
            shown = {label: p.metrics[key] for label, key in POSTFIX if key in (p.metrics or {})}
            if shown:  # only what this method logs: a reward model has no KL to show as 0
                bar.set_postfix({label: f"{value:.3f}" for label, value in shown.items()})
            bar.refresh()
            if p.done >= p.total:
                bar.close()
        elif p.message:
            print(p.message, flush=True, file=self.file)


def _store(args, owner: str | None = None):
    from engine.store import Store

    return Store(args.db or None, owner=owner)


def _is_store_error(exc: BaseException) -> bool:
    """An error of the database layer (a corrupt or foreign file given as --db, a locked or unreadable store)."""
    import sqlite3

    return isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("sqlalchemy")


def _printable(text: object) -> str:
    """A stored name as one printable line: control and direction characters escaped (a forged extra line
    or reordered text in the terminal otherwise)."""
    import unicodedata

    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def cmd_init(args) -> int:
    from engine.presets import preset

    cfg = preset(args.preset)
    if args.tiny:
        cfg.model.name_or_path = "builtin:tiny-gpt2"
    path = cfg.save(args.path)
    print(f"wrote the {args.preset} config to {path}")
    return 0


def cmd_validate(args) -> int:
    from engine.config import RunConfig
    from engine.runner import prepare_prompts

    cfg = RunConfig.load(args.config).check()
    train, holdout = prepare_prompts(cfg)
    print(f"{args.config}: valid ({len(train)} train prompts, {len(holdout)} {cfg.evaluation.split} prompts "
          f"evaluated)")
    return 0


def cmd_run(args) -> int:
    from engine.config import ConfigError, RunConfig
    from engine.resources import local_problems
    from engine.runner import execute, prepare_prompts
    from engine.store import new_owner_id
    from engine.worker import progress_listener

    cfg = RunConfig.load(args.config)
    for override in args.set or []:
        _apply_override(cfg, override)
    cfg.check()
    if problems := local_problems(cfg):  # this process executes it: more GPUs than this machine has
        raise ConfigError(problems)
    from engine.distributed import launched_world

    if launched_world() > 1:  # one of several processes `accelerate launch` started
        return _run_rank(cfg, args)
    prepare_prompts(cfg)  # a bad data source fails here, before the run is registered
    if cfg.distributed.num_processes > 1:  # start again on that many processes (engine.launch)
        from engine.launch import relaunch

        return relaunch(cfg, _engine_args(args))
    store = _store(args, owner=new_owner_id("cli"))
    if cfg.model.init_from:  # continue training: the source policy must exist and fit, before the run is registered
        from engine.policy_source import resolve_init_from

        resolve_init_from(store, cfg)
    on_progress = ProgressBars()
    bars = on_progress.bars

    # A kill (SIGTERM) is recorded like Ctrl-C: the run is marked interrupted, not left "running", after a
    # checkpoint of its last complete step.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if cfg.method == "reward_model" and cfg.reward_model.then_ppo:
        return _run_rlhf_chain(cfg, store, on_progress)
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
    store.claim_run(run_id)  # the lease: this process owns the run (no worker takes it) and heartbeats it
    print(f"run {run_id} ({store.url})")
    try:
        summary = execute(cfg, store, run_id, progress_listener(store, run_id, then=on_progress))
    except KeyboardInterrupt:
        print(f"run {run_id}: interrupted", file=sys.stderr)
        return 130
    for bar in bars.values():
        bar.close()
    return _report(store, run_id, summary)


def _engine_args(args) -> list[str]:
    """This `run` command's arguments, for each launched process."""
    out = ["--db", args.db] if args.db else []
    out += ["run", args.config]
    for override in args.set or []:
        out += ["--set", override]
    return out


def _run_rank(cfg, args) -> int:
    """`run` in one of several launched processes: rank 0 registers the run and writes the store as a lone process
    does; the others get its id, train in step and write nothing (engine.launch.ReadOnlyStore)."""
    from engine.distributed import group_from_env
    from engine.launch import ReadOnlyStore
    from engine.runner import execute, execute_rank, prepare_prompts
    from engine.store import new_owner_id
    from engine.worker import progress_listener

    group = group_from_env()
    if cfg.method == "reward_model" and cfg.reward_model.then_ppo:
        raise SystemExit("error: an RLHF chain (reward_model.then_ppo) runs in one process")
    store, run_id = None, None
    if group.is_main:
        try:
            prepare_prompts(cfg)
            store = _store(args, owner=new_owner_id("cli"))
            run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
            store.claim_run(run_id)
        finally:  # the others wait for the id; None (rank 0 failed) lets them exit
            group.broadcast(run_id)
        print(f"run {run_id} ({store.url}, {group.world} processes)", flush=True)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        on_progress = ProgressBars()
        try:
            summary = execute(cfg, store, run_id, progress_listener(store, run_id, then=on_progress), resume=False)
        except KeyboardInterrupt:
            print(f"run {run_id}: interrupted", file=sys.stderr)
            return 130
        for bar in on_progress.bars.values():
            bar.close()
        return _report(store, run_id, summary)
    run_id = group.broadcast(None)
    if run_id is None:
        return 1
    execute_rank(cfg, ReadOnlyStore(_store(args)), run_id, resume=False)
    return 0


def cmd_resume(args) -> int:
    """Continue a failed, cancelled or interrupted run from its newest checkpoint (engine.runner.execute)."""
    from engine.config import RunConfig
    from engine.distributed import group_from_env, launched_world
    from engine.runner import Progress, execute
    from engine.store import new_owner_id
    from engine.worker import progress_listener

    if launched_world() > 1 and not group_from_env().is_main:  # a launched run's other ranks: train, write nothing
        from engine.launch import ReadOnlyStore
        from engine.runner import execute_rank

        store = ReadOnlyStore(_store(args))
        execute_rank(RunConfig.from_yaml(store.get_run(args.run).config_yaml), store, args.run, resume=True)
        return 0
    store = _store(args, owner=new_owner_id("cli"))  # the resumed run is this process's lease, as with `run`
    cfg = RunConfig.from_yaml(store.get_run(args.run).config_yaml)
    if cfg.distributed.num_processes > 1 and launched_world() == 1:  # resume on as many processes as it ran on
        from engine.launch import relaunch

        return relaunch(cfg, (["--db", args.db] if args.db else []) + ["resume", args.run])

    def on_progress(p: Progress) -> None:
        if p.message and (p.phase != "train" or p.done == p.total or p.done % 10 == 0):
            print(p.message, flush=True)

    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"run {args.run}: resuming ({store.url})")
    try:
        summary = execute(cfg, store, args.run, progress_listener(store, args.run, then=on_progress), resume=True)
    except ValueError as exc:  # e.g. nothing to resume from (the run is left as it was)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"run {args.run}: interrupted", file=sys.stderr)
        return 130
    return _report(store, args.run, summary)


def cmd_adopt(args) -> int:
    """One of the processes a worker launched for a run with several processes (engine.launch.execute_launched):
    rank 0 adopts the run's lease from the worker and executes it, writing the store; the others train in step and
    write nothing. Exit 1 when the run no longer waits for them (cancelled meanwhile, or its lease expired)."""
    from engine.config import RunConfig
    from engine.distributed import group_from_env, launched_world
    from engine.launch import ReadOnlyStore
    from engine.runner import execute, execute_rank, resume_problem
    from engine.store import new_owner_id
    from engine.worker import progress_listener

    if launched_world() == 1:
        print("error: `adopt` runs in the processes a worker launches; use `resume RUN`", file=sys.stderr)
        return 2
    group = group_from_env()
    if not group.is_main:
        resume = group.broadcast(None)
        if resume is None:
            return 1
        store = ReadOnlyStore(_store(args))
        execute_rank(RunConfig.from_yaml(store.get_run(args.run).config_yaml), store, args.run, resume=resume)
        return 0
    store, resume = _store(args, owner=new_owner_id("ddp")), None
    try:
        record = store.adopt_run(args.run, args.from_owner)
        if record is not None:
            cfg = RunConfig.from_yaml(record.config_yaml)
            resume = resume_problem(store, args.run) is None  # a re-queued run with a checkpoint continues from it
    finally:  # the others wait for the decision; None (not adopted, or rank 0 failed) lets them exit
        group.broadcast(resume)
    if resume is None:
        print(f"run {args.run} no longer waits for these processes (cancelled, or its lease expired)", file=sys.stderr)
        return 1
    print(f"run {args.run}: {group.world} processes, {'resuming' if resume else 'starting'} ({store!r})", flush=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        execute(cfg, store, args.run, progress_listener(store, args.run), resume=resume)
    except KeyboardInterrupt:
        return 130
    except Exception:  # stored with its traceback by the runner
        return 1
    return 0 if store.get_run(args.run).status == "completed" else 1


def _report(store, run_id: str, summary: dict) -> int:
    """Print a finished run's status and summary; the exit code (0: completed)."""
    from engine.evaluate import format_summary

    record = store.get_run(run_id)
    print(f"run {run_id}: {record.status}")
    if summary.get("before"):
        print(format_summary(summary))
    if "pairwise_accuracy" in summary:
        print(f"held-out pairwise accuracy {summary['pairwise_accuracy']:.3f}; model {summary.get('model_path')}")
    if "wall_seconds" in summary:
        print(f"wall time {summary['wall_seconds']:.0f} s, peak RSS {summary['peak_rss_gb']:.2f} GB")
        if summary.get("phase_seconds"):
            print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["phase_seconds"].items()))
    return 0 if record.status == "completed" else 1


def _run_rlhf_chain(cfg, store, on_progress) -> int:
    """reward_model.then_ppo: the reward-model run, then the PPO run it rewards (engine.runner.rlhf_chain)."""
    from engine.runner import rlhf_chain
    from engine.worker import progress_listener

    ids: list[str] = []
    listeners: list = []

    def on_run(run_id, run_cfg) -> None:
        store.claim_run(run_id)  # each stage under this process's lease, as a single run
        ids.append(run_id)
        listeners.append(progress_listener(store, run_id, then=on_progress))
        stage = "reward-model run" if run_cfg.method == "reward_model" else "PPO run"
        print(f"{stage} {run_id} ({run_cfg.name}, {store.url})", flush=True)

    try:
        rm_id, ppo_id = rlhf_chain(cfg, store, lambda p: listeners[-1](p), on_run=on_run)
    except KeyboardInterrupt:
        print(f"run {ids[-1] if ids else '?'}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # the reward-model run was cancelled: PPO not started
        print(f"error: {exc}", file=sys.stderr)
        return 1
    code = _report(store, rm_id, store.get_run(rm_id).summary or {})
    code = _report(store, ppo_id, store.get_run(ppo_id).summary or {}) or code
    print(f"reward-model run {rm_id} -> PPO run {ppo_id}")
    return code


def _raise_interrupt(signum, frame):
    """SIGTERM: the first one stops the run at its next step boundary (it saves a checkpoint and ends interrupted,
    resumable); a second one stops at once (the run still ends interrupted)."""
    from engine.progress import request_stop, stop_requested

    if not stop_requested():
        request_stop(f"signal {signum}")
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _apply_override(cfg, override: str) -> None:
    """`--set ppo.max_ppo_steps=3`: set one field, the value parsed as YAML."""
    from engine.config import ConfigError, FieldError, RunConfig

    if "=" not in override:
        raise ConfigError([FieldError(override, "overrides look like section.field=value")])
    key, raw = override.split("=", 1)
    data = cfg.to_dict()
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError([FieldError(key, f"{part!r} is not a config section")])
        node = node[part]
    from engine.config import load_yaml

    node[parts[-1]] = load_yaml(raw)
    new = RunConfig.from_dict(data)
    cfg.__dict__.update(new.__dict__)


def cmd_runs(args) -> int:
    store = _store(args)
    for run_id in store.expire_leases():  # any process that notices a dead owner says so
        print(f"run {run_id}: interrupted ({store.get_run(run_id).error})", file=sys.stderr)
    runs = store.list_runs()
    workers = store.list_workers()
    for w in workers:
        state = "live" if w.is_live(store.lease_s) else "silent"
        print(f"worker {w.id} ({w.host}, pid {w.pid}, {w.device or '?'}): {state}, heartbeat "
              f"{w.heartbeat_age_s:.0f} s ago, {'run ' + w.current_run if w.current_run else 'idle'}")
    if not runs:
        print("no runs yet")
        return 0
    print(f"{'id':24} {'status':11} {'method':6} {'step':>9}  {'created':19}  name")
    for r in runs:
        step = f"{r.step or 0}/{r.total_steps or '?'}"
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else ""
        line = f"{r.id:24} {r.status:11} {r.method:6} {step:>9}  {created:19}  {_printable(r.name or '')}"
        if r.status == "running" and r.owner:
            age = r.heartbeat_age_s
            line += f"  [{r.phase or '?'} · {r.owner} · heartbeat {age:.0f} s ago]" if age is not None else ""
        print(line)
    return 0


def cmd_worker(args) -> int:
    from engine.ray_cluster import EXECUTOR_ENV_VAR, RAY_ADDRESS_ENV_VAR, Executor

    if args.threads is not None:  # every run of this worker whose model.threads is 0 (engine.determinism)
        if args.threads < 1:
            print(f"error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        os.environ["RLAIF_LAB_THREADS"] = str(args.threads)
    env = dict(os.environ)
    if args.executor:
        env[EXECUTOR_ENV_VAR] = args.executor
    if args.ray_address:
        env[RAY_ADDRESS_ENV_VAR] = args.ray_address
    executor = Executor.from_env(env)  # RayUnavailable (exit 2) for an unknown executor or ray without an address
    kwargs = dict(once=args.once, poll_s=args.poll_s, lease_s=args.lease_s, idle_exit_s=args.idle_exit_s,
                  resume_interrupted=args.resume_interrupted)
    if executor.is_ray:  # a dispatcher: each run goes to the Ray cluster as a task (engine.ray_dispatcher)
        from engine.ray_dispatcher import serve as serve_ray

        return serve_ray(args.db or None, executor.address, **kwargs)
    from engine.worker import serve

    return serve(args.db or None, **kwargs)


def cmd_playground(args) -> int:
    from engine.playground import serve_forever

    n = serve_forever(args.db or None, idle_exit_s=args.idle_exit_s, once=args.once)
    print(f"playground server stopped after {n} request(s)", flush=True)
    return 0


def cmd_show(args) -> int:
    from engine.evaluate import format_summary

    store = _store(args)
    r = store.get_run(args.run)
    print(f"run {r.id}  {_printable(r.name)}  [{r.status}]  method={r.method}  step {r.step}/{r.total_steps}")
    init_from = _init_from(r.config_yaml)
    if init_from:
        print(f"continued from {_printable(init_from)}")
    if r.error:
        print("error: " + "\n".join(_printable(line) for line in r.error.splitlines()))
        if args.traceback and r.traceback:
            print(r.traceback)
    wide = store.metrics_wide(r.id, keys=["objective/kl", "ppo/returns/mean", "env/reward_mean"])
    if len(wide):
        print(wide.tail(10).to_string(float_format=lambda v: f"{v:.4f}"))
    alarms = store.alarms(r.id)
    if len(alarms):
        print(f"alarms ({len(alarms)}):")
        for a in alarms.itertuples():
            where = ", ".join(f"step {e['step']} #{e['idx']}" for e in a.evidence) or "none"
            print(f"  step {a.step} (since {a.since_step})  {a.name}  value {a.value:.4g} vs threshold "
                  f"{a.threshold:.4g}: {_printable(a.message)}  evidence: {where}")
    else:
        print("alarms: none")
    summary = r.summary or {}
    if summary.get("before"):
        print(format_summary(summary))
    return 0


def cmd_rescore(args) -> int:
    from engine.evaluate import format_summary
    from engine.rescore import RescoreError, add_relevance

    store = _store(args)
    r = store.get_run(args.run)
    try:
        summary = add_relevance(store, r.id)
    except (RescoreError, ImportError) as exc:  # ImportError: the MiniLM package is missing here too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {r.id}: relevance scored for its {summary['holdout_prompts']} prompts' stored responses")
    print(format_summary(summary))
    return 0


def _init_from(config_yaml: str) -> str:
    """model.init_from of a stored config ("" when unset or unreadable)."""
    from engine.config import ConfigError, RunConfig

    try:
        return RunConfig.from_yaml(config_yaml).model.init_from
    except ConfigError:
        return ""


def cmd_export(args) -> int:
    store = _store(args)
    r = store.get_run(args.run)
    if args.policy:
        return _export_policy(args, store, r.id)
    if args.merge or args.step is not None:
        print("error: --merge and --step go with --policy OUT", file=sys.stderr)
        return 2
    out = Path(args.out or f"export-{r.id}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(r.config_yaml)
    store.metrics(r.id).to_csv(out / "metrics.csv", index=False)
    store.metrics_wide(r.id).to_csv(out / "metrics_wide.csv")
    store.evaluations(r.id).to_csv(out / "evaluations.csv", index=False)
    store.samples(r.id).to_csv(out / "samples.csv", index=False)
    (out / "summary.json").write_text(json.dumps(r.summary or {}, indent=2))
    print(f"exported run {r.id} to {out}/")
    return 0


def _export_policy(args, store, run_id: str) -> int:
    """`export RUN --policy OUT[.zip] [--step N] [--merge]`: the run's policy as a from_pretrained directory, or a
    zip when OUT ends in .zip (engine.policy_export)."""
    from engine.policy_export import export_policy, policy_zip
    from engine.policy_source import PolicySourceError

    out = Path(args.policy)
    try:
        if out.suffix == ".zip":
            if out.exists():
                print(f"error: {out} already exists", file=sys.stderr)
                return 2
            path = policy_zip(store, run_id, out, step=args.step, merge=args.merge)
        else:
            path = export_policy(store, run_id, out, step=args.step, merge=args.merge)
    except PolicySourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported run {run_id}'s {'checkpoint after step ' + str(args.step) if args.step is not None else 'policy'}"
          f"{' (adapter merged into its base)' if args.merge else ''} to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.presets import PRESETS  # light: config dataclasses only

    parser = argparse.ArgumentParser(prog="python -m engine", description="RLAIF Lab engine")
    parser.add_argument("--db", help="store path or SQLAlchemy URL (default: $RLAIF_LAB_DB or runs/rlaif_lab.db)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="write the default config as YAML")
    p.add_argument("path", nargs="?", default="config.yaml")
    p.add_argument("--tiny", action="store_true", help="use the built-in tiny GPT-2 policy")
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="start from a named preset: default (the measured run), seed-article, tour (about 2 min)")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("validate", help="check a config (fields and data) without running it")
    p.add_argument("config")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("run", help="run a config end to end")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. ppo.max_ppo_steps=3")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("resume", help="continue a stopped run from its newest checkpoint")
    p.add_argument("run")
    p.set_defaults(fn=cmd_resume)
    p = sub.add_parser("adopt", help="(internal) a process a worker launched for a run with several processes")
    p.add_argument("run")
    p.add_argument("--from", dest="from_owner", required=True, help="the worker that handed the run over")
    p.set_defaults(fn=cmd_adopt)
    p = sub.add_parser("runs", help="list runs (and the workers serving the store)")
    p.set_defaults(fn=cmd_runs)
    p = sub.add_parser("worker", help="claim queued runs from the store and execute them, one at a time")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--poll-s", type=float, default=1.0, help="seconds between looks at an empty queue")
    p.add_argument("--lease-s", type=float, default=None,
                   help="lease timeout in seconds (default $RLAIF_LAB_LEASE_S or 30)")
    p.add_argument("--idle-exit-s", type=float, default=None,
                   help="exit after this many seconds without a run to execute (default: never)")
    p.add_argument("--resume-interrupted", action="store_true",
                   help="queue again runs whose process died (lease expired) and resume them from their checkpoint")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="local: execute runs here; ray: send each to the Ray cluster as a task (default: "
                        "$RLAIF_LAB_EXECUTOR, else ray when $RAY_ADDRESS is set, else local)")
    p.add_argument("--ray-address", default=None, help="the Ray head's host:port (default: $RAY_ADDRESS)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for runs whose model.threads is 0 (default: $RLAIF_LAB_THREADS, else every "
                        "core); several workers on one machine: give each its share of the cores")
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("playground", help="serve the policy playground's generation requests (never takes a run)")
    p.add_argument("--once", action="store_true", help="exit when no request is queued")
    p.add_argument("--idle-exit-s", type=float, default=300.0,
                   help="exit after this many seconds without a request (0: never; default 300)")
    p.set_defaults(fn=cmd_playground)
    p = sub.add_parser("show", help="show one run")
    p.add_argument("run")
    p.add_argument("--traceback", action="store_true")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("rescore", help="add the relevance check to a completed run from its stored responses (a run "
                       "evaluated where the MiniLM encoder was missing)")
    p.add_argument("run")
    p.set_defaults(fn=cmd_rescore)
    p = sub.add_parser("export", help="export a run's config, metrics, samples and evaluations, or its policy")
    p.add_argument("run")
    p.add_argument("--out", help="directory for the config, metrics, samples and evaluations")
    p.add_argument("--policy", metavar="OUT", help="export the trained policy instead: a from_pretrained directory "
                   "(full weights, or the LoRA adapter) with the tokenizer and a model card; a zip if OUT ends in .zip")
    p.add_argument("--step", type=int, default=None, help="with --policy: the checkpoint after this step (default: "
                   "the final policy)")
    p.add_argument("--merge", action="store_true", help="with --policy: merge the LoRA adapter into its base model "
                   "and save one full model")
    p.set_defaults(fn=cmd_export)
    for sp in sub.choices.values():  # `--db` after the command works too: `python -m engine worker --db URL`
        sp.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    from engine.config import ConfigError
    from engine.migrations import SchemaVersionError
    from engine.ray_cluster import RayUnavailable
    from engine.store import StoreUnavailable

    try:
        return args.fn(args)
    except (ConfigError, SchemaVersionError, StoreUnavailable, RayUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _is_store_error(exc):
            raise
        # e.g. --db pointing at a file that is not a lab store: say so, not a page of SQLAlchemy traceback
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        print(f"error: the store {args.db or '(default)'} cannot be used: {detail}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # a launched rank (only they join a group): leave it before exiting
            from engine.distributed import leave_group

            leave_group()


if __name__ == "__main__":
    sys.exit(main())
