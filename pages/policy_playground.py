"""Policy playground: k samples of a prompt from a run's base model and from its trained policy, side by side, each
scored by the run's reward backends and its evaluator. A worker process generates (engine.playground); this page
only queues the request and reads its progress and result."""

from __future__ import annotations

import math
import statistics

import streamlit as st

from app import auth, results, state
from app.safe_text import md, plain
from app.tables import fmt
from engine.config import ConfigError
from engine.data import format_prompt
from engine.playground import MAX_K, MAX_NEW_TOKENS
from engine.policy import browser_policy

lab = state.lab()
st.title("Policy playground")
st.caption("Pick a run and a prompt: a worker process samples k responses from the run's **base model** and from its "
           "**trained policy** with the same seed (so the two sides differ by the weights only), then scores each "
           "with the run's reward backends and its evaluator. Nothing is generated in this web server.")

runs = lab.policy_runs()
if not runs:
    st.info("No run has a saved policy yet: a policy run (PPO, DPO, RLOO, GRPO) offers its checkpoints here once "
            "it has saved one, and its final policy once it completes.")
    st.stop()
ids = [r.id for r in runs]
wanted = st.query_params.get("run") or st.session_state.get("run_id")
if st.session_state.get("pp-run") not in ids:
    st.session_state["pp-run"] = wanted if wanted in ids else ids[0]
by_id = {r.id: r for r in runs}
left, right = st.columns([3, 2])
with left:
    run_id = st.selectbox("Run", ids, key="pp-run",
                          format_func=lambda i: plain(f"{by_id[i].name} · {i} · {by_id[i].status}"))
record = by_id[run_id]
steps = lab.policy_checkpoints(run_id)
with right:
    def _step_label(step: int) -> str:
        final = record.status == "completed" and step == steps[0]
        return f"final policy (step {step})" if final else f"checkpoint after step {step}"

    step = st.selectbox("Trained policy", steps, key=f"pp-step-{run_id}", format_func=_step_label)

try:
    template = lab.run_config(run_id).data.template
except Exception:  # noqa: BLE001 - a config from an older version: typed prompts go as they are
    template = None
holdout = lab.holdout_prompts(run_id)
sources = ["Type a prompt"] + (["A hold-out prompt"] if holdout else [])
if st.session_state.get("pp-source") not in sources:  # a run without hold-out prompts: back to typing
    st.session_state.pop("pp-source", None)
source = st.radio("Prompt", sources, horizontal=True, key="pp-source", label_visibility="collapsed")
if source == "A hold-out prompt":
    picked = st.selectbox("Hold-out prompt (as the run evaluated it)", range(len(holdout)), key=f"pp-holdout-{run_id}",
                          format_func=lambda i: plain(" ".join(results.strip_template(holdout[i], template).split()),
                                                      limit=160))
    prompt = holdout[picked]
    st.text(results.strip_template(prompt, template))
else:
    typed = st.text_area("Prompt", key="pp-prompt", height=110,
                         placeholder="Human: Can you help me write a reply to my neighbour?\n\nAssistant:")
    wrap = bool(template) and st.checkbox("Put it into the run's prompt template (as its training prompts were)",
                                          value=True, key="pp-wrap", help=f"Template: {template!r}")
    prompt = format_prompt(typed, template) if wrap and typed.strip() else typed

