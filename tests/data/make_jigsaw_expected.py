"""Regenerates jigsaw_expected.json: the real Keras model's outputs that the PyTorch port must match.

Runs only where TensorFlow and `toxic-comment-classifier==0.3.0` are importable — not in the project's venv.
How the committed file was made:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu h5py
    /tmp/tfvenv/bin/pip install --no-deps toxic-comment-classifier==0.3.0
    /tmp/tfvenv/bin/python tests/data/make_jigsaw_expected.py

It runs the package's own `ToxicCommentClassifier` (Keras) on the fixed SENTENCES below and stores, per
sentence, the word ids its Keras tokenizer produced and the six label probabilities.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

OUT = Path(__file__).with_name("jigsaw_expected.json")

# Over 100 words, toxic at the start and bland after: the package keeps the *last* 100 ids, so this catches a
# port that truncates at the wrong end.
_LONG = (
    "You are a worthless idiot and everyone here hates you, shut up. "
    + "The committee met on Tuesday to review the budget for the new library building and the park. " * 7
    + "Thanks for reading."
)

SENTENCES = [
    "I like you.",
    "You are terrible and i hate you.",
    "People like you should be exterminated.",
    "",
    "   ",
    "What a wonderful day!!! :) Thanks, friend...",
    "You're a STUPID idiot, go away!!!",
    "Qwxzpt blorfs glimmered zzyzx",
    "Line one\nline two\tthree -- with (brackets) and [more]",
    "Café déjà vu — naïve résumé 😀",
    "Visit http://example.com/page?id=42 now, 100% free",
    "I'm sorry, but I can't help with that. Is there anything else I can do for you?",
    "shut up you moron",
    _LONG,
]


def main() -> None:
    import tensorflow as tf
    from toxic_classifier.model import LIST_CLASSES, ToxicCommentClassifier

    clf = ToxicCommentClassifier()
    cases = []
    for text in SENTENCES:
        probs = clf.classify(text)
        cases.append(
            {
                "text": text,
                "sequence": [int(i) for i in clf.tokenizer.texts_to_sequences([text])[0]],
                "probs": {label: float(probs[label]) for label in LIST_CLASSES},
            }
        )
    payload = {
        "note": (
            "Outputs of toxic-comment-classifier's own Keras model (ToxicCommentClassifier.classify), made by "
            "tests/data/make_jigsaw_expected.py in a separate venv with TensorFlow; 'sequence' is the Keras "
            "tokenizer's texts_to_sequences output before padding."
        ),
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "keras": version("keras"),
            "toxic-comment-classifier": version("toxic-comment-classifier"),
        },
        "labels": list(LIST_CLASSES),
        "cases": cases,
    }
    # One case per line keeps the file short and its diffs readable.
    text = json.dumps({**payload, "cases": []}, indent=1, ensure_ascii=False)
    lines = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)
    text = text.replace('"cases": []', '"cases": [\n  ' + lines + "\n ]")
    OUT.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
