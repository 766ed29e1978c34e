"""DPO through TRL's DPOTrainer on the tiny local GPT-2: the chosen-over-rejected margin rises on held-out toy
pairs, LoRA trains adapters against the untouched base, and a whole run goes through engine.runner with PPO's
hold-out prompts and before/after evaluations."""

import pytest
import torch

from engine.config import RewardBackendSettings, RunConfig
from engine.methods.callbacks import StoreCallback
from engine.methods.common import adopt, preference_rows
from engine.methods.dpo import fit_pairs, train_dpo
from engine.models import load_policy
from engine.runner import prepare_prompts, run
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


def method_config(model_dir, tmp_path, method="dpo", steps=3) -> RunConfig:
    cfg = RunConfig(name=f"tiny-{method}", method=method)
    cfg.model.name_or_path = str(model_dir)
    cfg.generation.max_new_tokens = 8
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.data.max_prompt_tokens = 96
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 200
    cfg.dpo.max_steps, cfg.dpo.batch_size, cfg.dpo.learning_rate = steps, 4, 1e-3
    cfg.dpo.max_response_tokens, cfg.dpo.eval_pairs = 32, 4
    cfg.evaluation.samples_per_prompt = 1
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def toy_pairs(n, offset=0):
    return [{"prompt": f"\n\nHuman: question number {i}?\n\nAssistant:", "chosen": " Sure, happy to help.",
             "rejected": " No. Go away."} for i in range(offset, offset + n)]


