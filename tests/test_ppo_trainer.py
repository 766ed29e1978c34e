"""Actor-critic, generation and the PPO trainer on tiny models built locally (causal GPT-2 and seq2seq T5)."""

import math

import pytest
import torch

from engine.config import GenerationSettings, LoraSettings, ModelSettings, PPOSettings
from engine.models import forward_lm, generate, load_policy, logprobs_from_logits, reference_logprobs, trim_after_eos
from engine.ppo import PPOTrainer


def _bundle(path, **kw):
    torch.manual_seed(0)
    kw.setdefault("mixed_precision", "none")  # exact float32 numbers (RunConfig()'s default is bf16 autocast)
    return load_policy(ModelSettings(name_or_path=str(path), device="cpu", **kw))


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_t5_dir"])
def test_value_head_and_logit_shapes(which, request):
    bundle = _bundle(request.getfixturevalue(which))
    tok = bundle.tokenizer
    enc = tok(["Human: hi there", "Human: a longer question about the weather today"], return_tensors="pt",
              padding=True)
    gen = GenerationSettings(max_new_tokens=6, min_length=6)
    r, rm = generate(bundle, bundle.policy.lm, enc["input_ids"], enc["attention_mask"], gen)
    logits, values = bundle.policy(enc["input_ids"], enc["attention_mask"], r, rm)
    assert logits.shape == (2, r.shape[1], bundle.policy.lm.config.vocab_size)
    assert values.shape == (2, r.shape[1])
    assert bundle.seq2seq == (which == "tiny_t5_dir")


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_t5_dir"])
def test_generate_logits_match_a_forward_pass(which, request):
    """The logits generate samples from give the same log-probs as a separate pass over prompt + response,
    EOS ban and temperature included (evaluation takes the policy's log-probs from them)."""
    bundle = _bundle(request.getfixturevalue(which))
    tok = bundle.tokenizer
    enc = tok(["Human: hi", "Human: a much longer question about the weather today and tomorrow"],
              return_tensors="pt", padding=True)
    q, qm = enc["input_ids"], enc["attention_mask"]
    gen = GenerationSettings(max_new_tokens=8, min_length=3, temperature=0.7)
    torch.manual_seed(0)
    r, rm, gen_logits = generate(bundle, bundle.policy.lm, q, qm, gen, with_logits=True)
    torch.manual_seed(0)
    r2, rm2 = generate(bundle, bundle.policy.lm, q, qm, gen)
    assert torch.equal(r, r2) and torch.equal(rm, rm2)  # asking for logits does not change the samples
    assert gen_logits.shape == (2, r.shape[1], bundle.policy.lm.config.vocab_size)
    eos = tok.eos_token_id
    with torch.no_grad():
        fwd_logits, _ = bundle.policy(q, qm, r, rm)
    lp_gen = logprobs_from_logits(gen_logits, r, 0.7, 3, eos) * rm
    lp_fwd = logprobs_from_logits(fwd_logits, r, 0.7, 3, eos) * rm
    assert torch.allclose(lp_gen, lp_fwd, atol=1e-4)
    assert lp_gen.abs().sum() > 0


def test_causal_forward_is_unaffected_by_left_padding(tiny_gpt2_dir):
    """Log-probs of a response must not depend on how much left padding its prompt got."""
    bundle = _bundle(tiny_gpt2_dir)
    tok = bundle.tokenizer
    short, long = "Human: hi", "Human: a much longer prompt that forces padding on the short one"
    response = tok(" hello there friend", return_tensors="pt")["input_ids"]
    batch = tok([short, long], return_tensors="pt", padding=True)
    alone = tok([short], return_tensors="pt")
    resp2 = response.repeat(2, 1)
    ones = torch.ones_like(resp2)
    with torch.no_grad():
        lp_batch = logprobs_from_logits(
            forward_lm(bundle.policy.lm, False, batch["input_ids"], batch["attention_mask"], resp2, ones)[0], resp2)
        lp_alone = logprobs_from_logits(
            forward_lm(bundle.policy.lm, False, alone["input_ids"], alone["attention_mask"], response,
                       torch.ones_like(response))[0], response)
    assert batch["attention_mask"][0, 0] == 0  # the short prompt really is left-padded
    assert torch.allclose(lp_batch[0], lp_alone[0], atol=1e-4)


