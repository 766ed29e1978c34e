"""The reward model (RLHF's first stage) through TRL's RewardTrainer on a tiny GPT-2: > 90 % held-out pairwise
accuracy on a separable synthetic pair set, measured through the hf_classifier backend it is saved for; and the
chain "train a reward model, then PPO with it"."""

import dataclasses
import json
import random

import pytest

from engine.__main__ import main as cli
from engine.config import RewardBackendSettings, RunConfig, validate
from engine.methods.reward_model import backend_settings, ppo_config
from engine.rewards.hf_classifier import HFClassifierBackend
from engine.runner import rlhf_chain, run
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

TOPICS = ["the garden", "my new job", "a trip to Rome", "learning piano", "the weekend", "our old car", "a recipe",
          "the football match", "a birthday party", "the neighbours", "my sister", "winter coats"]


GOOD = ["good", "great", "lovely", "kind"]
BAD = ["bad", "awful", "poor", "rude"]


def synthetic_pairs_file(tmp_path, n=80, seed=0):
    """HH-style dialogues: the chosen reply uses words of GOOD, the rejected one words of BAD, otherwise the same.
    Several words on each side, so an untrained scorer is not right (or wrong) on every pair by chance."""
    rng = random.Random(seed)
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            topic = rng.choice(TOPICS)
            history = (f"\n\nHuman: Tell me what you think about {topic}, question {i}. I would like a short and "
                       f"honest answer please.\n\nAssistant:")
            k = rng.randrange(len(GOOD))
            f.write(json.dumps({"chosen": f"{history} That sounds {GOOD[k]}, really {rng.choice(GOOD)}.",
                                "rejected": f"{history} That sounds {BAD[k]}, really {rng.choice(BAD)}."}) + "\n")
    return path


