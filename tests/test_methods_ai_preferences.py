"""RLAIF into DPO: the reward mix labels pairs of the policy's own samples (no human labels), then DPO trains on
them; the whole "dpo_ai" run goes through engine.runner on the tiny GPT-2."""

import pytest

from engine.config import RewardBackendSettings, RunConfig
from engine.methods.ai_preferences import label_pairs, sample_pairs
from engine.models import load_policy
from engine.rewards.base import RewardResult
from engine.rewards.ensemble import Ensemble
from engine.runner import run
from engine.store import Store


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train faster on one thread, and leave the shared cores alone (the GRPO toy test: 4 s instead of
    20 s on 2 busy cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class CountE:
    name = "count_e"

    def score(self, prompts, responses):
        return RewardResult([float(r.count("e")) for r in responses], {})


def test_label_pairs_prefers_the_higher_reward_and_drops_ties():
    samples = [("p1", "eee", "a"), ("p2", "b", "ee"), ("p3", "xe", "ye"), ("p4", "same", "same "), ("p5", "e", "")]
    pairs, stats = label_pairs(samples, Ensemble([(CountE(), 1.0)]), min_margin=0.0)
    assert [(p["prompt"], p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        ("p1", "eee", "a", 3.0), ("p2", "ee", "b", 2.0), ("p5", "e", "", 1.0)]
    assert (stats["ai_pairs"], stats["ai_ties_dropped"], stats["ai_identical_dropped"]) == (3, 1, 1)
    assert stats["ai_mean_margin"] == 2.0
    pairs, stats = label_pairs(samples, Ensemble([(CountE(), 1.0)]), min_margin=1.5)
    assert [p["prompt"] for p in pairs] == ["p1", "p2"] and stats["ai_ties_dropped"] == 2


def test_sample_pairs_gives_two_samples_per_prompt(tiny_gpt2_dir):
    from engine.config import GenerationSettings, ModelSettings

    bundle = load_policy(ModelSettings(name_or_path=str(tiny_gpt2_dir)))
    gen = GenerationSettings(max_new_tokens=6, min_length=6)
    prompts = [f"\n\nHuman: hello {i}\n\nAssistant:" for i in range(5)]
    samples = sample_pairs(bundle, prompts, gen, batch_size=2, max_prompt_tokens=64, seed=0)
    assert [s[0] for s in samples] == prompts
    assert sum(a != b for _, a, b in samples) >= 4  # independent samples of a random model rarely coincide
    assert samples == sample_pairs(bundle, prompts, gen, batch_size=2, max_prompt_tokens=64, seed=0)  # seeded


def test_dpo_ai_run_through_the_runner(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = RunConfig(name="tiny-dpo-ai", method="dpo_ai")
    cfg.model.name_or_path = str(tiny_gpt2_dir)
    cfg.generation.max_new_tokens = 8
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 8, 96
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 200
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", name="labeller")]
    cfg.ai_preferences.num_prompts = 12
    cfg.evaluation.samples_per_prompt = 1
    cfg.dpo.max_steps, cfg.dpo.batch_size, cfg.dpo.learning_rate, cfg.dpo.eval_pairs = 3, 4, 1e-3, 2
    cfg.output_dir = str(tmp_path / "out")
    run_id, summary = run(cfg, store)
    rec = store.get_run(run_id)
    assert (rec.status, rec.method, rec.step) == ("completed", "dpo_ai", 3)

    # The AI-labelled pairs are stored as samples: chosen (scores.chosen 1) never scored below its rejected twin.
    samples = store.samples(run_id)
    assert len(samples) == 2 * summary["ai_pairs"] and summary["ai_pairs"] >= 2
    chosen = samples[samples.scores.map(lambda s: s["chosen"] == 1.0)].reset_index(drop=True)
    rejected = samples[samples.scores.map(lambda s: s["chosen"] == 0.0)].reset_index(drop=True)
    assert (chosen.reward > rejected.reward).all() and (chosen.prompt == rejected.prompt).all()
    assert summary["ai_prompts"] == 12 and summary["labeller"] == "labeller"
    assert summary["ai_pairs"] + summary["ai_ties_dropped"] + summary["ai_identical_dropped"] == 12
    assert summary["train_pairs"] + summary["eval_pairs"] == summary["ai_pairs"]
    assert list(store.metrics_wide(run_id)["dpo/rewards/margins"].dropna().index)[:3] == [1, 2, 3]
    ev = store.evaluations(run_id)
    assert (ev.groupby("phase").size() == 8).all() and summary["before"]["n"] == 8