def test_responses_are_cut_at_prompt_length(tiny_gpt2_dir):
    bundle = _bundle(tiny_gpt2_dir)
    tok = bundle.tokenizer
    enc = tok(["Human: tell me", "Human: tell me something much longer than that"], return_tensors="pt",
              padding=True)
    gen = GenerationSettings(max_new_tokens=5, min_length=5, do_sample=False)
    r, rm = generate(bundle, bundle.policy.lm, enc["input_ids"], enc["attention_mask"], gen)
    full = bundle.policy.lm.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                     max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
    # The response is exactly what follows the (padded) prompt, for both prompt lengths.
    assert torch.equal(r, full[:, enc["input_ids"].shape[1]:])
    assert rm.sum().item() == 10


def test_trim_after_eos_keeps_eos_and_masks_the_rest():
    resp = torch.tensor([[5, 6, 2, 7, 8], [5, 6, 7, 8, 9], [2, 3, 3, 3, 3]])
    ids, mask = trim_after_eos(resp, eos_id=2, pad_id=0)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ids.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]


def _e_share(prompts, responses):
    """Toy reward: the share of characters in the response that are the letter e."""
    scores = [sum(c == "e" for c in r) / max(len(r), 1) for r in responses]
    return scores, {"e_share": scores}


@pytest.mark.parametrize("which", ["tiny_gpt2_dir", "tiny_t5_dir"])
def test_ppo_raises_mean_reward_on_a_toy_task(which, request):
    bundle = _bundle(request.getfixturevalue(which))
    cfg = PPOSettings(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-3, init_kl_coef=0.01,
                      adaptive_kl=False, seed=0, num_generations=1)
    trainer = PPOTrainer(bundle, _e_share, cfg, GenerationSettings(max_new_tokens=8, min_length=8))
    prompts = ["Human: hello there"] * 16
    history = [trainer.step(prompts)["env/reward_mean"] for _ in range(30)]
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last > first + 0.05, (first, last)


def test_bf16_mixed_precision_trains_in_bf16_and_evaluates_in_float32(tiny_gpt2_dir):
    from engine.evaluate import generate_responses

    bundle = _bundle(tiny_gpt2_dir, mixed_precision="bf16")
    tok = bundle.tokenizer
    enc = tok(["Human: hi there", "Human: what is the weather like"], return_tensors="pt", padding=True)
    resp = tok([" fine thanks a lot", " rainy and cold here"], return_tensors="pt", padding=True)["input_ids"]
    args = (enc["input_ids"], enc["attention_mask"], resp, torch.ones_like(resp))
    with torch.no_grad():
        logits16, values16 = bundle.policy(*args)
        with bundle.full_precision():
            logits32, values32 = bundle.policy(*args)
        ref16 = reference_logprobs(bundle, *args, temperature=1.0)
    assert bundle.mixed_precision == "bf16" and bundle.policy.mixed_precision == "bf16"  # restored after the block
    assert logits16.dtype == logits32.dtype == torch.float32 and values16.dtype == torch.float32
    lp16, lp32 = logprobs_from_logits(logits16, resp), logprobs_from_logits(logits32, resp)
    diff = (lp16 - lp32).abs().max()
    assert 0 < diff < 0.2, diff  # really rounded to bf16, yet close
    # Policy and reference share the weights and the precision at the start: the KL estimate is exactly 0.
    assert torch.equal(lp16, ref16)

    # Training steps run under autocast and still move the policy the right way...
    cfg = PPOSettings(batch_size=8, mini_batch_size=4, learning_rate=3e-3, init_kl_coef=0.01, adaptive_kl=False,
                      num_generations=1)
    trainer = PPOTrainer(bundle, _e_share, cfg, GenerationSettings(max_new_tokens=6, min_length=6))
    m = trainer.step(["Human: hello there"] * 8)
    assert abs(m["objective/kl"]) < 1e-4 and all(p.dtype == torch.float32 for p in bundle.policy.parameters())
    # ...while evaluation samples at full precision: the same responses as a float32 bundle with those weights.
    gen = GenerationSettings(max_new_tokens=6)
    prompts = ["Human: hello there", "Human: tell me a story"]
    got = generate_responses(bundle, prompts, gen, which="after", batch_size=2, max_prompt_tokens=32, seed=5)
    bundle.mixed_precision = bundle.policy.mixed_precision = "none"
    want = generate_responses(bundle, prompts, gen, which="after", batch_size=2, max_prompt_tokens=32, seed=5)
    assert got == want


