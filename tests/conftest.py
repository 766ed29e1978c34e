"""Shared pytest fixtures: tiny randomly initialised models built locally (no hub), once per test session.

All models share one byte-level BPE vocabulary (~300 tokens) trained in well under a second with `tokenizers`.
Special tokens mirror the real models the lab uses, so pad/eos handling is tested as it runs for real:
- causal (GPT-2 style, like the built-in tiny policy): eos = bos = pad = "<|endoftext|>";
- T5 / RoBERTa: pad "<pad>" (id 0), eos "</s>" (id 1); T5 starts decoding from the pad id, as flan-t5 does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

PAD, EOS_T5, EOS_GPT = "<pad>", "</s>", "<|endoftext|>"
SPECIALS = [PAD, EOS_T5, EOS_GPT]  # ids 0, 1, 2 in every fixture tokenizer
MAX_LEN = 512


def _corpus(n: int = 200) -> list[str]:
    """~200 real HH dialogues from the shared file, or the built-in ones where the checkout has no ../shared."""
    from engine.data import SHARED_HH_PATH, load_dialogues

    return load_dialogues(str(SHARED_HH_PATH) if SHARED_HH_PATH.is_file() else "builtin")[:n]


@pytest.fixture(scope="session")
def _bpe():
    """The shared `tokenizers.Tokenizer` (byte-level BPE, 300 tokens)."""
    from engine.assets import train_bpe_tokenizer

    return train_bpe_tokenizer(_corpus(), vocab_size=300, special_tokens=SPECIALS)


def _causal_tokenizer(bpe):
    from engine.assets import wrap_tokenizer

    tok = wrap_tokenizer(bpe, MAX_LEN, eos_token=EOS_GPT, bos_token=EOS_GPT, pad_token=EOS_GPT)
    tok.padding_side = "left"  # decoder-only generation pads on the left
    return tok


def _seq2seq_tokenizer(bpe):
    from engine.assets import wrap_tokenizer

    return wrap_tokenizer(bpe, MAX_LEN, pad_token=PAD, eos_token=EOS_T5)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, _bpe) -> Path:
    """A saved causal-style tokenizer (eos = bos = pad = "<|endoftext|>", left padding), ~300 tokens."""
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    _causal_tokenizer(_bpe).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, _bpe) -> Path:
    """A random 2-layer, 32-wide GPT-2 with the causal tokenizer; pad = eos as in GPT-2."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    tok = _causal_tokenizer(_bpe)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, _bpe) -> Path:
    """A random 2-layer, 32-wide T5 with pad "<pad>" (0) = decoder start and eos "</s>" (1)."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tok = _seq2seq_tokenizer(_bpe)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                      d_kv=16, dropout_rate=0.0, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
    out = tmp_path_factory.mktemp("tiny_t5")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_roberta_classifier_dir(tmp_path_factory, _bpe) -> Path:
    """A random tiny RobertaForSequenceClassification labelled like the seed's reward model (0 nothate, 1 hate)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = _seq2seq_tokenizer(_bpe)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           # RoBERTa positions start after the pad id, hence the + 2 (as roberta-base's 514)
                           max_position_embeddings=MAX_LEN + 2,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           id2label={0: "nothate", 1: "hate"}, label2id={"nothate": 0, "hate": 1})
    model = RobertaForSequenceClassification(config).eval()
    out = tmp_path_factory.mktemp("tiny_roberta_classifier")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------------ stores on both backends (SQLite, PostgreSQL)


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server on 127.0.0.1 for the whole session (tests/pg_server.py); skipped, saying why, where
    PostgreSQL is not installed (CI installs it: scripts/setup.sh)."""
    import pg_server as pg

    try:
        server = pg.start()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    yield server
    # Stores a test left owning a run keep heartbeating (daemon threads) until the interpreter exits: once the
    # server is gone their failures are expected, not news.
    logging.getLogger("engine.store").setLevel(logging.CRITICAL)
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database for one test (dropped afterwards); its SQLAlchemy URL."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """The URL of an empty store on each backend: a SQLite file in tmp_path, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lab.db'}"
    return request.getfixturevalue("pg_url")
