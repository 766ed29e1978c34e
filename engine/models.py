"""Policy, value head and reference model for causal and seq2seq language models.

Responsible for: resolving a model name (hub id, local dir, built-in offline model), loading it with its
tokenizer, wrapping it as an actor-critic (LM head + scalar value head), the frozen reference used by
the KL penalty (with LoRA: the same weights with adapters disabled, so no second copy in memory),
batched generation, and the forward pass that gives per-token log-probs, entropies and values.

Not responsible for: the PPO algorithm (engine/ppo.py) or rewards (engine/rewards/).

Shapes used throughout: queries are left-padded `[B, Q]`, responses right-padded `[B, R]`; every
per-token tensor is `[B, R]`, aligned with the response tokens, and `response_mask` marks real tokens.

This module imports torch: import it only where a model is needed (the UI never does).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from engine.config import GenerationSettings, ModelSettings


def pick_device(requested: str = "auto") -> str:
    """'auto' → cuda if present, then mps, then cpu; anything else is returned as given."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub id `from_pretrained` accepts; built-in names are built (once) and cached locally."""
    if name_or_path == "builtin:smollm2":
        from engine.assets import smollm2_dir

        return str(smollm2_dir())
    if name_or_path == "builtin:tiny-gpt2":
        from engine.assets import tiny_policy_dir

        return str(tiny_policy_dir())
    return os.path.expanduser(name_or_path)


def is_seq2seq(path: str, architecture: str = "auto") -> bool:
    """Whether the model is an encoder-decoder (T5 family), from its config unless forced."""
    if architecture != "auto":
        return architecture == "seq2seq"
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False))


def autocast(device, mixed_precision: str = "none"):
    """The autocast context of `mixed_precision`: "bf16" runs matmuls in bfloat16 while weights, optimizer state,
    value head and log-softmax stay float32 (about 2x faster on GPUs and CPUs with AVX512-BF16 or AMX); "none" is a
    no-op."""
    if mixed_precision == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def _dtype(name: str):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def load_tokenizer(path: str, seq2seq: bool):
    """The tokenizer, with a pad token and left padding for causal generation."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        # Causal LMs like GPT-2 have no pad token; eos is safe because masks hide padding.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right" if seq2seq else "left"
    tok.truncation_side = "left"
    return tok


def decoder_inputs(lm, response_ids, response_mask):
    """A seq2seq decoder's inputs for scoring `response_ids`: the start token, then the response shifted right."""
    import torch

    start = lm.config.decoder_start_token_id
    if start is None:
        start = lm.config.pad_token_id
    first = torch.full_like(response_ids[:, :1], start)
    dec_ids = torch.cat([first, response_ids[:, :-1]], dim=1)
    dec_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
    return dec_ids, dec_mask


def forward_lm(lm, seq2seq: bool, query_ids, query_mask, response_ids, response_mask, with_hidden: bool = False,
               repeats: int = 1, states: "PromptStates | None" = None):
    """Run a bare LM on (query, response): logits `[B, R, V]` predicting each response token, and
    optionally the last hidden state `[B, R, H]` of the position that predicts it.

    With `repeats` k > 1 or prompt `states`, the queries are the distinct prompts `[B / k, Q]`, each answered by k
    consecutive responses: the prompt's work is then done once per prompt (`forward_with_prompt_states`).
    """
    if states is not None or (repeats > 1 and can_share_prompt(seq2seq, query_ids)):
        return forward_with_prompt_states(lm, seq2seq, query_ids, query_mask, response_ids, response_mask,
                                          repeats=repeats, states=states, with_hidden=with_hidden)
    if repeats > 1:  # a one-column prompt runs with each of its responses
        query_ids = query_ids.repeat_interleave(repeats, dim=0)
        query_mask = query_mask.repeat_interleave(repeats, dim=0)
    if seq2seq:
        dec_ids, dec_mask = decoder_inputs(lm, response_ids, response_mask)
        out = lm(input_ids=query_ids, attention_mask=query_mask, decoder_input_ids=dec_ids,
                 decoder_attention_mask=dec_mask, output_hidden_states=with_hidden, use_cache=False)
        return out.logits.float(), (out.decoder_hidden_states[-1] if with_hidden else None)
    ids = torch.cat([query_ids, response_ids], dim=1)
    mask = torch.cat([query_mask, response_mask], dim=1)
    # Left padding shifts positions; count them from the first real token.
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    q, r = query_ids.shape[1], response_ids.shape[1]
    # The logit at position t predicts token t+1: the response is predicted from q-1 .. q+r-2.
    # Only those r+1 last positions go through the LM head (a 49k-vocab head over a long prompt is
    # a large share of the compute); models without `logits_to_keep` compute them all.
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=with_hidden,
                  use_cache=False)
    try:
        out = lm(**kwargs, logits_to_keep=r + 1)
    except TypeError:
        out = lm(**kwargs)
    logits = out.logits[:, -(r + 1):-1].float()
    hidden = out.hidden_states[-1][:, q - 1: q - 1 + r] if with_hidden else None
    return logits, hidden