def rm_config(model_dir, tmp_path, steps=40) -> RunConfig:
    cfg = RunConfig(name="tiny-rm", method="reward_model")
    cfg.model.name_or_path = str(model_dir)
    cfg.data.source = str(synthetic_pairs_file(tmp_path))
    cfg.data.validation_size = 0  # 80 synthetic dialogues
    cfg.data.holdout_size = 8
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.reward_model.max_steps, cfg.reward_model.batch_size = steps, 8
    cfg.reward_model.learning_rate, cfg.reward_model.max_length = 3e-3, 96
    cfg.reward_model.eval_pairs = 24
    # the PPO stage of a chain, at the seed article's sizes (RunConfig()'s defaults are the measured SmolLM2 run's)
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_reward_model_separates_synthetic_pairs_and_loads_as_hf_classifier(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = rm_config(tiny_gpt2_dir, tmp_path)
    run_id, summary = run(cfg, store)
    rec = store.get_run(run_id)
    assert (rec.status, rec.method, rec.step) == ("completed", "reward_model", 40)
    print(f"reward model: held-out pairwise accuracy {summary['trl_eval_accuracy_before']:.3f} untrained, "
          f"{summary['pairwise_accuracy']:.3f} trained "
          f"(TRL's eval {summary['trl_eval_accuracy']:.3f}), mean margin {summary['mean_margin']:.3f}")
    assert summary["pairwise_accuracy"] > 0.9 > summary["trl_eval_accuracy_before"]
    # the backend sees exactly the tokens TRL trained and evaluated on, so the two accuracies agree
    assert summary["pairwise_accuracy"] == pytest.approx(summary["trl_eval_accuracy"], abs=1e-6)
    assert summary["eval_pairs"] == 24 and summary["pairs_dropped_as_holdout"] == 8
    assert store.checkpoints(run_id)[0].path == summary["model_path"]
    wide = store.metrics_wide(run_id)
    assert list(wide["rm/loss"].dropna().index) == list(range(1, 41))
    assert wide["rm/eval/pairwise_accuracy"].dropna().iloc[-1] == summary["pairwise_accuracy"]

    # A one-label classifier: the hf_classifier backend's reward is its only logit (label 0, named "reward").
    backend = HFClassifierBackend(model=summary["model_path"], label=0, score_on="prompt_response").load()
    assert backend.labels == ["reward"] and backend.label_index == 0
    prompt = "\n\nHuman: Tell me what you think about a new topic, question 999.\n\nAssistant:"
    result = backend.score([prompt, prompt], [" That sounds great, really kind.", " That sounds awful, really poor."])
    assert result.scores[0] > result.scores[1]
    assert result.raw["logit_reward"] == result.scores
    with pytest.raises(ValueError, match="toxic_label"):
        backend.toxicity(["a one-logit reward model gives no toxicity probability"])
    assert RewardBackendSettings(**summary["reward_backend"]).options["model"] == summary["model_path"]


def test_rlhf_chain_trains_a_reward_model_then_ppo_with_it(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = rm_config(tiny_gpt2_dir, tmp_path, steps=4)
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, 2
    cfg.generation.max_new_tokens = 8
    cfg.data.max_prompt_tokens = 96
    cfg.data.min_chars = 10
    cfg.evaluation.bootstrap_samples = 100
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    before = cfg.to_dict()
    announced = []
    rm_id, ppo_id = rlhf_chain(cfg, store, on_run=lambda run_id, c: announced.append((run_id, c.method, c.name)))
    assert cfg.to_dict() == before  # the caller's config (its reward section included) is untouched
    assert announced == [(rm_id, "reward_model", "tiny-rm"), (ppo_id, "ppo", "tiny-rm-ppo")]
    rm, ppo = store.get_run(rm_id), store.get_run(ppo_id)
    assert (rm.method, rm.status, ppo.method, ppo.status) == ("reward_model", "completed", "ppo", "completed")
    ppo_cfg = RunConfig.from_yaml(ppo.config_yaml)
    assert (ppo.name, ppo_cfg.parent_run) == ("tiny-rm-ppo", rm_id)
    (backend,) = ppo_cfg.reward.backends
    assert (backend.kind, backend.name, backend.options["model"]) == ("hf_classifier", "reward_model",
                                                                      rm.summary["model_path"])
    wide = store.metrics_wide(ppo_id)
    assert list(wide["env/reward/reward_model"].dropna().index) == [1, 2]  # PPO was rewarded by the trained model
    assert ppo.summary["before"]["n"] == 8


def test_ppo_config_is_the_second_stage_and_leaves_the_reward_model_config_alone(tmp_path):
    cfg = RunConfig(name="hh", method="reward_model")
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", weight=0.5)]
    cfg.reward_model.then_ppo = True
    cfg.ppo.max_ppo_steps = 7
    summary = {"reward_backend": dataclasses.asdict(backend_settings(tmp_path / "rm", 96))}
    before = cfg.to_dict()

    out = ppo_config(cfg, summary, "r-rm")
    assert (out.method, out.name, out.parent_run, out.ppo.max_ppo_steps) == ("ppo", "hh-ppo", "r-rm", 7)
    (rm,) = out.reward.backends  # the trained model replaces the mix ...
    assert (rm.kind, rm.name, rm.score_on) == ("hf_classifier", "reward_model", "prompt_response")
    assert rm.options == {"model": str(tmp_path / "rm"), "label": 0, "max_length": 96}
    kept = ppo_config(cfg, summary, "r-rm", keep_rewards=True)  # ... or joins it
    mix = [b.display_name for b in cfg.reward.backends]
    assert [b.display_name for b in kept.reward.backends] == mix + ["reward_model"]
    cfg.reward_model.keep_rewards = True  # the config's own switch when the argument is not given
    assert len(ppo_config(cfg, summary).reward.backends) == len(mix) + 1
    cfg.reward_model.keep_rewards = False
    assert cfg.to_dict() == before and out.reward is not cfg.reward
    with pytest.raises(ValueError, match="reward_backend"):
        ppo_config(cfg, {}, "r-failed")  # a run that did not complete has no model to reward with


def test_keep_rewards_without_then_ppo_is_refused_on_its_field():
    cfg = RunConfig(method="reward_model")
    cfg.reward_model.keep_rewards = True
    assert [e.field for e in validate(cfg)] == ["reward_model.keep_rewards"]
    cfg.reward_model.then_ppo = True
    assert validate(cfg) == []


def test_cli_run_with_then_ppo_runs_the_chain_and_prints_both_ids(tiny_gpt2_dir, tmp_path, capsys):
    cfg = rm_config(tiny_gpt2_dir, tmp_path, steps=2)
    cfg.reward_model.then_ppo = True
    cfg.reward_model.eval_pairs = 4
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 2, 2, 1
    cfg.generation.max_new_tokens, cfg.generation.min_length = 4, 1
    cfg.data.max_prompt_tokens, cfg.data.min_chars = 64, 10
    cfg.evaluation.enabled = False
    path = cfg.save(tmp_path / "rlhf.yaml")
    db = str(tmp_path / "cli.db")
    assert cli(["--db", db, "run", str(path)]) == 0
    out = capsys.readouterr().out
    store = Store(db)
    ppo, rm = store.list_runs()  # newest first
    assert (rm.method, rm.status, rm.name, ppo.method, ppo.status, ppo.name) == (
        "reward_model", "completed", "tiny-rm", "ppo", "completed", "tiny-rm-ppo")
    assert f"reward-model run {rm.id} (tiny-rm" in out and f"PPO run {ppo.id} (tiny-rm-ppo" in out
    assert f"reward-model run {rm.id} -> PPO run {ppo.id}" in out
    ppo_cfg = RunConfig.from_yaml(ppo.config_yaml)
    assert ppo_cfg.parent_run == rm.id and ppo_cfg.reward.backends[0].options["model"] == rm.summary["model_path"]
