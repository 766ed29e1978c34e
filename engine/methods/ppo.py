"""Method "ppo": the lab's own PPO (engine/ppo.py) on the run's prompts, rewarded by the run's reward mix.

Responsible for: feeding PPOTrainer endless seeded batches of prompts, writing each step's metrics (with the judge
accounting and the reward-hacking alarms' values, engine.methods.ppo_alarms) and a few samples to the store,
stopping the run when an alarm listed in alarms.stop_on fires, the training's part of the summary (KL along training), and PPO's
checkpoints: every checkpoint.every_steps steps, and on cancel or Ctrl-C / SIGTERM between steps, a directory with

  policy.pt     the trainable weights: the whole policy, or its LoRA adapter, and the value head
  trainer.pt    Adam's state, the KL coefficient, the mini-batch shuffler's generator, the step count
  state.pt      the step, every RNG state (python, numpy, torch CPU/CUDA), the prompt batches' position,
                the reward normalisation's running statistics, the KL per step so far, the alarms' detector
                state (baselines, streaks) (written last)

from which a resumed run continues exactly where the uninterrupted one would have been.

Several processes (`distributed.num_processes`, docs/scaling.md): every rank draws the same prompt batch and steps on
its share; rank 0 alone writes the store, the samples (from its share), the alarms and the checkpoints, and decides
cancel / alarm stops, which every rank follows.

Not responsible for: the algorithm (engine/ppo.py, which knows no store), or the rest of the run (prompts,
evaluation, saving, summary: engine.methods.lifecycle).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from engine.checkpoint import PPO_STATE_FILE as STATE_FILE
from engine.config import FOCUS_SAMPLES, RunConfig
from engine.methods.lifecycle import PolicyMethod, PolicyRun
from engine.methods.ppo_alarms import RunAlarms
from engine.progress import Progress

log = logging.getLogger(__name__)


class PromptBatches:
    """Endless batches over the prompts, reshuffled (seeded) every pass; its position saves and restores.

    With a `focus` set and `share` > 0, round(size * share) prompts of every batch come from the focus set (its own
    reshuffled passes) and the rest from all prompts, as without it."""

    def __init__(self, items: list[str], size: int, seed: int, focus: list[str] | None = None,
                 share: float = 0.0) -> None:
        self.items, self.size = list(items), size
        self.rng = random.Random(seed)
        self.pool: list[str] = []
        self.focus = list(focus or [])
        self.n_focus = round(size * share) if self.focus else 0
        self.focus_pool: list[str] = []

    def __iter__(self) -> "PromptBatches":
        return self

    def _take(self, pool: list[str], items: list[str], n: int) -> tuple[list[str], list[str]]:
        while len(pool) < n:
            chunk = list(items)
            self.rng.shuffle(chunk)
            pool = pool + chunk
        return pool[:n], pool[n:]

    def __next__(self) -> list[str]:
        focused, self.focus_pool = self._take(self.focus_pool, self.focus, self.n_focus)
        rest, self.pool = self._take(self.pool, self.items, self.size - self.n_focus)
        return focused + rest

    def state_dict(self) -> dict[str, Any]:
        from engine.checkpoint import as_lists

        return {"rng": as_lists(self.rng.getstate()), "pool": list(self.pool), "focus": list(self.focus),
                "n_focus": self.n_focus, "focus_pool": list(self.focus_pool)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from engine.checkpoint import as_tuples

        self.rng.setstate(as_tuples(state["rng"]))
        self.pool = list(state["pool"])
        # a checkpoint from before focus existed: no focus set
        self.focus, self.n_focus = list(state.get("focus", [])), int(state.get("n_focus", 0))
        self.focus_pool = list(state.get("focus_pool", []))


def rate_prompts(run: PolicyRun, reward, prompts: list[str]) -> list[float]:
    """The base policy's mean reward on each training prompt (FOCUS_SAMPLES responses each, scored by the run's
    reward mix as training scores them), for `ppo.focus`."""
    from engine.evaluate import generate_responses

    cfg = run.cfg

    def progress(done: int, total: int) -> None:
        run.notify(Progress("train", 0, cfg.ppo.max_ppo_steps, f"rating the training prompts: {done}/{total} responses"))

    responses, _, _ = generate_responses(run.bundle, prompts, cfg.generation, which="before",
                                         batch_size=cfg.evaluation.batch_size, max_prompt_tokens=cfg.data.max_prompt_tokens,
                                         seed=cfg.ppo.seed + 104729, progress=progress, repeats=FOCUS_SAMPLES)
    repeated = [p for p in prompts for _ in range(FOCUS_SAMPLES)]
    scores = reward.score(repeated, responses).scores
    return [sum(scores[i * FOCUS_SAMPLES:(i + 1) * FOCUS_SAMPLES]) / FOCUS_SAMPLES for i in range(len(prompts))]


def focus_set(prompts: list[str], ratings: list[float], fraction: float) -> list[str]:
    """The `fraction` of prompts rated lowest (at least one; ties keep the prompts' order)."""
    n = max(1, round(len(prompts) * fraction))
    order = sorted(range(len(prompts)), key=lambda i: ratings[i])
    return [prompts[i] for i in sorted(order[:n])]


def choose_focus(run: PolicyRun, reward) -> tuple[list[str], dict[str, Any]]:
    """`ppo.focus`'s set (the `focus_fraction` of training prompts rated lowest) and, for the run's summary, its size,
    how both sets were rated and how long the rating took."""
    t_rate = time.perf_counter()
    prompts = list(run.train_prompts)
    ratings = rate_prompts(run, reward, prompts)
    focus = focus_set(prompts, ratings, run.cfg.ppo.focus_fraction)
    chosen = set(focus)
    inside = [r for p, r in zip(prompts, ratings, strict=True) if p in chosen]
    rest = [r for p, r in zip(prompts, ratings, strict=True) if p not in chosen]
    summary = {"focus_prompts": len(focus), "focus_base_reward": sum(inside) / len(inside),
               "rest_base_reward": sum(rest) / len(rest) if rest else math.nan,
               "focus_seconds": time.perf_counter() - t_rate}
    log.info("run %s: focus on %d of %d training prompts (base reward %.3f vs %.3f)", run.run_id, len(focus),
             len(prompts), summary["focus_base_reward"], summary["rest_base_reward"])
    return focus, summary


def write_checkpoint(path: Path, trainer, batches: PromptBatches, reward_stats: dict, *, step: int,
                     step_kls: list[float], train_seconds: float, alarms: dict | None = None) -> None:
    """Fill the directory `path` with PPO's checkpoint after `step` (see the module's docstring for its files)."""
    import torch

    from engine.checkpoint import rng_state

    torch.save(trainer.trainable_state(), path / "policy.pt")
    torch.save(trainer.state_dict(), path / "trainer.pt")
    torch.save({"step": step, "batches": batches.state_dict(), "rng": rng_state(),
                "reward_stats": {n: [s.count, s.mean, s.m2] for n, s in reward_stats.items()},
                "step_kls": list(step_kls), "train_seconds": train_seconds, "alarms": alarms or {}},
               path / STATE_FILE)


class PPO(PolicyMethod):
    """PPO with a value head; the reward mix is loaded before the policy (as the seed did)."""

    resumable = True

    def __init__(self) -> None:
        self.reward = None

    def seed(self, cfg: RunConfig) -> int:
        return cfg.ppo.seed

    def load(self, run: PolicyRun) -> None:
        from engine.rewards import build_reward

        self.reward = build_reward(run.cfg.reward, device=run.device)

    def save_policy(self, bundle, out_dir: Path) -> Path:
        from engine.models import save_policy

        return save_policy(bundle, out_dir)  # with the value head

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        import torch

        def load(name: str):
            return torch.load(path / name, map_location="cpu", weights_only=True)

        return {"policy": load("policy.pt"), "trainer": load("trainer.pt"), "state": load(STATE_FILE)}

    def train(self, run: PolicyRun) -> dict[str, Any]:
        import torch

        from engine.checkpoint import restore_rng
        from engine.ppo import PPOTrainer
        from engine.progress import RunCancelled, RunInterrupted

        cfg, store, run_id, reward, group = run.cfg, run.store, run.run_id, self.reward, run.group
        total = cfg.ppo.max_ppo_steps
        n_samples = cfg.ppo.samples_per_step
        if group.distributed:
            # every rank normalises rewards with the statistics of the whole batch (engine.rewards.ensemble)
            reward.group = group

        # Several processes: rank 0 alone writes the store (metrics, samples, alarms) and the checkpoints; the
        # alarms watch rank 0's share of the samples.
        alarms = RunAlarms(run, getattr(reward, "names", [])) if cfg.alarms.enabled and group.is_main else None

        def reward_metrics() -> dict[str, float]:
            """The judges' accounting (calls, tokens, cost, cumulative): summed over ranks, latencies their max."""
            own = reward.metrics()
            if not group.distributed:
                return own
            keys = sorted(own)
            summed = group.sum_floats([own[k] for k in keys])
            highest = group.max(torch.tensor([own[k] for k in keys], dtype=torch.float64)).tolist() if keys else []
            return {k: (high if k.endswith("_latency_s") else total_)
                    for k, total_, high in zip(keys, summed, highest, strict=True)}

        def collect(step: int, metrics: dict[str, float], rollout) -> None:  # every rank: a collective
            metrics.update(reward_metrics())

        def to_store(step: int, metrics: dict[str, float], rollout) -> None:
            def row(i: int) -> dict[str, Any]:
                scores = {k: v[i] for k, v in rollout.raw_scores.items()}
                return {"prompt": rollout.prompts[i], "response": rollout.responses[i],
                        "reward": float(rollout.scores[i]), "scores": scores}

            stored = min(n_samples, len(rollout.prompts))
            if alarms is not None:  # before the metrics are logged: its values are metrics of this step
                metrics.update(alarms.observe(step, metrics, rollout, trainer.last, stored, row))
            store.log_metrics(run_id, step, metrics)
            if stored:
                store.add_samples(run_id, step, [row(i) for i in range(stored)])
            store.set_progress(run_id, step, total)

        def reward_fn(prompts, responses):
            result = reward.score(prompts, responses)
            return result.scores, result.raw

        trainer = PPOTrainer(run.bundle, reward_fn, cfg.ppo, cfg.generation,
                             max_prompt_tokens=cfg.data.max_prompt_tokens,
                             callbacks=[collect, to_store] if group.is_main else [collect], group=group)
        # ppo.focus: rate the training prompts first (a resumed run reads its focus set from the checkpoint)
        focus, focus_summary = choose_focus(run, reward) if cfg.ppo.focus > 0 and run.resume is None else ([], {})
        # Each step's batch_size responses come from batch_size / num_generations prompts (every rank draws the same
        # batch and samples its own share of it).
        batches = PromptBatches(run.train_prompts, cfg.ppo.batch_size // cfg.ppo.num_generations,
                                cfg.data.split_seed + cfg.ppo.seed, focus=focus, share=cfg.ppo.focus)
        step_kls: list[float] = []
        done, seconds_before = 0, 0.0  # steps completed, training seconds of earlier processes (a resumed run)
        stats = getattr(reward, "stats", {})  # the reward mix's running z-score statistics
        if run.resume is not None:
            ckpt = run.resume.state
            trainer.load_state(ckpt["policy"], ckpt["trainer"])
            state = ckpt["state"]
            batches.load_state_dict(state["batches"])
            for name, (count, mean, m2) in state["reward_stats"].items():
                stats[name].count, stats[name].mean, stats[name].m2 = count, mean, m2
            step_kls, done, seconds_before = list(state["step_kls"]), state["step"], state["train_seconds"]
            if alarms is not None:
                alarms.load_state_dict(state.get("alarms") or {})
            restore_rng(state["rng"])  # last: loading the model above drew from torch's generator
        if group.rank > 0:  # each rank samples its own responses: its own stream (rank 0 keeps the single run's)
            torch.manual_seed(cfg.ppo.seed + 7919 * group.rank + done)
        t_train = time.perf_counter()

        def check_cancel() -> None:
            """Cancel / stop between steps, decided by rank 0 and followed by every rank (they step together)."""
            error = None
            if group.is_main:
                try:
                    run.check_cancel()
                except (RunCancelled, RunInterrupted) as exc:
                    error = exc
            if group.any(error is not None):
                raise error if error is not None else RunCancelled()

        def save(step: int) -> None:
            if group.is_main:
                run.save_checkpoint(step, write)

        def write(path: Path) -> None:
            write_checkpoint(path, trainer, batches, stats, step=done, step_kls=step_kls,
                             train_seconds=seconds_before + time.perf_counter() - t_train,
                             alarms=alarms.state_dict() if alarms is not None else None)

        saved, in_step = done, False
        # The bar starts when training does (its rate and ETA count from here, not from the first step's end).
        run.notify(Progress("train", done, total, f"PPO on {len(run.train_prompts)} prompts", unit="step"))
        try:
            for step in range(done + 1, total + 1):
                check_cancel()
                in_step = True
                metrics = trainer.step(group.shard(next(batches), "prompts a step"))
                in_step, done = False, step
                step_kls.append(metrics["objective/kl"])
                run.notify(Progress("train", step, total, f"step {step}/{total}", metrics))
                if group.any(alarms is not None and alarms.stop is not None):
                    if alarms is None:  # another rank stops because rank 0's alarm fired
                        raise RunCancelled()
                    raise alarms.stop_error()  # the user asked for it (alarms.stop_on); recorded as the run's error
                if run.checkpoint_due(step):
                    save(step)
                    saved = step
        except (RunCancelled, KeyboardInterrupt):
            # Stopped between steps: keep what was trained since the last checkpoint. Stopped inside a step (Ctrl-C,
            # SIGTERM), the weights are half-way through it: the last checkpoint stands.
            if cfg.checkpoint.every_steps and done > saved and not in_step:
                save(done)
            raise
        if batches.focus and not focus_summary:  # resumed: the focus set came from the checkpoint
            focus_summary = {"focus_prompts": len(batches.focus)}
        return {"train_steps": total, "train_seconds": seconds_before + time.perf_counter() - t_train,
                "train_mean_kl": sum(step_kls) / len(step_kls), "train_final_kl": step_kls[-1], **focus_summary}
