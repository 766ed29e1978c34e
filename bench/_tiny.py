"""What the benches share (not a bench: names starting with _ are not run by tests/test_bench_smoke.py).

`hh_dialogues` reads the shared HH file when the checkout sits next to ../shared, else the built-in dialogues, so
every bench (and its --smoke mode) runs on a fresh clone. `build_gpt2` writes a randomly initialised GPT-2 with a
byte-level BPE trained on those dialogues into a folder (no hub, no cache).
"""

from __future__ import annotations

from pathlib import Path


def hh_dialogues(n: int) -> list[str]:
    """Up to n HH dialogues: the shared test/dev file if present, else the built-in ones."""
    from engine.data import SHARED_HH_PATH, load_dialogues

    return load_dialogues(str(SHARED_HH_PATH) if SHARED_HH_PATH.is_file() else "builtin")[:n]


def prompt_source() -> str:
    """The data source benches take prompts from: the shared HH file if present, else "builtin"."""
    from engine.data import SHARED_HH_PATH

    return str(SHARED_HH_PATH) if SHARED_HH_PATH.is_file() else "builtin"


def build_gpt2(out_dir: Path, *, vocab: int = 4096, n_embd: int = 256, n_layer: int = 4, n_head: int = 4,
               n_dialogues: int = 300, seed: int = 0) -> dict:
    """A random-init GPT-2 with a BPE trained on HH dialogues, saved (with its tokenizer) in out_dir.

    eos = bos = pad = "<|endoftext|>" as in GPT-2; no dropout. Returns {"vocab", "params"}."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from engine.assets import EOS_TOKEN, train_bpe_tokenizer, wrap_tokenizer

    dialogues = hh_dialogues(n_dialogues)
    tokenizer = wrap_tokenizer(train_bpe_tokenizer([d + EOS_TOKEN for d in dialogues], vocab),
                               model_max_length=512, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"vocab": len(tokenizer), "params": sum(p.numel() for p in model.parameters())}