# --------------------------------------------------------------------------------------------------
# A prompt's work done once for its k responses
# --------------------------------------------------------------------------------------------------
@dataclass
class PromptStates:
    """What an LM computed from a batch of distinct prompts, reusable by every response to them: a causal LM's KV
    cache over each prompt's tokens but the last (the last is fed with the response, so that its logits predict
    the first response token and, during generation, the first sample), or a seq2seq model's encoder outputs."""

    seq2seq: bool
    rows: int
    cache: Any = None  # causal: a transformers Cache over query_ids[:, :-1]
    encoder_outputs: Any = None  # seq2seq: the encoder's BaseModelOutput
    with_grad: bool = False  # computed with gradients (a training pass back-propagates through the prompt too)

    def repeated(self, repeats: int) -> "PromptStates":
        """A copy with each prompt's states repeated `repeats` times side by side (a forward pass extends a cache,
        so every consumer gets its own). `repeat_interleave` is differentiable: gradients reach the prompt's states."""
        if self.seq2seq:
            from transformers.modeling_outputs import BaseModelOutput

            hidden = self.encoder_outputs.last_hidden_state.repeat_interleave(repeats, dim=0)
            return PromptStates(True, self.rows * repeats, encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                with_grad=self.with_grad)
        from transformers.cache_utils import DynamicLayer

        if all(type(layer) is DynamicLayer for layer in getattr(self.cache, "layers", [None])):
            # A DynamicLayer rebinds its tensors on every update (torch.cat), never writes into them: copies of the
            # layer objects holding new repeated tensors leave the original cache as it was (no deep copy of a
            # tensor that needs gradients, which torch refuses).
            cache = copy.copy(self.cache)
            cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        else:  # other cache layers may update in place
            cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(repeats)
        return PromptStates(False, self.rows * repeats, cache=cache, with_grad=self.with_grad)


def cache_argument(lm) -> str:
    """The keyword a causal LM takes its KV cache by: `cache` in transformers >= 5.2x, `past_key_values` before
    (which later versions still accept with a deprecation warning until 5.40). Read from the model's forward."""
    import inspect

    forward = getattr(lm, "forward", None)
    try:
        params = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        params = {}
    return "cache" if "cache" in params else "past_key_values"


def can_share_prompt(seq2seq: bool, query_ids) -> bool:
    """Whether a prompt's states can be computed apart from its responses (a causal prompt needs 2+ columns)."""
    return seq2seq or query_ids.shape[1] >= 2


def _positions(mask):
    # Left padding shifts positions; count them from the first real token (as forward_lm and generate do).
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_states(lm, seq2seq: bool, query_ids, query_mask, with_grad: bool = False) -> PromptStates:
    """The prompts' reusable states under `lm` (run it under the autocast the later passes use), without gradients
    unless `with_grad` (for a training pass that uses them once)."""
    with torch.set_grad_enabled(with_grad):
        if seq2seq:
            enc = lm.get_encoder()(input_ids=query_ids, attention_mask=query_mask, return_dict=True)
            return PromptStates(True, len(query_ids), encoder_outputs=enc, with_grad=with_grad)
        kwargs = dict(input_ids=query_ids[:, :-1], attention_mask=query_mask[:, :-1],
                      position_ids=_positions(query_mask)[:, :-1], use_cache=True)
        try:  # the LM head is not needed on the prompt
            out = lm(**kwargs, logits_to_keep=1)
        except TypeError:
            out = lm(**kwargs)
        cache = out.get("cache", None)
        if cache is None:
            cache = out.get("past_key_values", None)
        return PromptStates(False, len(query_ids), cache=cache, with_grad=with_grad)


