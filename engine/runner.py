"""Runs a config as a store run: picks the method, records the run's status and its log (engine.run_log). Nothing
else.

The entry points: `run(cfg)` (validate, register, execute), `execute(cfg, store, run_id)` (the worker's and the
CLI's), `rlhf_chain(cfg)` (a reward model, then PPO with it) and `prepare_prompts(cfg)` (the train / hold-out
split, validated before a run is registered). What a run does is its method's: a policy method
(engine/methods/{ppo,dpo,ai_preferences,online}.py) inside the shared lifecycle (engine/methods/lifecycle.py), or
the reward model (engine/methods/reward_model.py).

Every number goes to the store as soon as it exists, so a crash loses nothing already computed and the UI can
follow live. Bad input fails before any model is loaded; a failing run is marked `failed` with its traceback, a
cancelled one `cancelled` (methods check for cancellation between steps).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from engine.config import RunConfig
from engine.methods.lifecycle import prepare_prompts
from engine.progress import Progress, RunCancelled, RunInterrupted, stop_reason, stop_requested
from engine.store import Store

log = logging.getLogger(__name__)

__all__ = ["Progress", "RunCancelled", "execute", "policy_method", "prepare_prompts", "resume_problem", "rlhf_chain",
           "run"]


def policy_method(name: str):
    """The PolicyMethod that trains `name` (every method but reward_model). ValueError for another name."""
    if name == "ppo":
        from engine.methods.ppo import PPO

        return PPO()
    if name == "dpo":
        from engine.methods.dpo import DPO

        return DPO()
    if name == "dpo_ai":
        from engine.methods.ai_preferences import DPOAI

        return DPOAI()
    if name in ("rloo", "grpo"):
        from engine.methods.online import Online

        return Online()
    raise ValueError(f"no policy method named {name!r}")


def _dispatch(cfg: RunConfig, store: Store, run_id: str, notify: Callable[[Progress], None],
              resume: bool = False) -> dict[str, Any]:
    def check_cancel() -> None:
        if stop_requested():
            raise RunInterrupted(stop_reason())
        if store.is_cancel_requested(run_id):
            raise RunCancelled()

    if cfg.method == "reward_model":
        from engine.methods.reward_model import run_reward_model

        return run_reward_model(cfg, store, run_id, notify, check_cancel)
    from engine.methods.lifecycle import run_policy

    return run_policy(policy_method(cfg.method), cfg, store, run_id, notify, check_cancel, resume=resume)


def execute(cfg: RunConfig, store: Store, run_id: str,
            on_progress: Callable[[Progress], None] | None = None, *, resume: bool | None = None) -> dict[str, Any]:
    """Run `cfg` as store run `run_id` (which must exist); returns the summary. Marks the run's status and keeps
    its log in the store (phases, progress lines, warnings and errors logged meanwhile, how it ended).

    resume: True continues the run from its newest checkpoint (a failed, cancelled or interrupted run, or one
    queued again with `store.reopen(run_id, to="queued")`, or already claimed as running): the steps after the
    checkpoint are redone, the before-evaluation is not; ValueError, before anything changes, when it cannot be
    resumed (`resume_problem`). None (the default): resume when the run can be, i.e. it has a checkpoint (a fresh
    run has none, so it starts). False: start from step 0.
    """
    from engine.run_log import RunLog

    problem = resume_problem(store, run_id) if resume is not False else None
    if resume and problem:
        raise ValueError(problem)
    resume = problem is None if resume is None else resume
    run_log = RunLog(store, run_id)  # the run's stored log: phases, progress, warnings, errors, how it ended
    notify = run_log.wrap(on_progress)
    with run_log.capturing():
        try:
            _start(store, run_id, resume)
            run_log.line("resumed from its newest checkpoint" if resume else "started", phase="starting")
            summary = _dispatch(cfg, store, run_id, notify, resume)
        except RunCancelled:
            run_log.line("cancelled by the user: stopped after the current step", "warning")
            _record_end(store, run_id, "cancelled", error="cancelled by the user")
            log.info("run %s cancelled", run_id)
            return {}
        except BaseException as exc:  # record every failure, then let it propagate
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            text = str(exc).strip()
            # A ConfigError's first line is only "invalid config:"; its field lines are the useful part.
            message = " ".join(line.strip() for line in text.splitlines()) if text else type(exc).__name__
            run_log.line(f"{status}: {type(exc).__name__}: {message}", "error" if status == "failed" else "warning")
            _record_end(store, run_id, status, error=f"{type(exc).__name__}: {message}",
                        traceback=traceback.format_exc())
            raise
        if not _record_end(store, run_id, "completed"):
            raise RuntimeError(f"run {run_id} trained to the end but its completion could not be recorded in the "
                               "store")
    notify(Progress("done", 1, 1, "completed"))  # the log's last line
    return summary


def execute_rank(cfg: RunConfig, store, run_id: str, resume: bool) -> dict[str, Any]:
    """Run `cfg` as a rank other than 0 of a launched multi-process run: train in step with rank 0, which records the
    run's status (`execute`); `store` is an engine.launch.ReadOnlyStore. Returns this rank's part of the summary."""
    from engine.methods.lifecycle import run_policy

    # No cancel checks of its own: rank 0 decides between steps and every rank follows (a rank stopping alone would
    # leave the others waiting at their next collective).
    try:
        return run_policy(policy_method(cfg.method), cfg, store, run_id, lambda p: None, lambda: None, resume=resume)
    except RunCancelled:
        return {}


def _record_end(store: Store, run_id: str, status: str, **kw: Any) -> bool:
    """Store the run's end; when the store cannot be written (read-only, a full disk, unreachable) log one clear
    error instead of a second traceback, and stop heartbeating the run so that, once its lease expires, any process
    marks it interrupted (it is not left `running` forever). Returns whether the end was stored."""
    from engine.store import LeaseLost

    try:
        store.set_status(run_id, status, **kw)
        return True
    except LeaseLost:
        raise
    except Exception as exc:
        store.abandon(run_id)
        log.error("run %s: could not record it as %s in %r (%s: %s); it will be marked interrupted once its lease "
                  "(%g s) expires; resume it from its last checkpoint", run_id, status, store,
                  type(exc).__name__, " ".join(str(exc).split())[:300], store.lease_s)
        return False


def resume_problem(store: Store, run_id: str) -> str | None:
    """Why run `run_id` cannot be resumed, or None when it can (for a Resume button; `execute` raises it)."""
    from engine.checkpoint import is_resumable

    record = store.get_run(run_id)
    if record.status == "completed":
        return f"run {run_id} completed: nothing to resume"
    if record.method == "reward_model" or not policy_method(record.method).resumable:
        return f"a {record.method} run cannot be resumed: start it again"
    if not any(is_resumable(c.path) for c in store.checkpoints(run_id)):
        return f"run {run_id} has no checkpoint to resume from (checkpoint.every_steps: how often a run saves one)"
    return None


def _start(store: Store, run_id: str, resume: bool) -> None:
    if not resume:
        store.set_status(run_id, "running")
        return
    record = store.get_run(run_id)
    if record.status == "queued":
        store.set_status(run_id, "running")
    elif record.status == "running" and run_id not in store.owned_runs():  # someone else's live run
        raise ValueError(f"run {run_id} is running in another process ({record.owner}): it cannot be resumed here")
    elif record.status != "running":  # failed / cancelled / interrupted (a running one was claimed by its worker)
        store.reopen(run_id)


def run(cfg: RunConfig, store: Store | None = None, on_progress: Callable[[Progress], None] | None = None,
        on_run: Callable[[str, RunConfig], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Validate, register and execute a run; returns (run_id, summary). The Python entry point.

    `on_run(run_id, cfg)` is called once the run is registered, before it executes (the CLI prints the id).
    """
    cfg.check()
    prepare_prompts(cfg)  # a bad data source fails here, before the run is registered (cheap: text only)
    store = store or Store()
    if cfg.model.init_from:  # an unknown run, a missing checkpoint, another base: refused before it is registered
        from engine.policy_source import resolve_init_from

        resolve_init_from(store, cfg)
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
    if on_run is not None:
        on_run(run_id, cfg)
    summary = execute(cfg, store, run_id, on_progress)
    return run_id, summary