def test_num_generations_samples_each_prompt_k_times_and_still_learns(tiny_gpt2_dir):
    bundle = _bundle(tiny_gpt2_dir)
    cfg = PPOSettings(batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=3e-3, init_kl_coef=0.01,
                      adaptive_kl=False, seed=0, num_generations=4)
    seen = []
    trainer = PPOTrainer(bundle, _e_share, cfg, GenerationSettings(max_new_tokens=8, min_length=8),
                         callbacks=[lambda step, m, ro: seen.append(ro)])
    prompts = ["Human: hello there", "Human: how are you", "Human: tell me a story", "Human: what now"]
    history = [trainer.step(prompts)["env/reward_mean"] for _ in range(30)]
    ro = seen[0]
    assert ro.prompts == [p for p in prompts for _ in range(4)] and len(ro.responses) == 16
    assert len(set(ro.responses[:4])) > 1  # four samples, not one copied
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last > first + 0.05, (first, last)


def test_first_step_metrics_and_zero_initial_kl(tiny_gpt2_dir):
    bundle = _bundle(tiny_gpt2_dir)
    seen = []
    trainer = PPOTrainer(bundle, _e_share, PPOSettings(batch_size=4, mini_batch_size=2, num_generations=1),
                         GenerationSettings(max_new_tokens=6), callbacks=[lambda step, m, ro: seen.append((step, m, ro))])
    m = trainer.step(["Human: hi"] * 4)
    # The policy starts as the reference: no KL, ratio exactly 1, nothing clipped.
    assert abs(m["objective/kl"]) < 1e-4
    for key in ["objective/kl", "objective/entropy", "ppo/returns/mean", "ppo/returns/var",
                "ppo/policy/advantages_mean", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total",
                "ppo/policy/clipfrac", "ppo/policy/approxkl", "ppo/val/vpred", "ppo/val/error", "env/reward_mean",
                "env/reward_std", "env/reward/e_share", "objective/kl_coef", "env/response_length_mean",
                "time/tokens_per_s", "time/step_s"]:
        assert key in m, key
    assert seen[0][0] == 1 and seen[0][1] is m and len(seen[0][2].responses) == 4


def test_lora_reference_is_the_base_with_adapters_off(tiny_gpt2_dir):
    bundle = _bundle(tiny_gpt2_dir, lora=LoraSettings(enabled=True, r=4, alpha=8, target_modules=["c_attn"]))
    assert bundle.reference is None  # no second copy in memory
    base = _bundle(tiny_gpt2_dir).policy.lm
    tok = bundle.tokenizer
    enc = tok(["Human: hi there"], return_tensors="pt")
    resp = tok(" fine thanks", return_tensors="pt")["input_ids"]
    rm = torch.ones_like(resp)
    args = (enc["input_ids"], enc["attention_mask"], resp, rm)

    trainer = PPOTrainer(bundle, _e_share,
                         PPOSettings(batch_size=4, mini_batch_size=2, learning_rate=1e-2, num_generations=1),
                         GenerationSettings(max_new_tokens=6))
    for _ in range(2):
        trainer.step(["Human: hi"] * 4)
    with torch.no_grad():
        ref = reference_logprobs(bundle, *args, temperature=1.0)
        base_lp = logprobs_from_logits(forward_lm(base, False, *args)[0], resp)
        policy_lp = logprobs_from_logits(bundle.policy(*args)[0], resp)
    assert torch.allclose(ref, base_lp, atol=1e-5)  # reference untouched by training
    assert not torch.allclose(policy_lp, base_lp, atol=1e-4)  # while the adapters did learn
    trainable = {n for n, p in bundle.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)