def forward_with_prompt_states(lm, seq2seq: bool, query_ids, query_mask, response_ids, response_mask, *,
                               repeats: int = 1, states: PromptStates | None = None, with_hidden: bool = False):
    """`forward_lm` for k = `repeats` responses per prompt, the prompt's work done once: query_ids `[B, Q]` are
    the distinct prompts, responses `[B * k, R]` (a prompt's k side by side). `states` are reused when given
    (`prompt_states` of the same prompts and LM), computed here otherwise (with gradients when they are enabled:
    a training pass then runs each prompt once for its k responses and back-propagates through it). Only the
    response tokens (and, causal, each prompt's last token) go through the LM again.
    """
    if states is None:
        states = prompt_states(lm, seq2seq, query_ids, query_mask, with_grad=torch.is_grad_enabled())
    elif torch.is_grad_enabled() and not states.with_grad:
        raise RuntimeError("these prompt states carry no gradients: a training pass must compute its own")
    if states.rows * repeats != len(response_ids):
        raise ValueError(f"{states.rows} prompts x {repeats} do not match {len(response_ids)} responses")
    mine = states.repeated(repeats)
    query_mask = query_mask.repeat_interleave(repeats, dim=0)
    if seq2seq:
        dec_ids, dec_mask = decoder_inputs(lm, response_ids, response_mask)
        out = lm(encoder_outputs=mine.encoder_outputs, attention_mask=query_mask, decoder_input_ids=dec_ids,
                 decoder_attention_mask=dec_mask, output_hidden_states=with_hidden, use_cache=False)
        return out.logits.float(), (out.decoder_hidden_states[-1] if with_hidden else None)
    r = response_ids.shape[1]
    # The prompt's last token predicts the first response token; response token t predicts token t+1.
    ids = torch.cat([query_ids[:, -1:].repeat_interleave(repeats, dim=0), response_ids[:, :-1]], dim=1)
    mask = torch.cat([query_mask, response_mask[:, :-1]], dim=1)
    out = lm(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, -r:],
             **{cache_argument(lm): mine.cache}, use_cache=True, output_hidden_states=with_hidden)
    return out.logits.float(), (out.hidden_states[-1] if with_hidden else None)


class ActorCritic(nn.Module):
    """The policy LM plus a scalar value head on its last hidden state."""

    def __init__(self, lm, seq2seq: bool, uses_lora: bool = False, mixed_precision: str = "none"):
        super().__init__()
        self.lm = lm
        self.seq2seq = seq2seq
        self.uses_lora = uses_lora
        self.mixed_precision = mixed_precision
        cfg = lm.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None) or cfg.n_embd
        self.value_head = nn.Linear(hidden, 1)
        # Small init: values start near 0 so early value loss does not swamp the policy gradient.
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1))
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(device=next(lm.parameters()).device, dtype=torch.float32)

    @property
    def device(self):
        return next(self.lm.parameters()).device

    def forward(self, query_ids, query_mask, response_ids, response_mask, repeats: int = 1,
                states: PromptStates | None = None):
        """Logits `[B, R, V]` predicting each response token and values `[B, R]` of the state before it.
        `repeats` / `states`: as in `forward_lm` (distinct prompts, their states reused; no gradients)."""
        with autocast(self.device, self.mixed_precision):
            logits, hidden = forward_lm(self.lm, self.seq2seq, query_ids, query_mask, response_ids, response_mask,
                                        with_hidden=True, repeats=repeats, states=states)
        # The value head runs outside autocast, in float32.
        return logits, self.value_head(hidden.float()).squeeze(-1)


@dataclass
class PolicyBundle:
    """What a trainer needs: the actor-critic, its tokenizer, the reference and some facts."""

    policy: Any  # _ActorCritic
    tokenizer: Any
    reference: Any  # a frozen LM, or None when LoRA is on (adapters disabled instead)
    seq2seq: bool
    path: str
    device: str
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    source_generation_config: Any = None  # the checkpoint's own generation_config, replaced at load, saved back

    # The policy holds the setting ("none" | "bf16"); the bundle's generation and reference passes follow it.
    @property
    def mixed_precision(self) -> str:
        return self.policy.mixed_precision

    @mixed_precision.setter
    def mixed_precision(self, value: str) -> None:
        self.policy.mixed_precision = value

    def autocast(self):
        """The autocast context every forward pass and generation of this bundle runs under."""
        return autocast(self.device, self.mixed_precision)

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Mixed precision off for the block (evaluation measures the trained weights at their own precision)."""
        saved, self.mixed_precision = self.mixed_precision, "none"
        try:
            yield
        finally:
            self.mixed_precision = saved

    @contextlib.contextmanager
    def reference_lm(self) -> Iterator[Any]:
        """The reference LM to run under no_grad: a frozen copy, or the policy with adapters off."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.lm.disable_adapter():
                yield self.policy.lm


