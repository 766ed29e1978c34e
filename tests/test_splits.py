"""Honest splits: train / validation / test prompts, seeded, disjoint, one prompt per dialogue across all three,
and a test split that does not move when the validation (or training) size is tuned."""

import pytest

from engine import data
from engine.data import dialogue_key, split_three

HH = "/work/shared/data/hh-rlhf/harmless-base-test-dev.jsonl.gz"


def _prompts(n=300):
    out = [f"Summarize.\n\nHuman: question number {i}?\n\nAssistant: answer {i}\n\nSummary:" for i in range(n)]
    # variants of earlier dialogues: the same opening question, another reply (or only spacing / case changed)
    out += ["Summarize.\n\nHuman: Question number 3?\n\nAssistant: a different answer\n\nSummary:",
            "Summarize.\n\nHuman:   question   number 7?\n\nAssistant: answer 7, longer\n\nSummary:"]
    return out


def test_splits_are_disjoint_deduplicated_and_seeded():
    items = _prompts()
    train, val, test = split_three(items, test_size=50, validation_size=40, seed=1)
    assert (len(train), len(val), len(test)) == (300 - 90, 40, 50)  # the 2 variants dropped
    keys = [dialogue_key(p) for p in train + val + test]
    assert len(keys) == len(set(keys))  # no dialogue twice, within or across the splits
    assert split_three(items, test_size=50, validation_size=40, seed=1) == (train, val, test)
    other = split_three(items, test_size=50, validation_size=40, seed=2)
    assert other[2] != test and sorted(other[2] + other[1] + other[0]) == sorted(train + val + test)


@pytest.mark.parametrize("validation_size", [0, 10, 100, 0.25])
def test_the_test_split_does_not_move_when_validation_or_train_size_changes(validation_size):
    items = _prompts()
    _, _, test = split_three(items, test_size=60, validation_size=20, seed=5)
    train, val, test2 = split_three(items, test_size=60, validation_size=validation_size, seed=5)
    assert test2 == test
    assert split_three(items, test_size=60, validation_size=validation_size, train_size=30, seed=5)[2] == test
    # and validation does not move with the test size or the training size
    assert split_three(items, test_size=10, validation_size=validation_size, train_size=5, seed=5)[1] == val


def test_bad_sizes_name_the_setting():
    with pytest.raises(ValueError, match=r"train \(1\) \+ validation \(15\) \+ test \(10\) = 26: lower data.validation_size"):
        split_three(_prompts(20), test_size=10, validation_size=15)
    with pytest.raises(ValueError, match="validation_size"):
        split_three(_prompts(20), test_size=5, validation_size=-1)


def test_dialogue_key_is_the_first_human_turn():
    a = "Summarize.\n\nHuman: Hi THERE\n\nAssistant: hello\n\nHuman: more\n\nSummary:"
    b = "Other header\n\nHuman: hi  there\n\nAssistant: something else entirely\n\nSummary:"
    assert dialogue_key(a) == dialogue_key(b) == "hi there"
    assert dialogue_key("a plain prompt  Text") == "a plain prompt text"


def test_on_the_shared_hh_prompts():
    from pathlib import Path

    if not Path(HH).is_file():
        pytest.skip("the shared HH file is not on this machine")
    prompts = data.load_prompts(HH)
    train, val, test = split_three(prompts, test_size=200, validation_size=200, seed=42)
    assert len(test) == len(val) == 200 and len(train) >= 400
    assert not ({dialogue_key(p) for p in test} & {dialogue_key(p) for p in train + val})
    assert len(prompts) > len(train) + len(val) + len(test)  # dialogues sharing an opening question were dropped