def reply_logprob(lm, tok, prompt: str, reply: str) -> float:
    """log p(reply | prompt), summed over the reply's tokens (computed here, independently of TRL)."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return float(logp.gather(-1, targets[:, None]).squeeze(-1)[len(p_ids) - 1:].sum())


def implicit_margin(bundle, pairs) -> float:
    """Mean of [log pi(c) - log ref(c)] - [log pi(r) - log ref(r)] over the pairs."""
    tok, out = bundle.tokenizer, []
    for p in pairs:
        with bundle.reference_lm() as ref:
            ref_c, ref_r = (reply_logprob(ref, tok, p["prompt"], p[k]) for k in ("chosen", "rejected"))
        pol_c, pol_r = (reply_logprob(bundle.policy.lm, tok, p["prompt"], p[k]) for k in ("chosen", "rejected"))
        out.append((pol_c - ref_c) - (pol_r - ref_r))
    return sum(out) / len(out)


def test_dpo_raises_the_chosen_margin_on_held_out_pairs(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = method_config(tiny_gpt2_dir, tmp_path, steps=6)
    cfg.dpo.learning_rate = 5e-3
    bundle = load_policy(cfg.model)
    train, held_out = toy_pairs(8), toy_pairs(4, offset=100)
    assert implicit_margin(bundle, held_out) == 0.0  # the policy starts as the reference

    run_id = store.create_run(cfg.to_yaml(), method="dpo")
    cb = StoreCallback(store, run_id, "dpo/", total_steps=6)
    trainer, summary = train_dpo(bundle, fit_pairs(train, bundle.tokenizer, 96, 32), held_out, cfg,
                                 tmp_path / "trl", [cb])
    margin = implicit_margin(bundle, held_out)
    print(f"held-out log-ratio margin after 6 DPO steps: {margin:.2f}; TRL eval {summary['pair_eval']}")
    assert margin > 1.0
    assert summary["train_steps"] == 6 and summary["pair_eval"]["rewards/accuracies"] == 1.0
    # TRL's own view, as stored live by the callback: the implicit-reward margin grows step by step
    margins = store.metrics_wide(run_id, ["dpo/rewards/margins"])["dpo/rewards/margins"].dropna()
    assert list(margins.index) == [1, 2, 3, 4, 5, 6] and margins.iloc[-1] > margins.iloc[0]
    assert store.metrics_wide(run_id, ["dpo/eval/rewards/accuracies"]).iloc[-1, 0] == 1.0


def test_dpo_lora_trains_adapters_and_keeps_the_base_as_reference(tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = method_config(tiny_gpt2_dir, tmp_path, steps=4)
    cfg.model.lora.enabled, cfg.model.lora.r = True, 8
    cfg.dpo.learning_rate = 2e-2
    bundle = load_policy(cfg.model)
    trainer, _ = train_dpo(bundle, toy_pairs(8), [], cfg, tmp_path / "trl")
    adopt(bundle, trainer)
    assert list(bundle.policy.lm.peft_config) == ["default"]  # TRL's "ref" adapter copy is dropped
    held_out = toy_pairs(4, offset=100)
    assert implicit_margin(bundle, held_out) > 0.5

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    ids = bundle.tokenizer(held_out[0]["prompt"] + held_out[0]["chosen"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        policy_logits = bundle.policy.lm(input_ids=ids).logits
        with bundle.reference_lm() as ref:
            assert torch.allclose(ref(input_ids=ids).logits, base_logits, atol=1e-5)
    assert not torch.allclose(policy_logits, base_logits, atol=1e-3)


def test_dpo_run_through_the_runner_uses_ppos_holdout_and_evaluator(tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data import truncate_left

    store = Store(tmp_path / "runs.db")
    cfg = method_config(tiny_gpt2_dir, tmp_path, steps=3)
    run_id, summary = run(cfg, store)
    rec = store.get_run(run_id)
    assert (rec.status, rec.method, rec.step, rec.total_steps) == ("completed", "dpo", 3, 3)
    assert RunConfig.from_yaml(rec.config_yaml) == cfg

    # The same hold-out prompts PPO is evaluated on, truncated the same way, scored by the same evaluator.
    _, holdout = prepare_prompts(cfg)
    holdout = truncate_left(holdout, AutoTokenizer.from_pretrained(tiny_gpt2_dir), 96, template=cfg.data.template)
    ev = store.evaluations(run_id)
    for phase in ("before", "after"):
        assert list(ev[ev.phase == phase].sort_values("idx").prompt) == holdout
    assert summary["evaluator"] == "profanity" and summary["before"]["n"] == summary["after"]["n"] == 8
    assert summary["mean_kl"] == summary["mean_kl"]  # finite: the KL of the trained policy to the base

    # No training pair comes from a hold-out dialogue (the builtin source: one pair per dialogue), and only the
    # pairs 3 steps x 4 can use are prepared.
    assert summary["pairs_dropped_as_holdout"] == 8
    assert (summary["train_pairs"], summary["eval_pairs"]) == (12, 4)

    wide = store.metrics_wide(run_id)
    for key in ("dpo/loss", "dpo/rewards/chosen", "dpo/rewards/rejected", "dpo/rewards/margins",
                "dpo/rewards/accuracies"):
        assert list(wide[key].dropna().index) == [1, 2, 3], key
    assert "dpo/eval/rewards/margins" in wide
    ckpt = store.checkpoints(run_id)[0]
    assert ckpt.step == 3
    AutoModelForCausalLM.from_pretrained(ckpt.path)  # the trained policy loads like PPO's checkpoints


def test_preference_rows_turn_hh_dialogues_into_chat_turns():
    pair = {"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:",
            "chosen": " Fine, thanks.", "rejected": " Go away."}
    assert preference_rows([pair], chat=False, hh_prompts=True) == [pair]
    (row,) = preference_rows([pair], chat=True, hh_prompts=True)
    assert row["prompt"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "how are you?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Fine, thanks."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Go away."}]
    lab_prompt = {"prompt": "Summarize the following conversation.\n\nHuman: x", "chosen": "a", "rejected": "b"}
    (row,) = preference_rows([lab_prompt], chat=True, hh_prompts=False)  # dpo_ai: the lab prompt is one user turn
    assert row["prompt"] == [{"role": "user", "content": lab_prompt["prompt"]}]
