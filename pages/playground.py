"""Reward playground: score any text with each configured reward backend (and the evaluator)."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from app import forms, state
from app.safe_text import md
from engine.config import RewardBackendSettings
from engine.policy import browser_policy

lab = state.lab()
policy = browser_policy()  # backends the operator does not allow are never built, so they call nothing
st.title("Reward playground")
st.caption("One text per line. Each backend's reward (what PPO maximises) and, for classifiers, its toxicity "
           "probability (what the evaluation reports). Backends come from the Launch page's form, plus the two "
           "offline classifiers.")

configured: dict[str, RewardBackendSettings] = {}
form_cfg, _ = forms.state_to_config(st.session_state)
candidates = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="jigsaw")]
if form_cfg is not None:
    candidates = form_cfg.reward.backends + [form_cfg.evaluation.evaluator] + candidates
for b in candidates:
    label = b.display_name if b.kind == b.display_name else f"{b.display_name} ({b.kind})"
    if b.kind == "hf_classifier":
        label += f" · {b.options.get('model', '?')}"
    configured.setdefault(label, b)

names = st.multiselect("Backends", list(configured), default=list(configured), key="pg-backends")
text = st.text_area("Texts", "I like you.\nYou are terrible and i hate you.", key="pg-text", height=120)
prompt = st.text_input("Prompt (read by overlap and topic, and by backends set to score prompt + response)", "",
                       key="pg-prompt")
texts = [t for t in text.splitlines() if t.strip()]
if not texts or not names:
    st.info("Type a text and pick at least one backend.")
    st.stop()

rows, errors = [], {}
with st.spinner("Scoring (the first call of a backend loads its model)…"):
    for t in texts:
        row: dict[str, object] = {"text": t}
        for r in lab.score_text([configured[n] for n in names], t, prompt=prompt, policy=policy):
            if r["error"]:
                errors[r["backend"]] = r["error"]
            row[f"{r['backend']} reward"] = r["reward"]
            if not math.isnan(r["toxicity"]):
                row[f"{r['backend']} toxicity"] = r["toxicity"]
        rows.append(row)

scores = pd.DataFrame(rows)
st.dataframe(scores, key="pg-scores", hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in scores.columns if c != "text"})
for backend, message in errors.items():
    st.error(f"{md(backend)}: {md(message, limit=1000)}")
