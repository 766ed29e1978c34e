"""PPO for language models, written out step by step (TRL 1.x no longer ships a PPO trainer).

One PPO step, as in Ziegler et al. 2019 / the old TRL PPOTrainer the seed used:

  1. rollout      sample num_generations responses to each prompt of the batch with the current policy
  2. score        the reward backends give one scalar per (prompt, response); with several responses per
                  prompt, each score is centred on the mean of its siblings' (leave-one-out baseline)
  3. old stats    log-probs and values of the policy, log-probs of the reference, without gradients
  4. rewards      per-token reward = -kl_coef * (logp - logp_ref), plus the score on the last token;
                  with whiten_rewards, divided by their std over the batch's tokens, mean kept (TRL's shift_mean=False)
  5. GAE          advantages and returns over the response tokens (gamma, lambda); returns from the raw
                  advantages, then the advantages whitened
  6. optimise     ppo_epochs x mini-batches of the clipped policy loss + vf_coef * clipped value loss

Shared work (on by default, `share_prompt_states`): a prompt's k responses share its states. Sampling runs the
prompt once and copies its KV cache k times; the same states give the old log-probs and values; the reference runs
each prompt once; a mini-batch holds whole prompts (when k divides it), each run once, forward and backward. Same
sampling distribution and the same numbers within float rounding (tests/test_fast_paths.py).
  7. KL control   the adaptive controller moves kl_coef toward the target KL

Two baselines when num_generations k > 1: the leave-one-out mean of step 2 is subtracted from the score, and the
value head is subtracted again inside GAE (delta_t = r_t + gamma V_{t+1} - V_t). Each alone keeps the policy
gradient unbiased; together the value head learns to predict an already-centred score (near 0 for every prompt),
so it mostly models the KL part of the return, and the two baselines' noise adds up. RLOO drops the critic
(lambda = 1, no value head); this trainer keeps PPO's critic so that k = 1 is the seed's algorithm unchanged.

Data parallel (`group`, engine.distributed): with N processes each rank samples and trains on its share of the batch
(whole prompts); both whitenings, the losses' token means (each rank divides by the mini-batch's tokens over all ranks
/ N, DDP averages the gradients), the mini-batch order (drawn over the whole batch), the KL controller and every metric
are sums and counts reduced across ranks, so one update equals a single process's on the whole batch (tests/test_ddp.py).
One process (the default) never touches torch.distributed.

Each step returns a flat dict of metrics (names as in the old TRL: objective/kl, ppo/returns/mean, ...),
which the trainer hands to its callbacks; the trainer itself writes nowhere.
This module knows nothing of datasets, stores or the UI.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from engine.config import GenerationSettings, PPOSettings
from engine.models import (
    PolicyBundle,
    PromptStates,
    can_share_prompt,
    encode_queries,
    entropy_from_logits,
    generate,
    logprobs_from_logits,
    min_new_tokens,
    prompt_states,
    reference_logprobs,
)


# --------------------------------------------------------------------------------------------------
# Small math helpers (masked statistics over response tokens)
# --------------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, group=None) -> torch.Tensor:
    """Mean of x over positions where mask is 1; with a `group` of several processes, over every rank's positions
    (sum of the local sums / sum of the local counts)."""
    if group is not None and group.distributed:
        assert dim is None, "a mean across ranks is over every position"
        total = group.sum(torch.stack([(x * mask).sum(), mask.sum()]))
        return (total[0] / total[1].clamp(min=1)).to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, group=None) -> torch.Tensor:
    """Variance of x over masked positions (Bessel-corrected by default, as TRL did); over every rank's with a group."""
    mean = masked_mean(x, mask, group=group)
    var = masked_mean((x - mean) ** 2, mask, group=group)
    n = mask.sum() if group is None or not group.distributed else group.sum(mask.sum()).to(mask.dtype)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, group=None) -> torch.Tensor:
    """(x - mean) / std over masked positions; with shift_mean=False the mean is added back. With a group of several
    processes the mean and std are the whole batch's, across ranks."""
    mean, var = masked_mean(x, mask, group=group), masked_var(x, mask, group=group)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


# --------------------------------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------------------------------
class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences", sec. 2.2).

    error = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + error * n / horizon),
    where n is the number of samples seen since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon


def kl_controller(cfg: PPOSettings):
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
    return FixedKLController(cfg.init_kl_coef)