with st.form("pp-settings", border=False):
    c = st.columns(6)
    k = c[0].number_input("k (samples a side)", min_value=1, max_value=MAX_K, value=4, step=1, key="pp-k")
    temperature = c[1].number_input("temperature", min_value=0.05, max_value=10.0, value=1.0, step=0.1,
                                    key="pp-temperature")
    top_p = c[2].number_input("top_p", min_value=0.01, max_value=1.0, value=1.0, step=0.05, key="pp-top-p")
    top_k = c[3].number_input("top_k (0: off)", min_value=0, max_value=100_000, value=0, step=1, key="pp-top-k")
    max_new = c[4].number_input("max_new_tokens", min_value=1, max_value=MAX_NEW_TOKENS, value=24, step=1,
                                key="pp-max-new")
    seed = c[5].number_input("seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="pp-seed")
    go = st.form_submit_button("Generate", type="primary", icon=":material/play_arrow:")

if go:
    settings = {"k": int(k), "temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k),
                "max_new_tokens": int(max_new), "seed": int(seed)}
    try:
        st.session_state["pp-gen"] = lab.request_generation(run_id, prompt, settings, checkpoint_step=step,
                                                            user=auth.user(), policy=browser_policy())
        st.session_state.pop("pp-errors", None)
    except ConfigError as exc:
        st.session_state["pp-errors"] = [str(e) for e in exc.errors]
for message in st.session_state.get("pp-errors") or []:
    st.error(md(message, limit=500), icon=":material/error:")

STATUS_WORDS = {"queued": "Queued", "loading": "Loading the models", "generating": "Generating",
                "scoring": "Scoring", "done": "Done", "failed": "Failed"}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _side(title: str, rows: list[dict], backends: list[str], evaluator: str, key: str, trained: bool) -> None:
    with st.container(border=True, key=key):
        st.subheader(title)
        cards = [(f"{b}", _mean([r["rewards"].get(b, math.nan) for r in rows])) for b in backends]
        cards.append((f"toxicity ({evaluator})", _mean([r["toxicity"] for r in rows])))
        cards.append(("length (tokens)", _mean([r["length"] for r in rows])))
        if trained:
            cards.append(("KL to base", _mean([r["kl"] for r in rows])))
        cols = st.columns(min(len(cards), 4))
        for i, (label, value) in enumerate(cards):
            cols[i % len(cols)].metric(md(f"mean {label}"), fmt(value, ".3f"))
        errors = rows[0].get("errors") if rows else {}
        for name, err in (errors or {}).items():
            st.warning(md(f"{name} could not score: {err}", limit=400))
        for i, r in enumerate(rows):
            scores = " · ".join([f"{md(b)} {fmt(r['rewards'].get(b), '.3f')}" for b in backends]
                                + [f"toxicity {fmt(r['toxicity'], '.3f')}", f"{r['length']} tokens"]
                                + ([f"KL {fmt(r['kl'], '.2f')}"] if trained else []))
            with st.container(border=True, key=f"{key}-{i}"):
                st.caption(f"**#{i + 1}** · {scores}")
                st.text(r["response"] or "(empty response)")


def show_result(gen_id: str) -> None:
    g = lab.generation(gen_id)
    if not g.finished:
        st.progress(g.done / g.total if g.total else 0.0,
                    text=f"**{STATUS_WORDS.get(g.status, g.status)}** {g.done}/{g.total} samples · "
                         f"{md(g.message or '')}")
        if g.status == "queued":
            st.caption(md(f"Waiting for a process: {lab.generation_waiting_for()}."))
        return
    if g.status == "failed":
        st.error(f"**The generation failed.** {md(g.error or 'no reason recorded', limit=1000)}",
                 icon=":material/error:")
        return
    res = g.result or {}
    st.success(f"Done: {len(res.get('base', []))} samples a side from run {md(g.run_id)}, trained policy after step "
               f"{g.checkpoint_step}; temperature {g.settings['temperature']:g}, top_p {g.settings['top_p']:g}, "
               f"top_k {g.settings['top_k']}, max_new_tokens {g.settings['max_new_tokens']}, seed {g.settings['seed']}.",
               icon=":material/check_circle:")
    with st.expander("The prompt as the models saw it"):
        st.text(res.get("prompt_used", g.prompt))
    base_col, trained_col = st.columns(2)
    backends, evaluator = res.get("backends", []), res.get("evaluator", "evaluator")
    with base_col:
        _side("Base model", res.get("base", []), backends, evaluator, "pp-base", trained=False)
    with trained_col:
        _side(f"Trained policy · step {g.checkpoint_step}", res.get("trained", []), backends, evaluator, "pp-trained",
              trained=True)


@st.fragment(run_every=1.0)
def _follow(gen_id: str) -> None:
    """Redraws the progress every second; the whole page reruns once the request has finished."""
    if lab.generation(gen_id).finished:
        st.rerun()
    show_result(gen_id)


gen_id = st.session_state.get("pp-gen")
if gen_id:
    try:
        finished = lab.generation(gen_id).finished
    except KeyError:  # its run was deleted
        st.session_state.pop("pp-gen")
        st.stop()
    if finished:
        show_result(gen_id)
    else:
        _follow(gen_id)
