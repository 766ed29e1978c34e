"""A prompt's work done once for its k responses gives the plain path's samples, log-probs, values and KL.

The plain path runs every prompt with each of its responses (the prompt repeated k times); the fast path runs the
prompt once (causal: its KV cache; seq2seq: its encoder pass) and copies the result k times. Both are compared on
tiny causal (GPT-2) and seq2seq (T5) models, with a temperature and the min-length EOS ban, prompts of different
lengths (left padding) and one prompt of a single token.
"""

import pytest
import torch

from engine.config import GenerationSettings, LoraSettings, ModelSettings, PPOSettings
from engine.evaluate import generate_responses
from engine.models import (
    encode_queries,
    forward_lm,
    generate,
    load_policy,
    logprobs_from_logits,
    min_new_tokens,
    prompt_states,
    reference_logprobs,
    sampling_logits,
)
from engine.ppo import PPOTrainer

PROMPTS = ["a", "Human: a much longer question about the weather today and tomorrow, please",
           "Human: what is a good name for a cat?"]
GEN = GenerationSettings(max_new_tokens=8, min_length=3, temperature=0.7)
K = 3
TOL = 1e-5
MODELS = ["tiny_gpt2_dir", "tiny_t5_dir"]


def _bundle(path, **kw):
    # float32 passes: the paths must agree to 1e-5. Under bf16 autocast (the default run's training passes) they
    # differ by bf16 rounding (~1e-3 on a logit), as any two batch shapes do; evaluation always runs in float32.
    torch.manual_seed(0)
    kw.setdefault("mixed_precision", "none")
    return load_policy(ModelSettings(name_or_path=str(path), device="cpu", **kw))


def _queries(bundle, prompts=PROMPTS):
    return encode_queries(bundle, prompts, 64, "cpu")


def _rep(x, k=K):
    return x.repeat_interleave(k, dim=0)


def _close(a, b, mask):
    return float(((a - b) * mask).abs().max())


@pytest.mark.parametrize("which", MODELS)
def test_generation_with_a_shared_prefill_samples_from_the_same_distribution(which, request):
    """Same seed: the same responses, and every step's sampling distribution (temperature, EOS ban) equal."""
    bundle = _bundle(request.getfixturevalue(which))
    q, qm = _queries(bundle)
    lm = bundle.policy.lm
    torch.manual_seed(7)
    r1, m1, l1 = generate(bundle, lm, _rep(q), _rep(qm), GEN, with_logits=True)
    torch.manual_seed(7)
    r2, m2, l2 = generate(bundle, lm, q, qm, GEN, with_logits=True, repeats=K)
    assert r2.shape[0] == len(PROMPTS) * K
    assert torch.equal(r1, r2) and torch.equal(m1, m2)
    # a prompt's k responses differ from each other (they are k samples, not one copied)
    assert not all(torch.equal(r2[i * K], r2[i * K + 1]) for i in range(len(PROMPTS)))
    eos, n_min = bundle.tokenizer.eos_token_id, min_new_tokens(GEN)
    p1 = torch.log_softmax(sampling_logits(l1, 0.7, n_min, eos), -1)
    p2 = torch.log_softmax(sampling_logits(l2, 0.7, n_min, eos), -1)
    assert float((p1 - p2).abs().amax(-1).mul(m1).max()) <= TOL