# --------------------------------------------------------------------------------------------------
# The pieces of the algorithm, each a pure function (tested against hand-worked examples)
# --------------------------------------------------------------------------------------------------
def compute_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards `[B, R]`: the KL penalty on every token, plus the score on the last real token.

    Returns (rewards, kl) where kl = logp - logp_ref per token (its sum is the sample's KL estimate).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1) - 1).clamp(min=0).long()  # index of each response's last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Scores `[n * k]` (k consecutive responses per prompt) minus the mean of the other k-1 scores of their prompt.

    The baseline of a response never depends on its own score, so the policy gradient stays unbiased
    (Kool et al. 2019; Ahmadian et al. 2024, RLOO). k = 1 returns the scores unchanged.
    """
    if group_size <= 1:
        return scores
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).view(-1)


def compute_gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V.
    Positions after the end of a response (mask 0) have V = 0 and contribute nothing.
    """
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    last_gae = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        last_gae = last_gae * mask[:, t]  # padding resets the recursion
        advantages[:, t] = last_gae
    returns = advantages + values
    return advantages * mask, returns * mask


def advantages_and_returns(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float,
                           lam: float, whiten_rewards: bool = False, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The old TRL PPOTrainer's compute_advantages: (whitened advantages, returns) over response tokens.

    With whiten_rewards the per-token rewards are first divided by their std over the masked tokens with the mean
    kept (shift_mean=False, as TRL did). The value targets (returns = A + V) come from the raw advantages; only the
    policy's advantages are whitened afterwards. With a `group` of several processes both whitenings use the whole
    batch's mean and std (every rank's tokens); GAE itself is per response, so local.
    """
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, group=group)
    advantages, returns = compute_gae(values, rewards, mask, gamma, lam)
    return masked_whiten(advantages, mask, group=group), returns


def _token_mean(x: torch.Tensor, mask: torch.Tensor, n_tokens: torch.Tensor | None) -> torch.Tensor:
    return masked_mean(x, mask) if n_tokens is None else (x * mask).sum() / n_tokens


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float,
                n_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: mean over tokens of max(-A * ratio, -A * clip(ratio, 1 ± eps)).

    n_tokens: the divisor instead of this mask's token count (data parallel: the mini-batch's tokens over every rank
    / the number of ranks, so that DDP's gradient average is the whole mini-batch's token mean)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = _token_mean(torch.max(loss_unclipped, loss_clipped), mask, n_tokens)
    stats = {
        "clipfrac": _token_mean((loss_clipped > loss_unclipped).float(), mask, n_tokens),
        "approxkl": 0.5 * _token_mean(log_ratio ** 2, mask, n_tokens),
        "ratio": _token_mean(ratio, mask, n_tokens),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float,
               n_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2); n_tokens as policy_loss."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * _token_mean(torch.max(loss_unclipped, loss_clipped), mask, n_tokens)
    stats = {
        "clipfrac": _token_mean((loss_clipped > loss_unclipped).float(), mask, n_tokens),
        "error": _token_mean((values - returns) ** 2, mask, n_tokens),
        "vpred": _token_mean(values, mask, n_tokens),
    }
    return loss, stats


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------
class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[float], dict[str, list[float]]]:
        ...


@dataclass
class Rollout:
    """One batch of experience: tokens and the per-token statistics PPO needs."""

    prompts: list[str]
    responses: list[str]
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    scores: torch.Tensor
    raw_scores: dict[str, list[float]]
    # The distinct prompts (each answered by `repeats` consecutive responses) and the policy's states of them,
    # computed once for generation and reused by the pass that gives the old log-probs and values.
    prompt_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    repeats: int = 1
    policy_states: PromptStates | None = None


@dataclass
class StepTensors:
    """What one step computed, kept on the trainer as `trainer.last` (for inspection and tests)."""

    scores: torch.Tensor  # [B] after the leave-one-out baseline
    rewards: torch.Tensor  # [B, R] per-token rewards (KL penalty + score on the last token), before whiten_rewards
    kl: torch.Tensor  # [B, R] logp - logp_ref
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor  # whitened
    returns: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor
    kl_coef: float
    minibatches: list[dict[str, float]]


class PPOTrainer:
    """Runs PPO steps on a PolicyBundle with a reward function; returns metric dicts per step.

    `reward_fn(prompts, responses) -> (scores, raw_signals)`. Callbacks are called as
    `cb(step, metrics, rollout)` after each step (the store sink is one of them).
    """

    def __init__(self, bundle: PolicyBundle, reward_fn: RewardFn, ppo: PPOSettings, gen: GenerationSettings,
                 max_prompt_tokens: int = 256, callbacks: Sequence[Callable] = (), share_prompt_states: bool = True,
                 group=None):
        from engine.distributed import SINGLE

        self.bundle, self.reward_fn, self.cfg, self.gen = bundle, reward_fn, ppo, gen
        # Data parallel (engine.distributed): this process's rank among `group.world`; each rank steps on its share of
        # the batch, and every statistic over the batch (whitening, KL, metrics) is reduced across ranks.
        self.group = group or SINGLE
        # The module training passes run through: the policy itself, or DDP around it (gradients averaged over ranks;
        # DDP also broadcasts rank 0's weights when it is built, so every rank starts equal).
        self.train_model = bundle.policy
        if self.group.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device = torch.device(bundle.device)
            self.train_model = DistributedDataParallel(bundle.policy,
                                                       device_ids=[device.index] if device.type == "cuda" else None)
        # Each prompt's work done once for its responses (generation prefill, old-stats and reference passes);
        # False runs every prompt with each of its responses (the plain path, kept for the equivalence tests/bench).
        self.share_prompt_states = share_prompt_states
        self.max_prompt_tokens = max_prompt_tokens
        self.callbacks = list(callbacks)
        self.kl_ctl = kl_controller(ppo)
        params = [p for p in bundle.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=ppo.learning_rate)
        self.generator = torch.Generator().manual_seed(ppo.seed)
        self.step_count = 0
        self.last: StepTensors | None = None
        # generate() bans EOS on the first tokens: log-probs, entropy and KL use that same distribution
        self.min_new, self.eos_id = min_new_tokens(gen), bundle.tokenizer.eos_token_id

    # state, for checkpoints ------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters PPO changes: the policy's trainable weights (all, or a LoRA adapter) and the value head."""
        return {name: p.detach() for name, p in self.bundle.policy.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        """Everything else a step depends on besides the weights: optimizer, KL coefficient, mini-batch shuffler."""
        return {"optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value,
                "generator": self.generator.get_state(), "step_count": self.step_count}

    def load_state(self, trainable: dict[str, torch.Tensor], state: dict) -> None:
        """Restore what `trainable_state` and `state_dict` returned (the bundle must be the same model)."""
        params = dict(self.bundle.policy.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
        if missing or set(trainable) - set(params):
            raise ValueError(f"checkpoint does not match the policy: missing {missing[:3]}, "
                             f"unexpected {sorted(set(trainable) - set(params))[:3]}")
        with torch.no_grad():
            for name, value in trainable.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.generator.set_state(state["generator"])
        self.step_count = state["step_count"]

    # 1-2. rollout and score ------------------------------------------------------------------------
    def rollout(self, prompts: Sequence[str], repeats: int = 1) -> Rollout:
        """Sample `repeats` responses to each prompt (a prompt's responses side by side) and score them."""
        bundle, policy, tok = self.bundle, self.bundle.policy, self.bundle.tokenizer
        prompt_ids, prompt_mask = encode_queries(bundle, list(prompts), self.max_prompt_tokens, policy.device)
        policy.eval()
        states = None
        if self.share_prompt_states and can_share_prompt(bundle.seq2seq, prompt_ids):
            with bundle.autocast():
                states = prompt_states(policy.lm, bundle.seq2seq, prompt_ids, prompt_mask)
            response_ids, response_mask = generate(bundle, policy.lm, prompt_ids, prompt_mask, self.gen,
                                                   repeats=repeats, states=states)
        query_ids = prompt_ids.repeat_interleave(repeats, dim=0)
        query_mask = prompt_mask.repeat_interleave(repeats, dim=0)
        if states is None:
            response_ids, response_mask = generate(bundle, policy.lm, query_ids, query_mask, self.gen)
        responses = decode_responses(tok, response_ids, response_mask)
        every_prompt = [p for p in prompts for _ in range(repeats)]
        scores, raw = self.reward_fn(every_prompt, responses)
        return Rollout(every_prompt, responses, query_ids, query_mask, response_ids, response_mask,
                       torch.tensor(scores, dtype=torch.float32, device=policy.device), raw,
                       prompt_ids=prompt_ids, prompt_mask=prompt_mask, repeats=repeats, policy_states=states)

    # 3. forward pass without gradients -------------------------------------------------------------
    def _forward(self, q, qm, r, rm, repeats: int = 1, states: PromptStates | None = None, train: bool = False):
        model = self.train_model if train else self.bundle.policy  # gradients pass through DDP, when there is one
        logits, values = model(q, qm, r, rm, repeats=repeats, states=states)
        return logprobs_from_logits(logits, r, self.gen.temperature, self.min_new, self.eos_id), values, logits

    def _old_stats(self, ro: Rollout):
        """Old log-probs, values, logits and the reference's log-probs of the rollout, without gradients; with
        shared prompt states the policy reuses the rollout's and the reference runs each prompt once."""
        q, qm, r, rm = ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask
        temp = self.gen.temperature
        if ro.policy_states is not None:
            out = self._forward(ro.prompt_ids, ro.prompt_mask, r, rm, repeats=ro.repeats, states=ro.policy_states)
            ro.policy_states = None  # used up: free the cache
            ref = reference_logprobs(self.bundle, ro.prompt_ids, ro.prompt_mask, r, rm, temp, self.min_new,
                                     repeats=ro.repeats)
            return (*out, ref)
        out = self._forward(q, qm, r, rm)
        return (*out, reference_logprobs(self.bundle, q, qm, r, rm, temp, self.min_new))

    def _minibatches(self, ro: Rollout, batch: int, mb: int):
        """One epoch's shuffled mini-batches: (response indices, prompt indices or None).

        With shared prompt states and k > 1 responses per prompt dividing the mini-batch, a mini-batch holds whole
        prompts (mb / k prompts, each with its k responses; the prompts shuffled), so the update runs each prompt
        once for its k responses. Otherwise responses are shuffled one by one and every prompt runs with each.

        With several processes `batch` and `mb` count every rank's rows: the order is drawn over the whole batch
        (the same generator on every rank: the same order everywhere, and the one a single process draws) and each
        rank yields the rows of each mini-batch that it holds (local indices; possibly none)."""
        device = ro.query_ids.device
        k, g = ro.repeats, self.group
        whole = (self.share_prompt_states and k > 1 and mb % k == 0 and ro.prompt_ids is not None
                 and can_share_prompt(self.bundle.seq2seq, ro.prompt_ids))
        if g.distributed:  # every rank must cut the same mini-batches: whole prompts only where all ranks can
            whole = not g.any(not whole)
        unit = k if whole else 1
        units, per = batch // unit, mb // unit
        order = torch.randperm(units, generator=self.generator)
        mine = units // g.world  # units (prompts or rows) each rank holds, rank r the r-th slice
        for start in range(0, units, per):
            chosen = order[start:start + per]
            if g.distributed:
                chosen = chosen[chosen // mine == g.rank] - g.rank * mine
            chosen = chosen.to(device)
            if whole:
                yield (chosen[:, None] * k + torch.arange(k, device=device)).flatten(), chosen
            else:
                yield chosen, None

    def step(self, prompts: Sequence[str]) -> dict[str, float]:
        """One PPO step on a batch of prompts (each sampled `num_generations` times); returns the step's metrics.
        With several processes `prompts` is this rank's share of the batch."""
        k = max(1, self.cfg.num_generations)
        t0 = time.perf_counter()
        ro = self.rollout(list(prompts), repeats=k)  # a prompt's k responses sit side by side
        return self.update(ro, t0=t0, t_rollout=time.perf_counter() - t0)

    def _batch_mean(self, values: torch.Tensor) -> float:
        """Mean of per-response values `[B]` over the whole batch (every rank's responses)."""
        g = self.group
        if not g.distributed:
            return float(values.mean())
        total = g.sum(torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]))
        return float(total[0] / total[1])

    def update(self, ro: Rollout, t0: float | None = None, t_rollout: float = 0.0) -> dict[str, float]:
        """Steps 3-7 on a scored rollout: old statistics, rewards, GAE, the mini-batch updates, KL control; returns
        the step's metrics (and calls the callbacks).

        With several processes `ro` is this rank's share of the batch (whole prompts; every rank the same number of
        responses, rank r holding the r-th slice) and the result (weights, KL coefficient, metrics) is a single
        process's on the whole batch: both whitenings, the KL, the losses' token means and every metric are sums
        and counts reduced across ranks, and DDP averages the gradients (tests/test_ddp.py)."""
        cfg, g = self.cfg, self.group
        k = ro.repeats
        t0 = time.perf_counter() if t0 is None else t0
        t_stats0 = time.perf_counter()
        q, qm, r, rm = ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask
        mask = rm.float()

        with torch.no_grad():
            old_logprobs, old_values, logits, ref_logprobs = self._old_stats(ro)
            entropy = entropy_from_logits(logits, self.gen.temperature, self.min_new, self.eos_id)
            del logits

            # 4. per-token rewards with the KL penalty (scores first centred per prompt when k > 1; a prompt's
            # responses are on one rank, so this is local)
            scores = leave_one_out_baseline(ro.scores, k)
            kl_coef = self.kl_ctl.value
            rewards, kl = compute_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)

            # 5. advantages and returns (rewards whitened first with whiten_rewards), whitened over the whole batch
            advantages, returns = advantages_and_returns(old_values, rewards, mask, cfg.gamma, cfg.lam,
                                                         cfg.whiten_rewards, group=g)

        # 6. optimise: ppo_epochs passes of shuffled mini-batches
        t_update = time.perf_counter()
        t_stats = t_update - t_stats0
        self.bundle.policy.train()
        local_batch = len(ro.prompts)
        batch = local_batch * g.world
        mb = min(cfg.mini_batch_size, batch)
        stats: dict[str, list[float]] = {}
        minibatches: list[dict[str, float]] = []
        for _epoch in range(cfg.ppo_epochs):
            for idx, prompts_idx in self._minibatches(ro, batch, mb):
                held = len(idx) > 0
                if not held:  # none of this mini-batch is on this rank: one row of weight 0 keeps DDP in step
                    prompts_idx = None if prompts_idx is None else torch.zeros(1, dtype=torch.long, device=q.device)
                    idx = torch.arange(k if prompts_idx is not None else 1, device=q.device)
                if prompts_idx is None:
                    new_logprobs, new_values, _ = self._forward(q[idx], qm[idx], r[idx], rm[idx], train=True)
                else:  # whole prompts: each runs once for its k responses, forward and backward
                    new_logprobs, new_values, _ = self._forward(ro.prompt_ids[prompts_idx], ro.prompt_mask[prompts_idx],
                                                                r[idx], rm[idx], repeats=ro.repeats, train=True)
                m = mask[idx] if held else torch.zeros_like(mask[idx])
                # Several ranks: each divides its token sums by (the mini-batch's tokens on every rank / ranks), so
                # DDP's average of the gradients is the gradient of the mini-batch's token mean.
                n_tokens = g.sum(m.sum()).to(m.dtype).clamp(min=1) / g.world if g.distributed else None
                pg_loss, pg_stats = policy_loss(new_logprobs, old_logprobs[idx], advantages[idx], m, cfg.cliprange,
                                                n_tokens=n_tokens)
                vf_loss, vf_stats = value_loss(new_values, old_values[idx], returns[idx], m, cfg.cliprange_value,
                                               n_tokens=n_tokens)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm > 0:  # after DDP's all-reduce: every rank clips the same averaged gradient
                    torch.nn.utils.clip_grad_norm_(self.bundle.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                mb_stats = {
                    "ppo/loss/policy": pg_loss, "ppo/loss/value": vf_loss, "ppo/loss/total": loss,
                    "ppo/policy/clipfrac": pg_stats["clipfrac"], "ppo/policy/approxkl": pg_stats["approxkl"],
                    "ppo/policy/ratio": pg_stats["ratio"], "ppo/val/clipfrac": vf_stats["clipfrac"],
                    "ppo/val/vpred": vf_stats["vpred"], "ppo/val/error": vf_stats["error"],
                }
                if g.distributed:  # each rank's share of the token mean; their sum over ranks / world is the mean
                    reduced = g.sum(torch.stack([v.detach() for v in mb_stats.values()])) / g.world
                    mb_stats = dict(zip(mb_stats, reduced, strict=True))
                minibatches.append({key: float(value.detach()) for key, value in mb_stats.items()})
                for key, value in minibatches[-1].items():
                    stats.setdefault(key, []).append(value)

        # 7. KL control, on the mean sequence KL of this batch (every rank's responses)
        mean_kl = self._batch_mean(kl.sum(1))
        self.kl_ctl.update(mean_kl, batch)
        self.step_count += 1
        # The step's per-token tensors [B, R] (aligned with the response tokens) and each mini-batch's statistics
        # in order: the first mini-batch runs before any update, so its ratio is exactly 1. Several ranks: the
        # tensors are this rank's rows; the mini-batch statistics the whole batch's.
        self.last = StepTensors(scores=scores, rewards=rewards, kl=kl, old_logprobs=old_logprobs,
                                ref_logprobs=ref_logprobs, old_values=old_values, advantages=advantages,
                                returns=returns, entropy=entropy, mask=mask, kl_coef=kl_coef, minibatches=minibatches)

        t_update = time.perf_counter() - t_update
        elapsed = time.perf_counter() - t0
        lengths = mask.sum(1)
        n_tokens = float(lengths.sum() + qm.sum())
        if g.distributed:  # the slowest rank's time; every rank's tokens
            elapsed = float(g.max(torch.tensor([elapsed]))[0])
            n_tokens = g.sum_floats([n_tokens])[0]
        if not g.distributed:
            reward_std = float(ro.scores.std()) if batch > 1 else 0.0
        else:
            reward_mean = self._batch_mean(ro.scores)
            squares = float(g.sum(((ro.scores.double() - reward_mean) ** 2).sum()))
            reward_std = math.sqrt(squares / (batch - 1)) if batch > 1 else 0.0
        metrics = {
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_coef,
            "objective/entropy": self._batch_mean((entropy * mask).sum(1)),
            "ppo/returns/mean": float(masked_mean(returns, mask, group=g)),
            "ppo/returns/var": float(masked_var(returns, mask, group=g)),
            "ppo/policy/advantages_mean": float(masked_mean(advantages, mask, group=g)),
            "ppo/mean_non_score_reward": self._batch_mean((-kl_coef * kl).sum(1)),
            "env/reward_mean": self._batch_mean(ro.scores),
            "env/reward_std": reward_std,
            "env/response_length_mean": self._batch_mean(lengths),
            "time/step_s": elapsed,
            "time/rollout_s": t_rollout,
            "time/stats_s": t_stats,  # old log-probs, values, the reference's log-probs, rewards, GAE
            "time/update_s": t_update,  # the mini-batch updates
            "time/tokens_per_s": n_tokens / elapsed if elapsed > 0 else math.nan,
            "time/samples_per_s": batch / elapsed if elapsed > 0 else math.nan,
        }
        metrics.update({k: float(np.mean(v)) for k, v in stats.items()})
        for name in sorted(ro.raw_scores):  # sorted: every rank reduces the names in the same order
            finite = [v for v in ro.raw_scores[name] if v is not None and math.isfinite(v)]
            if g.distributed:
                total, count = g.sum_floats([float(sum(finite)), float(len(finite))])
                if count:
                    metrics[f"env/reward/{name}"] = total / count
            elif finite:
                metrics[f"env/reward/{name}"] = float(np.mean(finite))
        for cb in self.callbacks:
            cb(self.step_count, metrics, ro)
        return metrics


def shard_rollout(ro: Rollout, group) -> Rollout:
    """Rank `group.rank`'s contiguous share of a whole batch's rollout: whole prompts (a prompt's responses stay
    together), every rank the same number. The prompt states are not carried (the shard's old statistics run the
    plain path)."""
    k = ro.repeats
    n_prompts = len(ro.prompts) // k
    if n_prompts % group.world:
        raise ValueError(f"{n_prompts} prompts do not split evenly over {group.world} processes")
    per = n_prompts // group.world
    p0, p1 = group.rank * per, (group.rank + 1) * per
    rows = slice(p0 * k, p1 * k)
    return Rollout(ro.prompts[rows], ro.responses[rows], ro.query_ids[rows], ro.query_mask[rows],
                   ro.response_ids[rows], ro.response_mask[rows], ro.scores[rows],
                   {name: list(values[rows]) for name, values in ro.raw_scores.items()},
                   prompt_ids=None if ro.prompt_ids is None else ro.prompt_ids[p0:p1],
                   prompt_mask=None if ro.prompt_mask is None else ro.prompt_mask[p0:p1], repeats=k)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Response texts (special tokens dropped), from the masked response tokens only."""
    out = []
    for ids, m in zip(response_ids, response_mask, strict=True):
        out.append(tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True))
    return out
