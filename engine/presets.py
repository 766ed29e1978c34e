"""Named starting points for a run: `engine init --preset NAME` and the Launch form's "Start from".

- "default": RunConfig() itself, the run README measures (SmolLM2, 28 PPO steps, 32 responses a step).
- "seed-article": the seed article's values (10 steps at 1.41e-5, 16 responses a step, one per prompt, the
  adaptive KL controller), kept so its result can be reproduced; README shows it barely moves SmolLM2.
- "tour": a run of about two minutes on a laptop CPU (the built-in tiny GPT-2, a few steps, a small hold-out),
  to see every page fill in before spending half an hour on the default.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config import RunConfig


def _default() -> RunConfig:
    return RunConfig()


def _seed_article() -> RunConfig:
    cfg = RunConfig(name="seed-article")
    cfg.model.mixed_precision = "none"
    p = cfg.ppo
    p.learning_rate, p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 1.41e-5, 16, 4, 1, 10
    p.adaptive_kl, p.kl_horizon = True, 10000
    cfg.generation.max_new_tokens = 32
    cfg.data.max_prompt_tokens = 256
    cfg.evaluation.batch_size, cfg.evaluation.samples_per_prompt = 32, 1
    return cfg


def _tour() -> RunConfig:
    cfg = RunConfig(name="tour")
    cfg.model.name_or_path = "builtin:tiny-gpt2"
    cfg.model.mixed_precision = "none"  # a tiny model gains nothing from autocast
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 16, 8, 4, 8
    p.learning_rate = 1e-4
    cfg.generation.max_new_tokens = 16
    cfg.data.holdout_size = 50
    cfg.data.validation_size = 0  # a tour chooses no settings
    cfg.evaluation.samples_per_prompt = 1
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {"default": _default, "seed-article": _seed_article, "tour": _tour}


def preset(name: str) -> RunConfig:
    """A fresh RunConfig of the named preset; ValueError naming the presets for an unknown name."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}") from None
