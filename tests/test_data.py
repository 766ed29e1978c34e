"""Tests for engine/data.py: sources, prompt filtering and template, left truncation, split, preference pairs."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import data

HEADER = "Summarize the following conversation.\n\n"
FOOTER = "\n\nSummary:"
needs_shared = pytest.mark.skipif(not data.SHARED_HH_PATH.is_file(), reason="shared HH file not present")


def _write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def _dialogue(*turns: str) -> str:
    return "".join(("\n\nHuman: " if i % 2 == 0 else "\n\nAssistant: ") + t for i, t in enumerate(turns))


# ------------------------------------------------------------------------------------------ real shared file
@needs_shared
def test_auto_resolves_to_shared_file(monkeypatch):
    monkeypatch.delenv(data.HH_ENV_VAR, raising=False)
    assert Path(data.resolve_source("auto")) == data.SHARED_HH_PATH


@needs_shared
def test_real_file_seed_filter_and_template(monkeypatch):
    monkeypatch.delenv(data.HH_ENV_VAR, raising=False)
    with gzip.open(data.SHARED_HH_PATH, "rt", encoding="utf-8") as f:
        raw = [json.loads(line)["chosen"] for line in f]
    expected = list(dict.fromkeys(d.strip() for d in raw if 100 < len(d) <= 500))

    assert data.load_dialogues("auto") == raw and len(raw) == 1800
    prompts = data.load_prompts("auto")
    print(f"\n{len(prompts)} of {len(raw)} dialogues pass 100 < len <= 500")
    assert 0 < len(prompts) < len(raw)
    assert prompts == [HEADER + d + FOOTER for d in expected]
    assert len(set(prompts)) == len(prompts)

    wider = data.load_prompts("auto", min_chars=50, max_chars=1000)
    assert len(wider) > len(prompts)
    custom = data.load_prompts("auto", template="Dialogue:{dialogue}\nTL;DR:")
    assert custom[0].startswith("Dialogue:Human:") and custom[0].endswith("\nTL;DR:")
    assert len(custom) == len(prompts)


@needs_shared
def test_real_file_preference_pairs():
    pairs, skipped = data.load_preference_pairs(str(data.SHARED_HH_PATH), return_skipped=True)
    assert len(pairs) + sum(skipped.values()) == 1800
    assert len(pairs) > 1700
    chosen_dialogues = set(data.load_dialogues(str(data.SHARED_HH_PATH)))
    for p in pairs:
        assert p["prompt"].endswith("\n\nAssistant:")
        assert "\n\nAssistant:" not in p["chosen"] and "\n\nAssistant:" not in p["rejected"]
        assert p["prompt"] + p["chosen"] in chosen_dialogues
        assert p["chosen"].strip() and p["rejected"].strip()
    assert sum(p["chosen"] != p["rejected"] for p in pairs) / len(pairs) > 0.95


# ----------------------------------------------------------------------------------------------- sources
def test_env_var_overrides_auto(tmp_path, monkeypatch):
    f = _write_jsonl(tmp_path / "hh.jsonl.gz", [{"chosen": _dialogue("hi " * 40, "hello " * 10), "rejected": "x"}],
                     gz=True)
    monkeypatch.setenv(data.HH_ENV_VAR, str(f))
    assert data.resolve_source("auto") == str(f.resolve())
    assert len(data.load_prompts("auto")) == 1
    monkeypatch.setenv(data.HH_ENV_VAR, str(tmp_path / "missing.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match=data.HH_ENV_VAR):
        data.resolve_source("auto")


def test_auto_falls_back_to_hub_then_builtin(tmp_path, monkeypatch):
    monkeypatch.delenv(data.HH_ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SHARED_HH_PATH", tmp_path / "absent.jsonl.gz")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(data, "find_spec", lambda name: object())
    assert data.resolve_source("auto") == "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.resolve_source("auto") == "builtin"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(data, "find_spec", lambda name: None)  # datasets not installed
    assert data.resolve_source("auto") == "builtin"


def test_builtin_source():
    dialogues = data.load_dialogues("builtin")
    assert 35 <= len(dialogues) <= 60
    assert all(d.startswith("\n\nHuman: ") for d in dialogues)
    # every built-in dialogue passes the seed's default filter, so the engine works with defaults and no data
    prompts = data.load_prompts("builtin")
    assert len(prompts) == len(dialogues)
    pairs = data.load_preference_pairs("builtin")
    assert len(pairs) == len(dialogues)
    assert all(p["chosen"] != p["rejected"] and p["prompt"].endswith("Assistant:") for p in pairs)
    assert any(p["prompt"].count("\n\nHuman:") > 1 for p in pairs)  # some multi-turn
    for d in dialogues:  # turns alternate Human / Assistant and end with an Assistant reply
        roles = re.findall(r"\n\n(Human|Assistant):", d)
        assert roles == ["Human", "Assistant"] * (len(roles) // 2), d


def test_hub_calls_load_dataset_with_hh_args(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return [{"chosen": _dialogue("q" * 120, "a"), "rejected": _dialogue("q" * 120, "b")}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(data.load_prompts("hub")) == 1
    assert data.load_preference_pairs("hub:train")[0]["chosen"] == " a"
    assert calls == [("Anthropic/hh-rlhf", {"data_dir": "harmless-base", "split": "test"}),
                     ("Anthropic/hh-rlhf", {"data_dir": "harmless-base", "split": "train"})]


def test_hub_failure_is_clear(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Anthropic/hh-rlhf.*no network.*builtin"):
        data.load_dialogues("hub")
    with pytest.raises(ValueError, match="unknown hub split"):
        data.resolve_source("hub:validation")


def test_plain_prompt_files_used_as_they_are(tmp_path):
    rows = ["Tell me a story.", "", "What is 2+2?", "Tell me a story.", "  "]
    csv_path = tmp_path / "p.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt"])
        w.writerows([[i, r] for i, r in enumerate(rows)])
    expected = ["Tell me a story.", "What is 2+2?"]
    assert data.load_prompts(str(csv_path)) == expected
    jsonl_path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": r} for r in rows] + ["{not json"])
    # no template, no length filter: short prompts survive
    assert data.load_prompts(str(jsonl_path), min_chars=100, max_chars=500) == expected
    with pytest.raises(ValueError, match="plain prompts"):
        data.load_dialogues(str(jsonl_path))


def test_local_dialogue_file_with_malformed_lines(tmp_path, caplog):
    good = _dialogue("Can you help me? " * 8, "Sure.")
    rows = [{"chosen": good, "rejected": _dialogue("Can you help me? " * 8, "No.")},
            "{broken json", {"chosen": 3, "rejected": "x"}, {"chosen": "no markers here", "rejected": "none"},
            {"chosen": _dialogue("a" * 150, "x"), "rejected": _dialogue("b" * 150, "y")}]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    assert data.load_dialogues(str(path)) == [good, "no markers here", rows[4]["chosen"]]
    with caplog.at_level("WARNING"):
        pairs, skipped = data.load_preference_pairs(str(path), return_skipped=True)
    assert pairs == [{"prompt": _dialogue("Can you help me? " * 8) + "\n\nAssistant:", "chosen": " Sure.",
                      "rejected": " No."}]
    assert skipped == {"not a JSON object": 1, "missing chosen/rejected": 1, "no Assistant turn": 1,
                       "prompts differ": 1}
    assert "skipped 4 lines" in caplog.text


# ------------------------------------------------------------------------------------------------- errors
def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_prompts(str(tmp_path / "nope.jsonl"))
    bad_csv = tmp_path / "q.csv"
    bad_csv.write_text("question,answer\nhi,there\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'prompt' column; found \['question', 'answer'\]"):
        data.load_prompts(str(bad_csv))
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"text": "hi"}])
    with pytest.raises(ValueError, match=r"found keys \['text'\]"):
        data.load_prompts(str(odd))
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load_prompts(str(tmp_path / "x.parquet"))
    short = _write_jsonl(tmp_path / "short.jsonl", [{"chosen": _dialogue("hi", "hello"), "rejected": "x"}])
    with pytest.raises(ValueError, match=r"0 prompts with 100 < length <= 500 chars in .*short\.jsonl"):
        data.load_prompts(str(short))
    with pytest.raises(ValueError, match=r"\{dialogue\}"):
        data.load_prompts("builtin", template="Summarize:\n{text}\nSummary:")
    with pytest.raises(ValueError, match=r"\{dialogue\}"):
        data.load_prompts("builtin", template="Summarize the conversation.")
    with pytest.raises(ValueError, match="min_chars"):
        data.load_prompts("builtin", min_chars=500, max_chars=100)


def test_template_escaped_braces():
    assert data.format_prompt("\n\nHuman: hi", "{{json}} {dialogue} }}") == "{json} Human: hi }"


# ------------------------------------------------------------------------------------------------- split
def test_split_deterministic_and_disjoint():
    items = [f"p{i}" for i in range(100)]
    train, holdout = data.split(items, 0.2, None, seed=7)
    assert len(holdout) == 20 and len(train) == 80
    assert set(train).isdisjoint(holdout) and set(train) | set(holdout) == set(items)
    random.seed(123)  # global random state and other calls in between must not matter
    data.split(items, 0.5, None, seed=8)
    random.shuffle(items[:])
    assert data.split(items, 0.2, None, seed=7) == (train, holdout)
    assert data.split(items, 0.2, None, seed=8) != (train, holdout)
    assert train != items[20:] and holdout != items[:20]  # actually shuffled
    # the hold-out set does not depend on train_size, so a small training run is evaluated on the same prompts
    small_train, same_holdout = data.split(items, 20, 10, seed=7)
    assert same_holdout == holdout and len(small_train) == 10 and set(small_train) <= set(train)


def test_split_sizes_and_errors():
    items = list(range(1000))
    assert len(data.split(items, 0.2, None, 0)[1]) == 200  # no float round-up to 201
    assert len(data.split(list(range(11)), 0.2, None, 0)[1]) == 3  # fraction rounds up
    with pytest.raises(ValueError, match="data source X has 37 prompts after filtering; train_size "
                                         r"\+ holdout_size = 260"):
        data.split(list(range(37)), 200, 60, 0, source="data source X")
    with pytest.raises(ValueError, match=r"has 10 prompts after filtering; train_size \+ holdout_size = 11"):
        data.split(list(range(10)), 10, None, 0)
    with pytest.raises(ValueError, match="holdout_size"):
        data.split(items, 1.5, None, 0)
    with pytest.raises(TypeError, match="holdout_size"):
        data.split(items, "20", None, 0)
    with pytest.raises(ValueError, match="train_size"):
        data.split(items, 10, 0, 0)


# ------------------------------------------------------------------------------------------- truncation
@pytest.fixture(scope="module")
def tokenizer():
    """A GPT-2-style byte-level BPE trained here on the built-in dialogues (no hub), with BOS/EOS added."""
    pytest.importorskip("transformers")
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(data.load_dialogues("builtin") + [HEADER + FOOTER], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def _long_prompt() -> tuple[str, str, str]:
    oldest = "OLDEST turn about the garden and the weather last spring."
    newest = "NEWEST reply: unplug the router for thirty seconds."
    turns = [oldest] + [f"filler turn number {i} with some words in it" for i in range(30)] + [newest]
    return data.format_prompt(_dialogue(*turns)), oldest, newest


def test_truncate_left_keeps_header_footer_and_newest_turns(tokenizer):
    prompt, oldest, newest = _long_prompt()
    assert tokenizer.num_special_tokens_to_add() == 2
    assert len(tokenizer(prompt)["input_ids"]) > 128
    short = "Summarize the following conversation.\n\nHuman: hi\n\nAssistant: hello\n\nSummary:"
    out = data.truncate_left([prompt, short], tokenizer, max_tokens=128)
    cut = out[0]
    n = len(tokenizer(cut)["input_ids"])  # special tokens included
    assert 126 <= n <= 128  # fills the budget
    assert cut.startswith(HEADER) and cut.endswith(FOOTER)
    assert cut.endswith(newest + FOOTER) and oldest not in cut
    assert prompt.endswith(cut[len(HEADER):])  # the dialogue kept is exactly the end of the original
    assert out[1] == short  # within budget: unchanged


def test_truncate_left_plain_prompts_and_errors(tokenizer):
    prompt, _, _ = _long_prompt()
    out = data.truncate_left([prompt], tokenizer, max_tokens=40, template=None)[0]
    assert prompt.endswith(out) and not out.startswith(HEADER) and len(tokenizer(out)["input_ids"]) <= 40
    with pytest.raises(ValueError, match="does not match the template"):
        data.truncate_left(["Q: " + prompt], tokenizer, max_tokens=64)
    with pytest.raises(ValueError, match="leaves no room for the dialogue"):
        data.truncate_left([prompt], tokenizer, max_tokens=6)


def test_truncate_left_without_offsets_decodes(tokenizer):
    """Slow tokenizers have no offset mapping; the decode fallback must give the same guarantees."""

    class NoOffsets:
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, text, **kwargs):
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError("return_offset_mapping is not available for Python tokenizers")
            return self.tok(text, **kwargs)

        def decode(self, ids):
            return self.tok.decode(ids)

        def num_special_tokens_to_add(self):
            return self.tok.num_special_tokens_to_add()

    prompt, oldest, newest = _long_prompt()
    cut = data.truncate_left([prompt], NoOffsets(tokenizer), max_tokens=100)[0]
    assert cut.startswith(HEADER) and cut.endswith(newest + FOOTER) and oldest not in cut
    assert len(tokenizer(cut)["input_ids"]) <= 100


# ----------------------------------------------------------------------------------------------- imports
def test_import_is_light():
    code = "import sys, engine.data; print([m for m in ('torch', 'transformers', 'datasets', 'streamlit') " \
           "if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