@pytest.mark.parametrize("which", MODELS)
def test_policy_and_reference_log_probs_values_and_kl_match_the_plain_path(which, request):
    bundle = _bundle(request.getfixturevalue(which))
    q, qm = _queries(bundle)
    if not bundle.seq2seq:  # a one-token prompt: its row of the shared prefill is all padding
        assert int(qm[0].sum()) == 1
    torch.manual_seed(3)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, GEN, repeats=K)
    eos, n_min = bundle.tokenizer.eos_token_id, min_new_tokens(GEN)
    with torch.no_grad():
        # the policy's forward (log-probs and values), the prompt's states computed once and reused
        states = prompt_states(bundle.policy.lm, bundle.seq2seq, q, qm)
        fast_logits, fast_values = bundle.policy(q, qm, r, rm, repeats=K, states=states)
        plain_logits, plain_values = bundle.policy(_rep(q), _rep(qm), r, rm)
        fast_lp = logprobs_from_logits(fast_logits, r, 0.7, n_min, eos)
        plain_lp = logprobs_from_logits(plain_logits, r, 0.7, n_min, eos)
        assert _close(fast_lp, plain_lp, rm) <= TOL
        assert _close(fast_values, plain_values, rm) <= TOL
        # the reference, each prompt run once for its K responses
        fast_ref = reference_logprobs(bundle, q, qm, r, rm, 0.7, n_min, repeats=K)
        plain_ref = reference_logprobs(bundle, _rep(q), _rep(qm), r, rm, 0.7, n_min)
        assert _close(fast_ref, plain_ref, rm) <= TOL
        # a bare LM's logits, with a new states computation inside (no states given)
        fast_bare = forward_lm(bundle.policy.lm, bundle.seq2seq, q, qm, r, rm, repeats=K)[0]
        assert _close(logprobs_from_logits(fast_bare, r, 0.7, n_min, eos), plain_lp, rm) <= TOL
    # the EOS ban is in: a banned EOS has (almost) no probability under both
    assert (plain_lp * rm).abs().sum() > 0
    # states computed without gradients cannot serve a training pass
    with pytest.raises(RuntimeError, match="no gradients"):
        bundle.policy(q, qm, r, rm, repeats=K, states=states)


@pytest.mark.parametrize("which", MODELS)
def test_training_gradients_through_shared_prompt_states_match_the_plain_path(which, request):
    """A training pass that runs each prompt once for its k responses back-propagates through the prompt: the
    loss and every parameter's gradient equal the plain path's (prompt repeated with each response)."""
    bundle = _bundle(request.getfixturevalue(which))
    q, qm = _queries(bundle)
    torch.manual_seed(3)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, GEN, repeats=K)
    weights = torch.linspace(-1, 1, r.numel()).view_as(r)  # a loss that depends on every token differently

    def grads(**kw):
        bundle.policy.zero_grad(set_to_none=True)
        logits, values = bundle.policy(**kw, response_ids=r, response_mask=rm)
        lp = logprobs_from_logits(logits, r, 0.7, 3, bundle.tokenizer.eos_token_id)
        loss = ((lp + values) * weights * rm).sum()
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in bundle.policy.named_parameters() if p.grad is not None}

    fast_loss, fast = grads(query_ids=q, query_mask=qm, repeats=K)
    plain_loss, plain = grads(query_ids=_rep(q), query_mask=_rep(qm))
    assert fast_loss == pytest.approx(plain_loss, rel=1e-5)
    assert fast.keys() == plain.keys()
    # gradients reach the layers that only see the prompt through attention (every layer's key/value weights)
    for name in plain:
        scale = float(plain[name].abs().max()) + 1e-8
        assert float((fast[name] - plain[name]).abs().max()) <= 1e-5 * max(1.0, scale), name
    assert sum(float(g.abs().sum()) for g in fast.values()) > 0


