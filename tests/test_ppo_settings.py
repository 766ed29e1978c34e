"""Settings PPO cannot get right are refused (engine.config.validate) or neutralised at load (engine.models):
truncated / greedy sampling, half-precision weights, LoRA dropout, the model's own generation_config and dropout
probabilities read from config numbers."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.config import RunConfig, validate


def _errors(**edits) -> dict[str, list[str]]:
    """validate() of the default config with dotted-path edits, grouped by field."""
    cfg = RunConfig()
    cfg.model.name_or_path = "builtin:tiny-gpt2"
    for path, value in edits.items():
        *head, last = path.split("__")
        obj = cfg
        for part in head:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    out: dict[str, list[str]] = {}
    for err in validate(cfg):
        out.setdefault(err.field, []).append(err.message)
    return out


# --------------------------------------------------------------------------------------------------
# Refused by validate()
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ppo", "rloo", "grpo"])
@pytest.mark.parametrize("field, value, says", [
    ("top_k", 5, "must be 0"), ("top_p", 0.9, "must be 1.0"), ("do_sample", False, "sampling must be on"),
])
def test_truncated_or_greedy_sampling_is_refused_for_methods_trained_on_their_samples(method, field, value, says):
    errs = _errors(method=method, evaluation__enabled=False, **{f"generation__{field}": value})
    assert list(errs) == [f"generation.{field}"], errs
    assert says in errs[f"generation.{field}"][0]
    assert ("PPO" if method == "ppo" else method) in errs[f"generation.{field}"][0]


@pytest.mark.parametrize("field, value", [("top_k", 5), ("top_p", 0.9), ("do_sample", False)])
def test_the_hold_out_kl_refuses_truncated_or_greedy_sampling_for_every_method(field, value):
    errs = _errors(method="dpo", **{f"generation__{field}": value})
    assert list(errs) == [f"generation.{field}"] and "hold-out KL" in errs[f"generation.{field}"][0]
    if field != "do_sample":  # DPO without evaluation samples nothing: nothing to refuse
        assert _errors(method="dpo", evaluation__enabled=False, **{f"generation__{field}": value}) == {}
    # dpo_ai samples two responses per prompt: greedy would make them identical
    assert ("generation.do_sample" in _errors(method="dpo_ai", evaluation__enabled=False,
                                              **{f"generation__{field}": value})) == (field == "do_sample")


def test_the_rlhf_chain_checks_its_ppo_stage_before_the_reward_model_trains():
    errs = _errors(method="reward_model", reward_model__then_ppo=True, evaluation__enabled=False,
                   generation__top_k=5, model__dtype="bfloat16")
    assert set(errs) == {"generation.top_k", "model.dtype"}
    assert _errors(method="reward_model", evaluation__enabled=False, generation__top_k=5, model__dtype="bfloat16") == {}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_are_refused_for_ppo_with_the_way_out(dtype):
    errs = _errors(model__dtype=dtype)
    assert list(errs) == ["model.dtype"]
    assert "mixed_precision: bf16" in errs["model.dtype"][0] and "master weights" in errs["model.dtype"][0]
    assert _errors(model__dtype="float32", model__mixed_precision="bf16") == {}
    assert _errors(model__dtype="auto") == {}  # resolved at load: half checkpoints load as float32
    assert "model.dtype" not in _errors(method="dpo", model__dtype=dtype)


def test_lora_dropout_must_be_zero_and_the_default_is():
    from engine.config import LoraSettings

    assert LoraSettings().dropout == 0.0
    assert _errors(model__lora=LoraSettings(enabled=True)) == {}
    errs = _errors(model__lora=LoraSettings(enabled=True, dropout=0.05))
    assert list(errs) == ["model.lora.dropout"] and "dropout off" in errs["model.lora.dropout"][0]
    assert _errors(model__lora=LoraSettings(enabled=False, dropout=0.05)) == {}  # not used: not checked


# --------------------------------------------------------------------------------------------------
# Neutralised at load
# --------------------------------------------------------------------------------------------------
def _copy_with_generation_config(src, dst, **gen_fields):
    """A copy of a saved model whose generation_config.json also sets `gen_fields`."""
    from transformers import GenerationConfig

    shutil.copytree(src, dst)
    cfg = GenerationConfig.from_pretrained(dst)
    cfg.update(**gen_fields)
    cfg.save_pretrained(dst)
    return dst


def _gen_scores(bundle, gen, prompts, seed=0):
    """Run the LM's generate with exactly `engine.models.generate`'s arguments, returning the responses, the raw
    logits (what the log-prob path starts from) and the processed scores generate actually sampled from."""
    from engine.models import encode_queries, generation_kwargs

    q, qm = encode_queries(bundle, prompts, 64, "cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        out = bundle.policy.lm.generate(input_ids=q, attention_mask=qm, output_scores=True, output_logits=True,
                                        return_dict_in_generate=True, **generation_kwargs(bundle, gen))
    r = out.sequences[:, q.shape[1]:]
    return r, torch.stack(out.logits, 1).float(), torch.stack(out.scores, 1).float()


GEN_CONFIG_TRAPS = [
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 1},
    {"min_p": 0.9},
    {"typical_p": 0.5},
    {"suppress_tokens": [5, 6, 7, 8, 9, 10]},
    {"bad_words_ids": [[11], [12]]},
    {"top_k": 3, "top_p": 0.5},
]


@pytest.mark.parametrize("fields", GEN_CONFIG_TRAPS, ids=lambda f: ",".join(f))
def test_generate_samples_from_the_distribution_the_log_probs_use(fields, tiny_gpt2_dir, tmp_path):
    """With the model's own generation_config neutralised at load, generate's processed scores (what it sampled
    from) and sampling_logits (what log-probs, KL and ratio use) give the same distribution, temperature and
    min-length EOS ban included. Without the neutralisation each of these traps moves it (repetition_penalty 1.3:
    up to ~1 nat on the sampled tokens)."""
    from engine.config import GenerationSettings, ModelSettings
    from engine.models import load_policy, logprobs_from_logits, sampling_logits

    path = _copy_with_generation_config(tiny_gpt2_dir, tmp_path / "m", do_sample=True, **fields)
    bundle = load_policy(ModelSettings(name_or_path=str(path), device="cpu"))
    gen = GenerationSettings(max_new_tokens=12, min_length=3, temperature=0.7)
    eos = bundle.tokenizer.eos_token_id
    r, logits, scores = _gen_scores(bundle, gen, ["Human: hi there hi there", "Human: the the the the"])
    want = torch.softmax(sampling_logits(logits, 0.7, 3, eos), -1)
    got = torch.softmax(scores, -1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    lp_sampled = torch.log_softmax(scores, -1).gather(-1, r.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(lp_sampled, logprobs_from_logits(logits, r, 0.7, 3, eos), atol=1e-5)
    # the checkpoint's own settings are saved back with the trained model
    from transformers import GenerationConfig

    from engine.models import save_policy

    save_policy(bundle, tmp_path / "saved")
    saved = GenerationConfig.from_pretrained(tmp_path / "saved")
    assert all(getattr(saved, k) == v for k, v in fields.items())
    assert bundle.policy.lm.generation_config.repetition_penalty in (None, 1.0)  # still neutral in memory


def test_auto_dtype_loads_a_half_checkpoint_as_float32(tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.config import ModelSettings
    from engine.models import load_policy

    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).to(torch.bfloat16)
    lm.save_pretrained(tmp_path / "bf16")
    shutil.copy(tiny_gpt2_dir / "tokenizer.json", tmp_path / "bf16")
    shutil.copy(tiny_gpt2_dir / "tokenizer_config.json", tmp_path / "bf16")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    bundle = load_policy(ModelSettings(name_or_path=str(tmp_path / "bf16"), device="cpu", dtype="auto"))
    assert {p.dtype for p in bundle.policy.parameters()} == {torch.float32}
    assert {p.dtype for p in bundle.reference.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def dropout_models(tmp_path_factory, tiny_gpt2_dir):
    """Two tiny causal LMs whose configs ask for dropout: a Llama with attention_dropout 0.5 (a float read by the
    attention at forward time, no nn.Dropout module) and a GPT-2 with nn.Dropout everywhere (p = 0.3)."""
    from transformers import AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    eos = tok.eos_token_id
    ids = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    out = {}
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, attention_dropout=0.5, **ids))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                                      resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3, **ids))
    for name, model in (("llama", llama), ("gpt2", gpt2)):
        model.generation_config = GenerationConfig(**ids)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        out[name] = d
    return out


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_dropout_from_config_numbers_and_modules_is_off_in_train_mode(which, dropout_models):
    from engine.config import ModelSettings
    from engine.models import load_policy

    bundle = load_policy(ModelSettings(name_or_path=str(dropout_models[which]), device="cpu"))
    cfg = bundle.policy.lm.config
    assert all(v == 0.0 for k, v in cfg.to_dict().items() if "dropout" in k or "pdrop" in k)
    if which == "llama":
        assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in bundle.policy.lm.modules())
    tok = bundle.tokenizer
    enc = tok(["Human: hi there", "Human: a longer question about the weather"], return_tensors="pt", padding=True)
    resp = tok([" fine thanks a lot", " rainy and cold"], return_tensors="pt", padding=True)["input_ids"]
    args = (enc["input_ids"], enc["attention_mask"], resp, torch.ones_like(resp))
    bundle.policy.train()
    with torch.no_grad():
        a, va = bundle.policy(*args)
        b, vb = bundle.policy(*args)
    assert torch.equal(a, b) and torch.equal(va, vb)  # two train-mode passes: no randomness left


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_first_mini_batch_ratio_is_exactly_one_on_models_that_ask_for_dropout(which, dropout_models):
    """The old log-probs come from an eval-mode pass, the first mini-batch's from a train-mode pass with gradients,
    before any update: with every dropout off the PPO ratio is exactly 1 (attention_dropout 0.5 left on: ~0.04
    nats of log-ratio)."""
    from engine.config import GenerationSettings, ModelSettings, PPOSettings
    from engine.models import load_policy
    from engine.ppo import PPOTrainer

    torch.manual_seed(0)
    bundle = load_policy(ModelSettings(name_or_path=str(dropout_models[which]), device="cpu"))
    trainer = PPOTrainer(bundle, lambda p, r: ([float(len(x)) for x in r], {}), PPOSettings(batch_size=4,
                         mini_batch_size=2), GenerationSettings(max_new_tokens=6, min_length=6))
    m = trainer.step(["Human: hi there", "Human: what is the weather like"] * 2)
    first = trainer.last.minibatches[0]
    assert first["ppo/policy/approxkl"] < 1e-12 and first["ppo/policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert abs(m["objective/kl"]) < 1e-5