# Config attributes that hold a dropout-like probability: attention_dropout (Llama, Qwen2, Mistral), hidden_dropout,
# dropout_rate (T5), attn_pdrop / resid_pdrop (GPT-2, Phi), layerdrop (BART's random layer skipping), ...
_DROPOUT_NAME = re.compile(r"dropout|pdrop|layerdrop", re.IGNORECASE)


def _zero_dropout_numbers(obj) -> None:
    """Set every float attribute of `obj` whose name says dropout / pdrop / layerdrop to 0.0."""
    for name, value in list(vars(obj).items()):
        if _DROPOUT_NAME.search(name) and isinstance(value, float) and not isinstance(value, bool) and value != 0.0:
            setattr(obj, name, 0.0)


def disable_dropout(model) -> None:
    """Turn off every source of train-mode randomness: PPO's ratio new/old must be exactly 1 before the first
    update (TRL's PPO did the same).

    nn.Dropout modules get p = 0, but that is not enough: Llama / Qwen2 / Mistral attention reads a plain float
    (`self.attention_dropout`, copied from `config.attention_dropout` at construction) and passes it to the attention
    kernel in train mode, and BART-style models skip layers with `config.*layerdrop`. So every dropout-like float on
    every module and on the model's config (and its sub-configs) is set to 0 too.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        _zero_dropout_numbers(module)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            _zero_dropout_numbers(config)
            for sub in vars(config).values():
                if hasattr(sub, "to_dict") and hasattr(sub, "model_type"):  # a nested PretrainedConfig
                    _zero_dropout_numbers(sub)


# Generation-config fields kept at load: token ids only. Everything else (repetition_penalty, no_repeat_ngram_size,
# min_p, typical_p, top_k, suppress_tokens, begin_suppress_tokens, forced_bos/eos_token_id, bad_words_ids,
# sequence_bias, ...) would reshape the distribution `generate` samples from while the log-probs, the KL and the
# ratio are computed from `sampling_logits` (temperature + the min-length EOS ban) alone.
_GENERATION_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def neutral_generation_config(lm):
    """A GenerationConfig holding only `lm`'s token ids: `generate` then applies nothing but what the call asks."""
    from transformers import GenerationConfig

    old = getattr(lm, "generation_config", None)
    kept = {k: getattr(old, k, None) for k in _GENERATION_TOKEN_FIELDS}
    return GenerationConfig(**{k: v for k, v in kept.items() if v is not None})


def load_policy(settings: "ModelSettings") -> PolicyBundle:
    """Load the policy LM, wrap it as actor-critic, and set up the reference.

    Three things are neutralised at load so that the distribution `generate` samples from is exactly the one the
    log-probs, the KL and the PPO ratio are computed from (`sampling_logits`):
    - the model's own generation_config (repetition penalty, n-gram bans, min_p, suppressed / forced tokens, ...)
      is replaced by one holding only the token ids (the original is written back by `save_policy`);
    - every dropout, nn.Dropout modules and dropout probabilities read from config numbers alike (`disable_dropout`);
    - `dtype: auto` on a float16 / bfloat16 checkpoint loads float32 weights: every method trains the policy with
      Adam, which on half-precision weights drops small updates (bf16) or turns them into NaN (fp16); use
      `mixed_precision: bf16` for speed, which keeps float32 master weights.
    """
    path = resolve_model_path(settings.name_or_path)
    seq2seq = is_seq2seq(path, settings.architecture)
    device = pick_device(settings.device)
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    lm = cls.from_pretrained(path, dtype=_dtype(settings.dtype))
    if settings.dtype == "auto" and any(p.dtype in (torch.float16, torch.bfloat16) for p in lm.parameters()):
        lm = lm.float()
    tokenizer = load_tokenizer(path, seq2seq)
    if lm.config.pad_token_id is None:
        lm.config.pad_token_id = tokenizer.pad_token_id
    source_generation_config = getattr(lm, "generation_config", None)
    lm.generation_config = neutral_generation_config(lm)  # before the reference copy: both sample the same way
    lm.to(device)

    reference = None
    if settings.lora.enabled:
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=settings.lora.dropout,
            target_modules=settings.lora.target_modules or "all-linear",
            task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        )
        lm = get_peft_model(lm, lora)
    else:
        reference = copy.deepcopy(lm).eval()
        reference.requires_grad_(False)
    disable_dropout(lm)
    policy = ActorCritic(lm, seq2seq=seq2seq, uses_lora=settings.lora.enabled,
                         mixed_precision=settings.mixed_precision)
    use_template = settings.chat_template == "on" or (
        settings.chat_template == "auto" and not seq2seq and bool(getattr(tokenizer, "chat_template", None)))
    return PolicyBundle(policy=policy, tokenizer=tokenizer, reference=reference, seq2seq=seq2seq,
                        path=path, device=str(torch.device(device)), chat_template=use_template,
                        source_generation_config=source_generation_config)