def test_lora_reference_with_shared_prompt_states(tiny_gpt2_dir):
    """With LoRA the reference is the policy with adapters off: its prompt states come from the base weights."""
    bundle = _bundle(tiny_gpt2_dir, lora=LoraSettings(enabled=True, r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # move the adapters off zero, so policy and reference differ
        for name, p in bundle.policy.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    q, qm = _queries(bundle)
    torch.manual_seed(1)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, GEN, repeats=K)
    fast = reference_logprobs(bundle, q, qm, r, rm, 0.7, 3, repeats=K)
    plain = reference_logprobs(bundle, _rep(q), _rep(qm), r, rm, 0.7, 3)
    assert _close(fast, plain, rm) <= TOL
    with torch.no_grad():
        policy_lp = logprobs_from_logits(bundle.policy(_rep(q), _rep(qm), r, rm)[0], r, 0.7, 3,
                                         bundle.tokenizer.eos_token_id)
    assert _close(policy_lp, plain, rm) > 1e-3  # the adapters matter: the reference really is the base


def _ppo_step(path, share: bool, k: int):
    bundle = _bundle(path)
    cfg = PPOSettings(batch_size=2, mini_batch_size=2, ppo_epochs=1, num_generations=k, learning_rate=1e-3,
                      seed=0, adaptive_kl=False, init_kl_coef=0.1)
    trainer = PPOTrainer(bundle, lambda p, r: ([float(len(x)) for x in r], {}), cfg, GEN, max_prompt_tokens=64,
                         share_prompt_states=share)
    torch.manual_seed(11)
    trainer.step(PROMPTS[1:])
    return trainer


@pytest.mark.parametrize("which", MODELS)
@pytest.mark.parametrize("k", [1, 2])
def test_ppo_step_statistics_match_the_plain_path(which, k, request):
    """One PPO step with and without shared prompt states from the same weights and seed: the same responses, and
    old log-probs, values, reference log-probs and KL within 1e-5; the first mini-batch's ratio stays 1."""
    path = request.getfixturevalue(which)
    fast, plain = _ppo_step(path, True, k), _ppo_step(path, False, k)
    a, b = fast.last, plain.last
    assert torch.equal(a.mask, b.mask)
    for name in ("old_logprobs", "ref_logprobs", "kl", "old_values", "entropy"):
        assert _close(getattr(a, name), getattr(b, name), a.mask) <= TOL, name
    assert a.minibatches[0]["ppo/policy/ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("which", MODELS)
def test_a_ppo_update_on_whole_prompts_matches_the_plain_update(which, request):
    """One mini-batch holding the whole rollout (so the shuffling cannot differ): the weights after the update are
    the plain path's; and with smaller mini-batches each holds whole prompts (all k responses of each)."""
    path = request.getfixturevalue(which)
    trainers = []
    for share in (True, False):
        bundle = _bundle(path)
        cfg = PPOSettings(batch_size=4, mini_batch_size=4, ppo_epochs=2, num_generations=2, learning_rate=1e-2,
                          seed=0, adaptive_kl=False, init_kl_coef=0.1)
        trainer = PPOTrainer(bundle, lambda p, r: ([float(len(x)) for x in r], {}), cfg, GEN,
                             max_prompt_tokens=64, share_prompt_states=share)
        torch.manual_seed(11)
        trainer.step(PROMPTS[1:])
        trainers.append(trainer)
    fast, plain = (dict(t.bundle.policy.named_parameters()) for t in trainers)
    start = dict(_bundle(path).policy.named_parameters())
    moved = max(float((fast[name] - start[name]).abs().max()) for name in start)
    assert moved > 1e-4  # the update did something
    for name in plain:
        # Adam turns a gradient that is float noise on both paths (a key bias: softmax ignores it) into a step of
        # about lr either way, so the weights are compared against the size of the update: within 1 % of it
        update = float((plain[name] - start[name]).abs().max())
        assert float((fast[name] - plain[name]).abs().max()) <= 1e-2 * update + 1e-7, name
    for a, b in zip(trainers[0].last.minibatches, trainers[1].last.minibatches, strict=True):
        assert a["ppo/loss/total"] == pytest.approx(b["ppo/loss/total"], rel=1e-4, abs=1e-6)
    # mini-batches of 4 from 3 prompts x 2: whole prompts, every response once per epoch
    ro = trainers[0].rollout(PROMPTS, repeats=2)
    batches = list(trainers[0]._minibatches(ro, 6, 4))
    assert [len(idx) for idx, _ in batches] == [4, 2]
    for idx, prompts_idx in batches:
        assert idx.tolist() == [i for p in prompts_idx.tolist() for i in (2 * p, 2 * p + 1)]
    assert sorted(i for idx, _ in batches for i in idx.tolist()) == list(range(6))
    # the plain path shuffles responses one by one
    assert all(p is None for _, p in trainers[1]._minibatches(ro, 6, 4))


@pytest.mark.parametrize("which", MODELS)
def test_evaluation_responses_and_kl_match_the_plain_path(which, request):
    """Evaluation with k responses per prompt: the same responses and KL (≤ 1e-5) with or without shared prompt
    states, batches holding whole prompts, and a progress that counts responses from 0."""
    bundle = _bundle(request.getfixturevalue(which))
    with torch.no_grad():  # the policy moves away from the reference, so the KL is not 0
        for p in bundle.policy.lm.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    seen = []
    kw = dict(which="after", batch_size=4, max_prompt_tokens=64, seed=5, repeats=2)
    fast = generate_responses(bundle, PROMPTS, GEN, progress=lambda d, t: seen.append((d, t)), **kw)
    plain = generate_responses(bundle, PROMPTS, GEN, share_prompt_states=False, **kw)
    assert fast[0] == plain[0] and fast[1] == plain[1]
    assert max(abs(x - y) for x, y in zip(fast[2], plain[2], strict=True)) <= TOL
    assert max(abs(x) for x in fast[2]) > 1e-3
    assert seen == [(0, 6), (4, 6), (6, 6)]  # 2 prompts x 2 per batch, then the last prompt's 2
    before = generate_responses(bundle, PROMPTS, GEN, **{**kw, "which": "before"})
    before_plain = generate_responses(bundle, PROMPTS, GEN, share_prompt_states=False, **{**kw, "which": "before"})
    assert before == before_plain


def _count_tokens(lm):
    """A list that collects the number of token positions each pass of `lm` embeds."""
    seen = []
    lm.get_input_embeddings().register_forward_hook(lambda mod, inp, out: seen.append(inp[0].numel()))
    return seen


def test_the_fast_path_runs_each_prompt_once(tiny_gpt2_dir):
    """The saving itself: with k responses per prompt the prompt's tokens go through the LM once, not k times."""
    bundle = _bundle(tiny_gpt2_dir)
    q, qm = _queries(bundle)
    seen = _count_tokens(bundle.policy.lm)
    torch.manual_seed(3)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, GEN, repeats=K)
    prefill = seen[:2]
    n, width = q.shape
    assert prefill == [n * (width - 1), n * K]  # the prompts once (but their last token), then k copies of it
    seen.clear()
    with torch.no_grad():
        forward_lm(bundle.policy.lm, False, q, qm, r, rm, repeats=K)
    assert seen == [n * (width - 1), n * K * r.shape[1]]
    seen.clear()
    with torch.no_grad():
        forward_lm(bundle.policy.lm, False, _rep(q), _rep(qm), r, rm)
    assert seen == [n * K * (width + r.shape[1])]


def test_the_cache_keyword_follows_the_models_forward(tiny_gpt2_dir):
    """transformers renamed a forward's KV-cache keyword from `past_key_values` to `cache` (5.2x): the shared
    prefill passes the cache by the name the model's forward takes, so the fast path works on both sides of the
    rename (on transformers 5.17, the H200 image's, `cache=` made every run fail at its first evaluation batch)."""
    from transformers import AutoModelForCausalLM

    from engine.models import cache_argument

    class OldKeyword(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    class NewKeyword(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None):
            return input_ids

    assert cache_argument(OldKeyword()) == "past_key_values"
    assert cache_argument(NewKeyword()) == "cache"

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    parent_keyword = cache_argument(base)  # the installed transformers' own name

    class BeforeTheRename(type(base)):
        """The same model with a forward that takes its cache as `past_key_values` only, as before the rename."""

        def forward(self, input_ids=None, past_key_values=None, attention_mask=None, position_ids=None, **kw):
            assert "cache" not in kw, "the cache came by a keyword this forward does not take"
            return super().forward(input_ids=input_ids, **{parent_keyword: past_key_values},
                                   attention_mask=attention_mask, position_ids=position_ids, **kw)

    old = BeforeTheRename.from_pretrained(tiny_gpt2_dir).eval()
    assert cache_argument(old) == "past_key_values"
    bundle = _bundle(tiny_gpt2_dir)
    q, qm = _queries(bundle)
    torch.manual_seed(3)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, GEN, repeats=K)
    with torch.no_grad():
        fast = forward_lm(old, False, q, qm, r, rm, repeats=K)[0]
        plain = forward_lm(base.eval(), False, _rep(q), _rep(qm), r, rm)[0]
    assert _close(fast, plain, rm.unsqueeze(-1)) <= TOL
