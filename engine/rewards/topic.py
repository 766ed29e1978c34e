"""Reward for being about the dialogue: how much more likely a language model finds the response after the
dialogue than without it (pointwise mutual information, per response token).

Responsible for: a dense, model-based "does this response depend on the conversation" signal to mix with a
harmlessness reward. A detox reward alone pays for drifting to generic text that fits any dialogue ("The
conversation has a basic topic but lacks context."); such text is as likely without the dialogue as with it, so its
PMI is near 0, while a summary of this dialogue is far likelier after it.

Score = mean over the response's tokens of log p(token | prompt, earlier tokens) - log p(token | null prompt, earlier
tokens), where the null prompt is the lab's template with the dialogue left out. Option `cap` (nats per token):
score = min(PMI, cap). Capped near the base policy's lower quartile on training prompts, the term is a floor: it
charges generic drift and pays nothing for copying the dialogue (copying a hostile dialogue brings its toxicity
back: docs/experiments.md, "Session 15"). Raw signal `pmi`: the uncapped value.

Not responsible for: toxicity (not an evaluator), and it is not the lab's relevance check (a MiniLM sentence
encoder, engine.relevance): a different instrument, so a policy cannot score on the check by fitting the reward.
Causal language models only.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.rewards.base import RewardResult, check_finite_cap
from engine.rewards.profanity import check_texts

# The lab's prompt template (engine.config.DataSettings.template) with its dialogue left out.
NULL_PROMPT = "Summarize the following conversation.\n\nSummary:"


class TopicBackend:
    """Reward = PMI of the response with the prompt under a causal LM (see the module); `cap` makes it a floor."""

    def __init__(self, name: str = "topic", model: str = "builtin:smollm2", cap: float | None = None,
                 null_prompt: str = NULL_PROMPT, device: str = "cpu", batch_size: int = 16) -> None:
        check_finite_cap(cap, "topic")
        if not isinstance(null_prompt, str) or not null_prompt.strip():
            raise ValueError("topic null_prompt must be a non-empty string")
        self.name = name
        self.model_name = model
        self.cap = cap
        self.null_prompt = null_prompt
        self.device = device
        self.batch_size = batch_size
        self._lm = None
        self._tokenizer = None
        self._template = False

    def _load(self) -> None:
        # Loaded on first use: building a run's reward must stay cheap (config checks build it too).
        import torch
        from transformers import AutoModelForCausalLM

        from engine.models import disable_dropout, is_seq2seq, load_tokenizer, resolve_model_path

        path = resolve_model_path(self.model_name)
        if is_seq2seq(path):
            raise ValueError(f"topic needs a causal language model; {self.model_name!r} is encoder-decoder")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        lm.requires_grad_(False)
        disable_dropout(lm)
        self._tokenizer = load_tokenizer(path, seq2seq=False)
        self._template = bool(getattr(self._tokenizer, "chat_template", None))  # as the policy reads prompts
        self._lm = lm

    def _query(self, prompt: str) -> str:
        if not self._template:
            return prompt
        return self._tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]):
        """Left-padded prompt ids / mask `[B, Q]` and right-padded response ids / mask `[N, R]` (R >= 1)."""
        import torch

        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        start = next((t for t in (tok.bos_token_id, tok.eos_token_id) if t is not None), pad)
        # An empty prompt (the Reward playground scores a text alone) still needs a token to predict from.
        queries = [tok(self._query(p), add_special_tokens=not self._template)["input_ids"] or [start] for p in prompts]
        answers = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
        q_len, a_len = max(len(q) for q in queries), max(max(len(a) for a in answers), 1)
        q_ids = torch.full((len(queries), q_len), pad, dtype=torch.long)
        a_ids = torch.full((len(answers), a_len), pad, dtype=torch.long)
        q_mask, a_mask = torch.zeros_like(q_ids), torch.zeros_like(a_ids)
        for i, q in enumerate(queries):
            q_ids[i, q_len - len(q):], q_mask[i, q_len - len(q):] = torch.tensor(q, dtype=torch.long), 1
        for i, a in enumerate(answers):
            if a:
                a_ids[i, :len(a)], a_mask[i, :len(a)] = torch.tensor(a, dtype=torch.long), 1
        return q_ids, q_mask, a_ids, a_mask

    def _mean_logprobs(self, prompts: Sequence[str], responses: Sequence[str], repeats: int = 1) -> list[float]:
        """Mean log-prob of each response's tokens after its prompt (0.0 for a response with no tokens). With
        `repeats` k > 1, `prompts` are distinct and each has k responses side by side: each prompt's tokens go
        through the model once (its KV cache copied to its k responses), not k times."""
        import torch

        from engine.models import can_share_prompt, forward_with_prompt_states

        q_ids, q_mask, a_ids, a_mask = self._encode(prompts, responses)
        dev = self.device
        with torch.no_grad():
            if repeats > 1 and can_share_prompt(False, q_ids):
                logits, _ = forward_with_prompt_states(self._lm, False, q_ids.to(dev), q_mask.to(dev),
                                                       a_ids.to(dev), a_mask.to(dev), repeats=repeats)
            else:
                q_ids, q_mask = q_ids.repeat_interleave(repeats, 0), q_mask.repeat_interleave(repeats, 0)
                ids, mask = torch.cat([q_ids, a_ids], 1), torch.cat([q_mask, a_mask], 1)
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                q_len = q_ids.shape[1]
                logits = self._lm(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                  position_ids=positions.to(dev)).logits[:, q_len - 1:-1].float()
        logp = torch.log_softmax(logits.float(), -1).gather(-1, a_ids.to(logits.device)[..., None])[..., 0]
        kept = a_mask.to(logits.device).float()
        return ((logp * kept).sum(1) / kept.sum(1).clamp(min=1)).tolist()

    @staticmethod
    def _group_size(prompts: Sequence[str]) -> int:
        """k when the prompts are distinct prompts each repeated k times side by side (how PPO, RLOO and GRPO
        score their responses), else 1."""
        k = 1
        while k < len(prompts) and prompts[k] == prompts[0]:
            k += 1
        if len(prompts) % k or any(prompts[i] != prompts[i - i % k] for i in range(len(prompts))):
            return 1
        return k

    def pmi(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Per-token PMI of each response with its prompt (uncapped), in nats."""
        prompts, responses = check_texts(prompts, "prompts"), check_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if self._lm is None:
            self._load()
        k = self._group_size(prompts)
        step = max(self.batch_size // k, 1) * k  # whole groups per batch
        out: list[float] = []
        for i in range(0, len(prompts), step):
            p, r = prompts[i:i + step], responses[i:i + step]
            given = self._mean_logprobs(p[::k], r, repeats=k)
            alone = self._mean_logprobs([self.null_prompt], r, repeats=len(r))  # one null prompt for all
            out += [a - b for a, b in zip(given, alone, strict=True)]
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """One PMI (at most `cap`) per (prompt, response); raw signal `pmi` (uncapped)."""
        values = self.pmi(prompts, responses)
        scores = values if self.cap is None else [min(v, self.cap) for v in values]
        return RewardResult(scores=scores, raw={"pmi": values})
