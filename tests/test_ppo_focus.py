"""ppo.focus: each step draws a share of its prompts from the training prompts the base policy's responses are rated
lowest on by the run's own reward (a rating pass before training), the rest uniformly as before."""

import random

import pytest

from engine.config import RewardBackendSettings, RunConfig, validate
from engine.methods import ppo as ppo_method
from engine.methods.ppo import FOCUS_SAMPLES, PromptBatches, focus_set
from engine.runner import execute
from engine.store import Store

ITEMS = [f"p{i}" for i in range(20)]


def _uniform_batches(items, size, seed, n):
    """The batches PromptBatches drew before focus existed: seeded reshuffled passes, cut into batches."""
    rng, pool, out = random.Random(seed), [], []
    for _ in range(n):
        while len(pool) < size:
            chunk = list(items)
            rng.shuffle(chunk)
            pool += chunk
        out.append(pool[:size])
        pool = pool[size:]
    return out


def test_without_focus_the_batches_are_the_uniform_ones_as_before():
    """Focus off (share 0 or no focus set) leaves every run's prompt stream exactly as it was."""
    expected = _uniform_batches(ITEMS, 8, 3, 12)
    for batches in (PromptBatches(ITEMS, 8, 3), PromptBatches(ITEMS, 8, 3, focus=ITEMS[:5], share=0.0),
                    PromptBatches(ITEMS, 8, 3, focus=[], share=0.5)):
        assert [next(batches) for _ in range(12)] == expected


def test_focus_batches_draw_their_share_from_the_focus_set_and_resume_where_they_left_off():
    focus = ITEMS[:5]
    batches = PromptBatches(ITEMS, 8, 3, focus=focus, share=0.5)
    drawn = [next(batches) for _ in range(5)]
    assert all(set(b[:4]) <= set(focus) and len(b) == 8 for b in drawn)
    # passes over the focus set: 5 batches x 4 = 20 draws = 4 whole passes, each focus prompt 4 times
    firsts = [p for b in drawn for p in b[:4]]
    assert sorted(firsts) == sorted(focus * 4)
    # the other half is uniform over all prompts (focus ones included), in whole passes too
    rest = [p for b in drawn for p in b[4:]]
    assert sorted(rest) == sorted(ITEMS)
    state = batches.state_dict()
    after = [next(batches) for _ in range(7)]
    again = PromptBatches(ITEMS, 8, 99)  # a resumed run rebuilds its batches, then loads the checkpoint's state
    again.load_state_dict(state)
    assert [next(again) for _ in range(7)] == after
    # a checkpoint written before focus existed loads as no focus
    old = {"rng": state["rng"], "pool": state["pool"]}
    plain = PromptBatches(ITEMS, 8, 99)
    plain.load_state_dict(old)
    assert plain.n_focus == 0 and len(next(plain)) == 8


def test_the_focus_set_is_the_lowest_rated_fraction_in_the_prompts_order():
    assert focus_set(["a", "b", "c", "d"], [3.0, 1.0, 2.0, 0.0], 0.5) == ["b", "d"]
    assert focus_set(["a", "b", "c"], [1.0, 2.0, 3.0], 0.01) == ["a"]  # at least one
    assert focus_set(["a", "b"], [2.0, 1.0], 1.0) == ["a", "b"]


def test_focus_is_validated():
    cfg = RunConfig()
    cfg.ppo.focus, cfg.ppo.focus_fraction = 1.5, 0.0
    fields = {e.field for e in validate(cfg)}
    assert {"ppo.focus", "ppo.focus_fraction"} <= fields
    cfg = RunConfig()
    cfg.ppo.focus, cfg.distributed.num_processes = 0.5, 2
    assert "ppo.focus" in {e.field for e in validate(cfg)}


def focus_config(model_dir, tmp_path) -> RunConfig:
    cfg = RunConfig(name="focus")
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(model_dir), "cpu", "none"
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 6, 64
    cfg.data.validation_size = 0
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples, cfg.evaluation.samples_per_prompt, cfg.evaluation.relevance = 50, 1, False
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps, p.samples_per_step = 8, 4, 2, 3, 8
    p.focus, p.focus_fraction = 0.5, 0.25
    cfg.generation.max_new_tokens = 6
    cfg.checkpoint.every_steps = 0
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_a_focused_run_rates_every_training_prompt_and_draws_half_of_each_step_from_the_lowest_rated(
        tiny_gpt2_dir, tmp_path, monkeypatch):
    """The rating pass scores FOCUS_SAMPLES base responses per training prompt with the run's reward; every step's
    first prompts (half of them) are among the quarter rated lowest; the summary says how the two sets were rated."""
    rated: dict[str, float] = {}
    real = ppo_method.rate_prompts

    def spy(run, reward, prompts):
        ratings = real(run, reward, prompts)
        assert len(ratings) == len(prompts) == len(run.train_prompts)
        rated.update(zip(prompts, ratings, strict=True))
        return ratings

    monkeypatch.setattr(ppo_method, "rate_prompts", spy)
    cfg = focus_config(tiny_gpt2_dir, tmp_path)
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name)
    summary = execute(cfg, store, run_id)
    assert store.get_run(run_id).status == "completed"
    lowest = sorted(rated, key=rated.get)[:round(len(rated) * 0.25)]
    assert summary["focus_prompts"] == len(lowest)
    assert summary["focus_base_reward"] < summary["rest_base_reward"]
    assert summary["focus_base_reward"] == pytest.approx(sum(rated[p] for p in lowest) / len(lowest))
    samples = store.samples(run_id)
    per_prompt = cfg.ppo.num_generations
    n_focus = round(cfg.ppo.batch_size // per_prompt * cfg.ppo.focus)
    for step, rows in samples.groupby("step"):
        prompts = list(rows["prompt"])
        assert len(prompts) == cfg.ppo.batch_size
        focused = {prompts[i * per_prompt] for i in range(n_focus)}
        assert focused <= set(lowest), step


def test_the_rating_is_the_rewards_mean_over_the_base_policys_responses(tiny_gpt2_dir, tmp_path):
    """rate_prompts = mean reward of FOCUS_SAMPLES responses the reference samples for each prompt."""
    from engine.evaluate import generate_responses
    from engine.methods.lifecycle import PolicyRun  # noqa: F401  (the run object the method is given)
    from engine.models import load_policy
    from engine.rewards import build_reward

    cfg = focus_config(tiny_gpt2_dir, tmp_path)
    bundle = load_policy(cfg.model)
    reward = build_reward(cfg.reward)
    prompts = ["Human: how do I bake bread?\n\nAssistant:", "Human: you are a stupid idiot\n\nAssistant:", "Hi"]

    class Run:  # the parts of a PolicyRun the rating pass reads
        def __init__(self):
            self.cfg, self.bundle, self.notes = cfg, bundle, []

        def notify(self, progress):
            self.notes.append(progress)

    run = Run()
    ratings = ppo_method.rate_prompts(run, reward, prompts)
    responses, _, _ = generate_responses(bundle, prompts, cfg.generation, which="before",
                                         batch_size=cfg.evaluation.batch_size,
                                         max_prompt_tokens=cfg.data.max_prompt_tokens, seed=cfg.ppo.seed + 104729,
                                         repeats=FOCUS_SAMPLES)
    scores = reward.score([p for p in prompts for _ in range(FOCUS_SAMPLES)], responses).scores
    assert ratings == pytest.approx([sum(scores[i * 2:i * 2 + 2]) / 2 for i in range(len(prompts))])
    assert run.notes and "rating the training prompts" in run.notes[-1].message
