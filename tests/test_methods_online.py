"""RLOO and GRPO through TRL's trainers with the lab's reward backends: the reward wrappers reproduce the Ensemble,
both trainers raise a toy reward on the tiny GPT-2, a whole GRPO run (LoRA) goes through engine.runner, and seq2seq
policies are refused with a clear error."""

import asyncio
import shutil

import pytest
import torch

from engine.config import ConfigError, RewardBackendSettings, RunConfig, validate
from engine.methods.online import build_trainer, reward_functions
from engine.models import encode_queries, generate, load_policy
from engine.ppo import decode_responses
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


def letter_share(text: str) -> float:
    return sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1)


class LetterShare:
    """Toy reward: the share of ASCII letters in the response (dense: every sample gets a different value)."""

    name = "letters"
    score_range = (0.0, 1.0)

    def score(self, prompts, responses):
        return RewardResult([letter_share(r) for r in responses], {"n_chars": [float(len(r)) for r in responses]})


class Length:
    name = "length"
    score_range = (0.0, 100.0)

    def score(self, prompts, responses):
        return RewardResult([float(len(p) + len(r)) for p, r in zip(prompts, responses, strict=True)], {})


def online_config(model_dir, tmp_path, method) -> RunConfig:
    cfg = RunConfig(name=f"tiny-{method}", method=method)
    cfg.model.name_or_path = str(model_dir)
    cfg.generation.max_new_tokens = cfg.generation.min_length = 8
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.data.max_prompt_tokens = 96
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 200
    cfg.online.batch_size, cfg.online.num_generations, cfg.online.max_steps = 16, 4, 10
    cfg.online.learning_rate = 5e-2
    cfg.evaluation.samples_per_prompt = 1
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def _run_async(coro):
    """Run a coroutine on a fresh loop in its own thread: another test's fixture (Playwright's sync API)
    may leave an event loop running in this thread, where asyncio.run refuses to start."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.mark.parametrize("normalize", ["none", "zscore", "minmax"])
def test_reward_functions_sum_to_the_ensembles_score(normalize):
    prompts = ["p one", "p two", "p three"]
    completions = [[{"role": "assistant", "content": t}] for t in ("Hello there", "...!!", "abc 123")]
    texts = [c[0]["content"] for c in completions]
    expected = Ensemble([(LetterShare(), 2.0), (Length(), 0.5)], normalize=normalize).score(prompts, texts)

    ensemble = Ensemble([(LetterShare(), 2.0), (Length(), 0.5)], normalize=normalize)
    funcs, weights, recorder = reward_functions(ensemble)
    assert [f.__name__ for f in funcs] == ["letters", "length"] and weights == [2.0, 0.5]
    per_func = [_run_async(f(prompts=["<chat-formatted>"] * 3, completions=completions, raw_prompt=prompts))
                for f in funcs]
    total = [sum(w * v[i] for w, v in zip(weights, per_func, strict=True)) for i in range(3)]  # TRL's weighted sum
    assert total == pytest.approx(expected.scores)
    assert recorder.signals() == expected.raw  # the same signals, keyed as the Ensemble keys them
    rows = recorder.rows(2)
    assert [r["response"] for r in rows] == texts[:2] and rows[0]["prompt"] == "p one"
    assert rows[1]["reward"] == pytest.approx(expected.scores[1])


def mean_letter_share(bundle, prompts, gen, n_rep=16) -> float:
    q, qm = encode_queries(bundle, prompts * n_rep, 64, bundle.policy.device)
    torch.manual_seed(123)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, gen)
    texts = decode_responses(bundle.tokenizer, r, rm)
    return sum(letter_share(t) for t in texts) / len(texts)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_online_trainer_raises_a_toy_reward(tiny_gpt2_dir, tmp_path, method):
    cfg = online_config(tiny_gpt2_dir, tmp_path, method)
    bundle = load_policy(cfg.model)
    prompts = [f"\n\nHuman: tell me about item {i}.\n\nAssistant:" for i in range(16)]
    before = mean_letter_share(bundle, prompts, cfg.generation)  # 256 samples, seeded
    trainer, recorder = build_trainer(method, bundle, prompts, Ensemble([(LetterShare(), 1.0)]), cfg,
                                      tmp_path / "trl")
    trainer.train()
    assert trainer.model is bundle.policy.lm  # trained in place: the bundle evaluates the trained policy
    after = mean_letter_share(bundle, prompts, cfg.generation)
    print(f"{method}: mean letter share of 256 samples {before:.3f} -> {after:.3f} after 10 steps")
    # 256 samples: the standard error of each mean is about 0.01; training with the negated reward moved it the
    # other way (0.363 -> 0.285 / 0.271) when this test was written, so the rise is the reward's doing.
    assert after > before + 0.05
    assert recorder.batches == 10
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 10 and "rewards/letters/mean" in logged[0]


@pytest.mark.parametrize("method,lora", [("grpo", True), ("rloo", False)])
def test_online_run_through_the_runner(tiny_gpt2_dir, tmp_path, method, lora):
    store = Store(tmp_path / "runs.db")
    cfg = online_config(tiny_gpt2_dir, tmp_path, method)
    cfg.online.max_steps, cfg.online.batch_size, cfg.online.num_generations = 2, 4, 2
    cfg.online.learning_rate = 1e-3
    cfg.model.lora.enabled = lora
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    run_id, summary = run(cfg, store)
    rec = store.get_run(run_id)
    assert (rec.status, rec.method, rec.step, rec.total_steps) == ("completed", method, 2, 2)

    wide = store.metrics_wide(run_id)
    for key in ("env/reward_mean", "env/reward_std", "env/reward/profanity", "env/reward/profanity/p_offensive",
                "env/response_length_mean", "objective/kl_per_token", "objective/kl_coef", f"{method}/reward",
                f"{method}/kl", f"{method}/loss", f"{method}/rewards/profanity/mean", "time/step_s"):
        assert list(wide[key].dropna().index) == [1, 2], key
    assert (wide["env/reward_mean"] == wide[f"{method}/reward"]).all()  # the lab's name and TRL's, same number
    samples = store.samples(run_id)
    assert len(samples) == 2 * cfg.online.samples_per_step and set(samples.step) == {1, 2}
    assert {"profanity", "profanity/p_offensive"} <= set(samples.scores[0])

    ev = store.evaluations(run_id)
    assert (ev.groupby("phase").size() == 8).all()
    assert summary["train_steps"] == 2 and summary["before"]["n"] == 8 and "mean_kl" in summary
    saved = "adapter_config.json" if lora else "model.safetensors"  # LoRA saves its adapter, as PPO does
    assert (tmp_path / "out" / run_id / "policy" / saved).is_file()


@pytest.mark.parametrize("method", ["rloo", "grpo", "dpo", "dpo_ai"])
def test_seq2seq_policies_are_refused_with_a_clear_error(tiny_t5_dir, tmp_path, method):
    cfg = online_config(tiny_t5_dir, tmp_path, method)
    errors = {e.field: e.message for e in validate(cfg)}
    assert "causal-only" in errors["model.architecture"] and "choose a causal model or PPO" in \
        errors["model.architecture"]
    with pytest.raises(ConfigError, match="causal-only"):
        run(cfg, Store(tmp_path / "x.db"))
    assert Store(tmp_path / "x.db").list_runs() == []  # refused before a run is registered
    cfg.method = "ppo"
    assert "model.architecture" not in {e.field for e in validate(cfg)}  # PPO trains seq2seq policies


def test_seq2seq_found_only_at_load_time_fails_the_run_clearly(tiny_t5_dir, tmp_path, monkeypatch):
    import engine.config as config

    # A hub id cannot be inspected offline by validate(); the method checks the loaded config before training.
    monkeypatch.setattr(config, "_local_is_encoder_decoder", lambda name: None)
    cfg = online_config(tiny_t5_dir, tmp_path, "grpo")
    store = Store(tmp_path / "runs.db")
    with pytest.raises(ConfigError, match="online trainers are causal-only"):
        run(cfg, store)
    rec = store.list_runs()[0]
    # (the runner keeps the first line of the message as the error: "ConfigError: invalid config:"; the field and
    # the reason are in the stored traceback)
    assert rec.status == "failed" and "model.architecture: TRL's online trainers are causal-only" in rec.traceback
    assert store.evaluations(rec.id).empty  # nothing was generated


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def chat_gpt2_dir(tiny_gpt2_dir, tmp_path):
    """The tiny GPT-2 whose tokenizer has a chat template (as SmolLM2's has): prompts become user turns."""
    from transformers import AutoTokenizer

    out = shutil.copytree(tiny_gpt2_dir, tmp_path / "chat_gpt2")
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["grpo", "dpo"])
def test_chat_template_models_train_on_chat_messages(chat_gpt2_dir, tmp_path, method):
    store = Store(tmp_path / "runs.db")
    cfg = online_config(chat_gpt2_dir, tmp_path, method)
    cfg.online.max_steps, cfg.online.batch_size, cfg.online.num_generations = 1, 4, 2
    cfg.dpo.max_steps, cfg.dpo.batch_size, cfg.dpo.eval_pairs, cfg.dpo.max_response_tokens = 1, 2, 0, 16
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    run_id, summary = run(cfg, store)
    assert store.get_run(run_id).status == "completed"
    ev = store.evaluations(run_id)
    assert not ev.response.str.contains("<|assistant|>", regex=False).any()  # the evaluation used the template too
    if method == "grpo":
        # the reward backends saw the lab's prompt text and the reply text, not TRL's chat messages
        samples = store.samples(run_id)
        assert samples.prompt.str.startswith("Summarize the following conversation.").all()
        assert not samples.prompt.str.contains("<|user|>", regex=False).any()
        assert samples.response.map(lambda r: isinstance(r, str) and not r.startswith("[{")).all()