# --------------------------------------------------------------------------------------------------
# One step checked tensor by tensor, on responses that end early (EOS before max_new_tokens)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def early_eos_gpt2_dir(tmp_path_factory, tiny_gpt2_dir):
    """The tiny GPT-2 with its final layer-norm bias pushed toward the EOS embedding: EOS gets ~+3 nats, so many
    responses end before max_new_tokens (the padding after them must count for nothing)."""
    import shutil

    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("early_eos_gpt2")
    shutil.copytree(tiny_gpt2_dir, out, dirs_exist_ok=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    eos = lm.config.eos_token_id
    with torch.no_grad():
        e = lm.transformer.wte.weight[eos]
        lm.transformer.ln_f.bias += 3.0 * e / e.dot(e)
    lm.save_pretrained(out)
    return out


def _score_by_index(prompts, responses):
    scores = [float(i % 3) - 1.0 for i in range(len(responses))]
    return scores, {"by_index": scores}


def _hand_whiten(x, mask):
    """(x - mean) / std over the masked entries, Bessel-corrected, written out."""
    vals = x[mask.bool()]
    mean = vals.mean()
    var = ((vals - mean) ** 2).sum() / (vals.numel() - 1)
    return (x - mean) / torch.sqrt(var + 1e-8) * mask


def test_first_step_by_hand_on_responses_that_end_early(early_eos_gpt2_dir):
    """Step 1 starts with policy = reference: with gamma = lambda = 1 every real token's return is its response's
    score, the KL is exactly 0 at temperature 0.7 (the reference divides by it too), the advantages are the
    whitened (return - value), everything after EOS is 0, and the first mini-batch's ratio is exactly 1. Step 2
    uses the coefficient the adaptive controller set after step 1."""
    bundle = _bundle(early_eos_gpt2_dir)
    cfg = PPOSettings(batch_size=8, mini_batch_size=4, gamma=1.0, lam=1.0, init_kl_coef=0.2, adaptive_kl=True,
                      kl_target=6.0, kl_horizon=10, learning_rate=1e-3)
    gen = GenerationSettings(max_new_tokens=10, min_length=2, temperature=0.7)
    seen = []
    trainer = PPOTrainer(bundle, _score_by_index, cfg, gen, callbacks=[lambda s, m, ro: seen.append(ro)])
    m = trainer.step(["Human: hello there", "Human: tell me a story about the sea"] * 4)
    t, ro = trainer.last, seen[0]
    mask = t.mask
    lengths = mask.sum(1).long()
    short = lengths < gen.max_new_tokens
    assert short.any() and (~short).any(), lengths  # some responses ended early, some ran to the end
    eos = bundle.tokenizer.eos_token_id
    for i in torch.nonzero(short).flatten().tolist():
        assert ro.response_ids[i, lengths[i] - 1] == eos  # the EOS is the last real token ...
        assert mask[i, lengths[i]:].sum() == 0  # ... and everything after it is padding
    assert m["env/response_length_mean"] == pytest.approx(lengths.float().mean().item())

    # KL exactly 0 at the start, temperature and EOS ban included
    assert torch.allclose(t.old_logprobs * mask, t.ref_logprobs * mask, atol=1e-6)
    assert abs(m["objective/kl"]) < 1e-5
    scores = torch.tensor(_score_by_index(None, range(8))[0])
    # rewards: the score on the last real token, nothing on padding
    want_rewards = torch.zeros_like(t.rewards)
    want_rewards[torch.arange(8), lengths - 1] = scores
    assert torch.allclose(t.rewards, want_rewards, atol=1e-5)
    # returns: with gamma = lambda = 1 the reward-to-go, i.e. the score on every real token (not A_whitened + V)
    assert torch.allclose(t.returns, scores[:, None] * mask, atol=1e-5)
    # advantages: (return - V), whitened over the real tokens of the batch
    assert torch.allclose(t.advantages, _hand_whiten((t.returns - t.old_values) * mask, mask), atol=1e-5)
    assert m["ppo/policy/advantages_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["ppo/returns/mean"] == pytest.approx(float((scores[:, None] * mask).sum() / mask.sum()), abs=1e-5)
    # the first mini-batch runs before any update: ratio exactly 1, nothing clipped; later ones have moved
    first = t.minibatches[0]
    assert first["ppo/policy/ratio"] == pytest.approx(1.0, abs=1e-6)
    assert first["ppo/policy/approxkl"] < 1e-12 and first["ppo/policy/clipfrac"] == 0.0
    assert len(t.minibatches) == 2 and t.minibatches[1]["ppo/policy/approxkl"] > 0

    # KL control: step 1's KL is 0, far below the target: error clipped to -0.2, beta *= 1 - 0.2 * 8 / 10
    assert m["objective/kl_coef"] == 0.2
    assert trainer.kl_ctl.value == pytest.approx(0.2 * (1 - 0.2 * 8 / 10))
    m2 = trainer.step(["Human: hello there", "Human: tell me a story about the sea"] * 4)
    t2 = trainer.last
    beta = 0.2 * (1 - 0.2 * 8 / 10)
    assert m2["objective/kl_coef"] == pytest.approx(beta) and t2.kl_coef == pytest.approx(beta)
    assert t2.kl.abs().sum() > 0  # the policy moved, so the penalty is not trivially 0
    lengths2 = t2.mask.sum(1).long()
    want2 = -beta * t2.kl
    want2[torch.arange(8), lengths2 - 1] += scores
    assert torch.allclose(t2.rewards, want2 * t2.mask, atol=1e-6)
    assert m2["ppo/mean_non_score_reward"] == pytest.approx(float((-beta * t2.kl).sum(1).mean()), abs=1e-6)


def test_entropy_metric_by_hand(early_eos_gpt2_dir):
    """objective/entropy = mean over responses of the summed entropy of the sampling distribution (temperature,
    EOS ban) over real tokens only; checked against a separate forward pass (learning rate 0: same weights)."""
    bundle = _bundle(early_eos_gpt2_dir)
    gen = GenerationSettings(max_new_tokens=10, min_length=2, temperature=0.7)
    seen = []
    trainer = PPOTrainer(bundle, _score_by_index, PPOSettings(batch_size=8, mini_batch_size=8, learning_rate=0.0),
                         gen, callbacks=[lambda s, m, ro: seen.append(ro)])
    m = trainer.step(["Human: hello there", "Human: tell me a story about the sea"] * 4)
    ro = seen[0]
    assert (ro.response_mask.sum(1) < 10).any()
    bundle.policy.eval()
    with torch.no_grad():
        logits, _ = bundle.policy(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
    eos = bundle.tokenizer.eos_token_id
    total = 0.0
    for i in range(8):
        for pos in range(int(ro.response_mask[i].sum())):
            z = logits[i, pos] / 0.7
            if pos < 2:
                z = torch.cat([z[:eos], z[eos + 1:]])  # EOS cannot be sampled here: not part of the distribution
            p = torch.softmax(z.double(), -1)
            total += float(-(p * p.log()).sum())
    assert m["objective/entropy"] == pytest.approx(total / 8, rel=1e-5)


def test_whiten_rewards_in_the_trainer_divides_by_the_std_and_keeps_the_mean(early_eos_gpt2_dir):
    bundle = _bundle(early_eos_gpt2_dir)
    cfg = PPOSettings(batch_size=8, mini_batch_size=8, gamma=1.0, lam=1.0, whiten_rewards=True)
    trainer = PPOTrainer(bundle, _score_by_index, cfg, GenerationSettings(max_new_tokens=10, min_length=2))
    trainer.step(["Human: hello there", "Human: tell me a story about the sea"] * 4)
    t = trainer.last
    vals = t.rewards[t.mask.bool()]
    mean, std = vals.mean(), vals.std()  # torch's std is Bessel-corrected, as TRL's masked_var
    whitened = ((t.rewards - mean) / std + mean) * t.mask
    to_go = whitened.flip(1).cumsum(1).flip(1) * t.mask  # gamma = lambda = 1: returns are the reward-to-go
    assert torch.allclose(t.returns, to_go, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The hold-out KL of the evaluation, by hand
# --------------------------------------------------------------------------------------------------
def test_holdout_kl_by_hand(early_eos_gpt2_dir):
    """evaluate's KL per response = sum over the real tokens (EOS included, padding not) of log pi - log pi_ref
    under the sampling distribution (temperature, EOS ban), recomputed here with separate passes."""
    from engine.evaluate import _generate_batch
    from engine.models import encode_queries

    bundle = _bundle(early_eos_gpt2_dir)
    gen = GenerationSettings(max_new_tokens=10, min_length=2, temperature=0.7)
    prompts = ["Human: hello there", "Human: tell me a story about the sea", "Human: what now", "Human: hi"] * 2
    _, rm0, kl0 = _generate_batch(bundle, prompts, gen, which="after", max_prompt_tokens=64, seed=3)
    assert max(abs(k) for k in kl0) < 1e-5  # policy = reference: 0, at temperature 0.7 too
    torch.manual_seed(1)
    with torch.no_grad():
        for p in bundle.policy.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    r, rm, kl = _generate_batch(bundle, prompts, gen, which="after", max_prompt_tokens=64, seed=3)
    lengths = rm.sum(1).long()
    assert (lengths < r.shape[1]).any()  # some responses ended before others: their padding must not count
    q, qm = encode_queries(bundle, prompts, 64, "cpu")
    eos = bundle.tokenizer.eos_token_id
    with torch.no_grad():
        pol = forward_lm(bundle.policy.lm, False, q, qm, r, rm)[0]
        ref = forward_lm(bundle.reference, False, q, qm, r, rm)[0]
    for i in range(len(prompts)):
        want = 0.0
        for pos in range(int(lengths[i])):
            lps = []
            for logits in (pol[i, pos], ref[i, pos]):
                z = (logits / 0.7).double()
                if pos < 2:
                    z[eos] = -math.inf
                lps.append(float(torch.log_softmax(z, -1)[r[i, pos]]))
            want += lps[0] - lps[1]
        assert kl[i] == pytest.approx(want, abs=1e-4), (i, kl[i], want)
    assert sum(kl) / len(kl) > 0.05  # a KL estimate: positive on average for a policy that moved