# --------------------------------------------------------------------------------------------------
# Generation and per-token statistics
# --------------------------------------------------------------------------------------------------
# Room for a chat template's own tokens on top of the prompt's token budget.
CHAT_TEMPLATE_MARGIN = 64


def encode_queries(bundle: PolicyBundle, prompts: list[str], max_tokens: int, device) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Tokenise prompts into a left-padded (causal) or right-padded (seq2seq) batch.

    With `bundle.chat_template`, each prompt becomes the user turn of the tokenizer's chat template
    (instruct models answer far better that way); the prompt itself was already cut to its budget.
    """
    tokenizer = bundle.tokenizer
    if bundle.chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
        max_tokens += CHAT_TEMPLATE_MARGIN
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_tokens,
                    add_special_tokens=not bundle.chat_template)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def generation_kwargs(bundle: PolicyBundle, gen: "GenerationSettings", greedy: bool = False) -> dict[str, Any]:
    """The keyword arguments `generate` passes to `lm.generate` (the model's generation_config was neutralised at
    load, so these are all that shape the sampling distribution)."""
    tok = bundle.tokenizer
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, min_new_tokens=min_new_tokens(gen),
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    if greedy or not gen.do_sample:
        kwargs.update(do_sample=False)
    else:
        kwargs.update(do_sample=True, top_k=gen.top_k, top_p=gen.top_p, temperature=gen.temperature)
    return kwargs


def generate(bundle: PolicyBundle, lm, query_ids, query_mask, gen: "GenerationSettings", greedy: bool = False,
             with_logits: bool = False, repeats: int = 1, states: PromptStates | None = None):
    """Sample responses for a batch of queries: `(response_ids [B, R], response_mask [B, R])`.

    Responses are cut at the prompt length (seed trap 4: never the last N tokens of prompt+response),
    and end at the first EOS, which is kept as the policy's last action. With `with_logits`, also the
    raw logits `[B, R, V]` (float32) that each response token was sampled from, so the sampler's log-probs
    need no second forward pass over prompt + response (the prompt is most of that pass's cost).

    With `repeats` k > 1, each query is answered k times (its responses side by side, B * k rows) and its prefill
    (causal: the KV cache of the prompt; seq2seq: the encoder pass) is done once and copied k times instead of
    running the prompt k times; `states` (`prompt_states` of these queries under `lm`) are reused when given. The
    sampling distribution is `generate`'s own either way: only where the prompt's keys and values come from changes.
    """
    tok = bundle.tokenizer
    kwargs = generation_kwargs(bundle, gen, greedy)
    if with_logits:
        kwargs.update(output_logits=True, return_dict_in_generate=True)
    share = states is not None or (repeats > 1 and can_share_prompt(bundle.seq2seq, query_ids))
    with torch.no_grad(), bundle.autocast():
        if share:
            if states is None:
                states = prompt_states(lm, bundle.seq2seq, query_ids, query_mask)
            mine = states.repeated(repeats)
            if bundle.seq2seq:
                kwargs.update(encoder_outputs=mine.encoder_outputs)
            else:
                kwargs[cache_argument(lm)] = mine.cache
        if repeats > 1:
            query_ids = query_ids.repeat_interleave(repeats, dim=0)
            query_mask = query_mask.repeat_interleave(repeats, dim=0)
        out = lm.generate(input_ids=query_ids, attention_mask=query_mask, **kwargs)
    sequences = out.sequences if with_logits else out
    response = sequences[:, 1:] if bundle.seq2seq else sequences[:, query_ids.shape[1]:]
    response, mask = trim_after_eos(response, tok.eos_token_id, tok.pad_token_id)
    if not with_logits:
        return response, mask
    # One [B, V] tensor per generated step, before any logits processor (temperature, EOS ban).
    logits = torch.stack(out.logits, dim=1)[:, :response.shape[1]].float()
    return response, mask, logits


def trim_after_eos(response, eos_id: int | None, pad_id: int):
    """Mask every token after the first EOS (keeping the EOS itself) and drop all-padding columns."""
    if response.shape[1] == 0:
        return response, torch.zeros_like(response)
    if eos_id is None:
        mask = torch.ones_like(response)
    else:
        is_eos = (response == eos_id).long()
        # Tokens strictly after the first EOS: the running count of EOS before them is >= 1.
        after = (is_eos.cumsum(1) - is_eos) > 0
        mask = (~after).long()
    response = response.masked_fill(mask == 0, pad_id)
    length = int(mask.sum(1).max().item()) if mask.numel() else 0
    length = max(length, 1)
    return response[:, :length].contiguous(), mask[:, :length].contiguous()


def sampling_logits(logits, temperature: float = 1.0, min_new_tokens: int = 0, eos_token_id: int | None = None):
    """The logits of the distribution `generate` samples each response token from: divided by the temperature,
    and with EOS banned at the first `min_new_tokens` positions (generate's min_new_tokens, the seed's min_length).

    Log-probs and KL must come from this distribution, not the raw one: with the raw one, a policy that puts mass
    on an EOS it is never allowed to emit gets log pi(token) < log pi_ref(token) on every forced token, the KL
    estimate turns negative and the KL penalty becomes a bonus for wanting to stop early (TRL's known
    "negative KL" trap with min_length). top_k / top_p are not applied: they would give the reference -inf.
    """
    logits = logits / temperature
    if min_new_tokens > 0 and eos_token_id is not None and logits.shape[-2] > 0:
        banned = torch.zeros(logits.shape[-2:], dtype=torch.bool, device=logits.device)
        banned[:min_new_tokens, eos_token_id] = True
        # A finite minimum, not -inf: a masked-out EOS at a banned position must not turn into NaN.
        logits = logits.masked_fill(banned, torch.finfo(logits.dtype).min)
    return logits


def logprobs_from_logits(logits, tokens, temperature: float = 1.0, min_new_tokens: int = 0,
                         eos_token_id: int | None = None):
    """log p(token) under the sampling distribution (`sampling_logits`), gathered per position: `[B, R]`."""
    logp = torch.log_softmax(sampling_logits(logits, temperature, min_new_tokens, eos_token_id), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits, temperature: float = 1.0, min_new_tokens: int = 0, eos_token_id: int | None = None):
    """Entropy of the sampling distribution at each position: `[B, R]`."""
    logp = torch.log_softmax(sampling_logits(logits, temperature, min_new_tokens, eos_token_id), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def min_new_tokens(gen: "GenerationSettings") -> int:
    """How many leading response tokens `generate` keeps from being EOS."""
    return min(gen.min_length, gen.max_new_tokens)


def reference_logprobs(bundle: PolicyBundle, query_ids, query_mask, response_ids, response_mask, temperature: float,
                       min_new: int = 0, repeats: int = 1):
    """Per-token log-probs of the responses under the reference model (same sampling distribution as the policy's).

    With `repeats` k > 1 the queries are the distinct prompts, each answered by k consecutive responses: the
    reference runs each prompt once and reuses its states for the k responses (`forward_with_prompt_states`)."""
    with torch.no_grad(), bundle.reference_lm() as ref, bundle.autocast():
        logits, _ = forward_lm(ref, bundle.seq2seq, query_ids, query_mask, response_ids, response_mask,
                               repeats=repeats)
        return logprobs_from_logits(logits, response_ids, temperature, min_new, bundle.tokenizer.eos_token_id)


def save_policy(bundle: PolicyBundle, out_dir: str | Path) -> Path:
    """Save the trained policy (full model or LoRA adapter) + tokenizer + value head; `from_pretrained` loads it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm = bundle.policy.lm
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    # The saved model samples as its checkpoint did (training ran on the neutral config; a reload neutralises again).
    neutral = base.generation_config
    if bundle.source_generation_config is not None:
        base.generation_config = bundle.source_generation_config
    try:
        lm.save_pretrained(out)
    finally:
        base.generation_config = neutral
    bundle.tokenizer.save_pretrained(out)
    torch.save(bundle.policy.value_head.state_dict(), out / "value_head.pt")
    return out
