"""The Jigsaw BiLSTM ported to PyTorch: tokenizer, parity with the Keras model, reward and label semantics.

Parity is checked against tests/data/jigsaw_expected.json (made by tests/data/make_jigsaw_expected.py with the
package's own Keras model) and, where TensorFlow is importable, live against that model.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest

pytest.importorskip("h5py")
pytest.importorskip("torch")

from engine.rewards.jigsaw import LABELS, MAXLEN, JigsawBackend, KerasWordTokenizer, package_model_dir  # noqa: E402

try:
    package_model_dir()
except ModuleNotFoundError:  # the package is an optional, --no-deps install
    pytest.skip("toxic-comment-classifier is not installed", allow_module_level=True)

EXPECTED = json.loads((Path(__file__).parent / "data" / "jigsaw_expected.json").read_text(encoding="utf-8"))
CASES = EXPECTED["cases"]
TEXTS = [c["text"] for c in CASES]


@pytest.fixture(scope="module")
def backend() -> JigsawBackend:
    return JigsawBackend()


@pytest.fixture(scope="module")
def tokenizer() -> KerasWordTokenizer:
    return KerasWordTokenizer.from_pickle(package_model_dir() / "tokenizer.pickle")


def test_expected_file_covers_the_six_labels_and_a_long_text():
    assert tuple(EXPECTED["labels"]) == LABELS
    assert len(CASES) >= 12
    assert any(len(c["sequence"]) > MAXLEN for c in CASES)  # exercises truncation
    assert any(c["text"] == "" for c in CASES)


def test_word_splitting_follows_keras_rules(tokenizer):
    # lowercase; filtered punctuation becomes a separator; the apostrophe is not filtered; empties dropped
    assert tokenizer.words("Hello, World!!  you're\tgreat\n") == ["hello", "world", "you're", "great"]
    assert tokenizer.words("") == []


def test_sequences_match_keras_tokenizer(tokenizer):
    assert tokenizer.texts_to_sequences(TEXTS) == [c["sequence"] for c in CASES]


def test_pad_sequences_pads_and_truncates_at_the_front():
    padded = KerasWordTokenizer.pad_sequences([[1, 2, 3], [], list(range(1, 8))], maxlen=5)
    assert padded.tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 0], [3, 4, 5, 6, 7]]


def test_probabilities_match_keras_within_1e4(backend):
    probs = backend.probabilities(TEXTS)
    for i, case in enumerate(CASES):
        for label in LABELS:
            assert probs[label][i] == pytest.approx(case["probs"][label], abs=1e-4), (case["text"][:40], label)


def test_batch_size_does_not_change_results(backend):
    small = JigsawBackend(batch_size=3).probabilities(TEXTS)
    big = backend.probabilities(TEXTS)
    for label in LABELS:
        assert small[label] == pytest.approx(big[label], abs=1e-6)


def test_reward_is_log_odds_of_not_label_and_raw_has_six_labels(backend):
    texts = ["I like you.", "You are terrible and i hate you.", "shut up you moron"]
    result = backend.score(["ignored prompt"] * 3, texts)
    assert set(result.raw) == {f"p_{label}" for label in LABELS}
    for p, reward in zip(result.raw["p_toxic"], result.scores, strict=True):
        assert reward == pytest.approx(math.log(1 - p) - math.log(p), abs=1e-4)
    assert result.scores[0] > result.scores[1] > result.scores[2]  # seed sentences ordered; moron ≈ 0.96
    assert backend.toxicity(texts) == pytest.approx(result.raw["p_toxic"], abs=1e-9)


def test_label_is_chosen_by_name():
    texts = ["You are terrible and i hate you.", "People like you should be exterminated."]
    insult = JigsawBackend(label="insult").score(["", ""], texts)
    for p, reward in zip(insult.raw["p_insult"], insult.scores, strict=True):
        assert reward == pytest.approx(math.log(1 - p) - math.log(p), abs=1e-4)
    assert insult.scores != pytest.approx(JigsawBackend(label="toxic").score(["", ""], texts).scores, abs=1e-3)


def test_unknown_label_lists_allowed_names():
    with pytest.raises(ValueError, match="severe_toxic.*identity_hate.*'hate'"):
        JigsawBackend(label="hate")


def test_score_on_response_ignores_the_prompt(backend):
    responses = ["I like you.", "Have a nice day."]
    a = backend.score(["You are a stupid moron.", "Hi"], responses).scores
    b = backend.score(["", ""], responses).scores
    assert a == pytest.approx(b, abs=1e-9)
    joined = JigsawBackend(score_on="prompt_response").score(["You are a stupid moron. ", "Hi "], responses)
    assert joined.scores[0] < a[0] - 1.0  # the insulting prompt now counts
    with pytest.raises(ValueError, match="score_on"):
        JigsawBackend(score_on="both")


def test_empty_batch_and_bad_items(backend):
    assert backend.score([], []).scores == []
    assert backend.toxicity([]) == []
    with pytest.raises(ValueError, match=r"responses\[1\]"):
        backend.score(["a", "b"], ["ok", None])


def test_tokenizer_unpickler_refuses_other_classes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "tokenizer.pickle"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        KerasWordTokenizer.from_pickle(path)


def test_live_parity_with_keras_model(backend):
    """Runs the package's own Keras model where TensorFlow is importable (not in the project's venv)."""
    pytest.importorskip("tensorflow")
    from toxic_classifier.model import ToxicCommentClassifier

    clf = ToxicCommentClassifier()
    texts = TEXTS + ["Go to hell, you worthless piece of garbage.", "The weather is lovely today, isn't it?"]
    ours = backend.probabilities(texts)
    for i, text in enumerate(texts):
        theirs = clf.classify(text)
        for label in LABELS:
            assert ours[label][i] == pytest.approx(theirs[label], abs=1e-4), (text[:40], label)