def rlhf_chain(cfg: RunConfig, store: Store | None = None, on_progress=None, keep_rewards: bool | None = None,
               on_run: Callable[[str, RunConfig], None] | None = None) -> tuple[str, str]:
    """RLHF in two runs: a reward model on the human pairs, then PPO rewarded by it; returns (rm_run_id, ppo_run_id).

    Both runs use cfg (model, data, evaluation, ppo and reward_model sections; cfg is not changed). The reward-model
    run is named cfg.name when cfg.method is "reward_model", else "<cfg.name>-reward-model"; the PPO run is built by
    `engine.methods.reward_model.ppo_config` (keep_rewards None: cfg.reward_model.keep_rewards). `on_run(run_id,
    run_cfg)` is called as each run is registered, before it executes (the CLI prints the ids). Raises RuntimeError
    when the reward-model run does not complete (it was cancelled); a failing run raises its error. PPO is then not
    started.
    """
    from engine.methods.common import replace
    from engine.methods.reward_model import ppo_config

    store = store or Store()
    name = cfg.name if cfg.method == "reward_model" else f"{cfg.name}-reward-model"
    rm_id, rm_summary = run(replace(cfg, method="reward_model", name=name), store, on_progress, on_run)
    status = store.get_run(rm_id).status
    if status != "completed":
        raise RuntimeError(f"reward-model run {rm_id} ended {status}; PPO was not started")
    ppo_id, _ = run(ppo_config(cfg, rm_summary, rm_id, keep_rewards), store, on_progress, on_run)
    return rm_id, ppo_id
