"""PPO's reward-hacking alarms during a run: the bridge between a PPO step and engine.alarms.

Responsible for: building each step's `StepView` from the rollout and the trainer's step tensors (`trainer.last`:
reference log-probs, entropy, KL per token), running the probe (every alarms.probe_every steps the policy answers
a few held-out prompts, scored by the run's evaluator, never the reward), storing each firing with its evidence
samples (stored as samples, so they link), the alarm metrics (`alarm/<name>/value`, `probe/toxicity`), and saying
when an alarm the user listed in alarms.stop_on fired.

Not responsible for: the detectors (engine.alarms) or the training loop (engine.methods.ppo).
"""

from __future__ import annotations

import math
from typing import Any

from engine.alarms import Firing, Monitor, StepView


class AlarmStop(RuntimeError):
    """An alarm listed in alarms.stop_on fired: the run stops (failed) with this message."""


TOPIC_KINDS = ("overlap", "topic")  # reward kinds that measure something other than harm / quality


class RunAlarms:
    """The alarms of one PPO run. `observe(step, rollout, trainer, stored)` after each step's update gives the
    metrics to log and stores what fired; `stop` then holds the firing that must stop the run, if any."""

    def __init__(self, run, members: list[str]) -> None:
        cfg = run.cfg
        # Disagreement is looked for among the backends that score the text's harm or quality; `overlap` and `topic` score
        # staying on topic, another axis, whose anti-correlation with a detox reward is expected, not an alarm.
        other_axis = {b.display_name for b in cfg.reward.backends if b.kind in TOPIC_KINDS}
        self.run, self.cfg, self.members = run, cfg.alarms, [m for m in members if m not in other_axis]
        self.monitor = Monitor(cfg.alarms, cfg.ppo.kl_target)
        a = cfg.alarms
        # The probe answers validation prompts when the run has a validation split (so no training-time decision,
        # such as an alarm that stops the run, ever looks at the test split), else the evaluated prompts.
        probe_pool = run.validation or run.holdout
        self.probe_prompts = list(probe_pool[:a.probe_prompts]) if run.evaluator is not None else []
        self.stop: Firing | None = None
        self.fired: list[Firing] = []

    # -- the probe ---------------------------------------------------------------------------------
    def probe(self, step: int) -> float | None:
        """Mean toxicity (the evaluator's) of the policy's responses to the probe prompts, one each; None when the
        run has no probe this step. The training's random stream is left as it was (a forked RNG, seeded)."""
        if not self.probe_prompts or not self.monitor.probe_due(step):
            return None
        import torch

        from engine.evaluate import score_toxicity
        from engine.models import encode_queries, generate
        from engine.ppo import decode_responses

        bundle, cfg = self.run.bundle, self.run.cfg
        devices = [bundle.policy.device] if str(bundle.policy.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(cfg.evaluation.seed + step)
            bundle.policy.eval()
            q, qm = encode_queries(bundle, self.probe_prompts, cfg.data.max_prompt_tokens, bundle.policy.device)
            r, rm = generate(bundle, bundle.policy.lm, q, qm, cfg.generation)
            responses = decode_responses(bundle.tokenizer, r, rm)
        tox = [t for t in score_toxicity(self.run.evaluator, responses) if t is not None and math.isfinite(t)]
        return sum(tox) / len(tox) if tox else None

    # -- one step ------------------------------------------------------------------------------------
    def view(self, step: int, metrics: dict[str, float], rollout, last) -> StepView:
        """The detectors' view of one step (per-sample statistics reduced here, once)."""
        mask = last.mask
        n_tok = mask.sum(1).clamp(min=1)
        ids = [row[m.bool()].tolist() for row, m in zip(rollout.response_ids, rollout.response_mask, strict=True)]
        gen = self.run.cfg.generation
        return StepView(step=step, metrics=metrics, responses=list(rollout.responses), token_ids=ids,
                        max_new_tokens=gen.max_new_tokens, min_length=gen.min_length,
                        raw_scores={k: [float(x) for x in v] for k, v in rollout.raw_scores.items()},
                        members=self.members,
                        ref_logprob=((last.ref_logprobs * mask).sum(1) / n_tok).tolist(),
                        entropy=((last.entropy * mask).sum(1) / n_tok).tolist(),
                        kl=last.kl.sum(1).tolist(),
                        probe_toxicity=self.probe(step))

    def observe(self, step: int, metrics: dict[str, float], rollout, last, stored: int,
                sample_row) -> dict[str, float]:
        """Run the detectors on this step; store each firing (and its evidence samples beyond the `stored` rows the
        method already wrote, with `sample_row(i)` building a row); return the alarm metrics."""
        values, firings = self.monitor.observe(self.view(step, metrics, rollout, last))
        store, run_id = self.run.store, self.run.run_id
        extra = sorted({i for f in firings for i in f.evidence if i >= stored})
        if extra:
            store.add_samples(run_id, step, [{**sample_row(i), "idx": i} for i in extra])
        for f in firings:
            store.add_alarm(run_id, f.name, f.step, f.since_step, f.value, f.threshold, f.message,
                            [{"step": step, "idx": i} for i in f.evidence])
            self.fired.append(f)
            if f.name in self.cfg.stop_on and self.stop is None:
                self.stop = f
        return values

    def stop_error(self) -> AlarmStop:
        f = self.stop
        assert f is not None
        return AlarmStop(f"alarm {f.name} fired at step {f.step} (since step {f.since_step}; value {f.value:.4g} vs "
                         f"threshold {f.threshold:.4g}) and alarms.stop_on lists it: {f.message}")

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)
