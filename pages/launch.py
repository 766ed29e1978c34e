"""Launch page: build a run config (policy, reward mix, PPO, generation, data, evaluation), check it, queue it."""

from __future__ import annotations

import streamlit as st

from app import forms, state
from app.safe_text import md, plain
from engine.api import errors_by_field, validate_config
from engine.config import CAUSAL_ONLY_METHODS, ConfigError, RunConfig, causal_only_message
from engine.policy import browser_policy
from engine.presets import PRESETS, preset

lab = state.lab()
forms.init_state()
policy = browser_policy()  # the operator's allow-list: every config on this page comes from a browser


@st.cache_data(show_spinner=False, max_entries=64)
def data_problems(config_yaml: str, policy_key: str) -> dict[str, list[str]]:
    """Field, policy and data problems of a config (reading the prompts takes a moment, so it is cached; the
    policy's key makes a change of the operator's settings a new entry)."""
    return validate_config(config_yaml, check_data=True, policy=browser_policy())


def refused_note(cfg: RunConfig) -> str:
    """A line for the load note when the operator's policy refuses some of a loaded config's settings."""
    refused = policy.config_problems(cfg)
    if not refused:
        return ""
    return ("\n\nThis lab does not allow some of its settings (marked below; Start stays off until they change):\n"
            + "\n".join(f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in refused))


def load_upload() -> None:
    upload = st.session_state.get("upload-config")
    if upload is None:
        return
    try:
        cfg = RunConfig.from_bytes(upload.getvalue())
        forms.load_into_state(cfg)
        note = refused_note(cfg)
        st.session_state["launch-note"] = ("warning" if note else "success", f"Loaded {md(upload.name)}.{note}")
    except ConfigError as exc:
        st.session_state["launch-note"] = ("error", f"{md(upload.name)} is not a valid run config:\n\n"
                                           + "\n".join(f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))


def clone_run() -> None:
    run_id = st.session_state.get("clone-run")
    if not run_id:
        return
    try:
        cfg = lab.run_config(run_id)
        forms.load_into_state(cfg)
        note = refused_note(cfg)
        st.session_state["launch-note"] = ("warning" if note else "success", f"Loaded the config of run {run_id}.{note}")
    except ConfigError as exc:  # e.g. a run saved by an older version with a field that is gone
        st.session_state["launch-note"] = ("error", f"Run {run_id}'s config no longer loads:\n\n"
                                           + "\n".join(f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))


def reset_form() -> None:
    forms.load_into_state(RunConfig())
    st.session_state["launch-note"] = ("success", "Back to the defaults.")


def load_preset() -> None:
    name = st.session_state.get("preset")
    if name:
        forms.load_into_state(preset(name))
        st.session_state["launch-note"] = ("success", f"Loaded the preset {name!r}.")


def start() -> None:
    cfg, problems = forms.state_to_config(st.session_state)
    errors = errors_by_field(problems) if cfg is None else data_problems(cfg.to_yaml(), policy.key)
    if errors:
        st.session_state["launch-note"] = ("error", "Not started: fix the problems marked below.")
        return
    try:
        run_id = lab.start_run(cfg, policy=policy)
    except ConfigError as exc:
        st.session_state["launch-note"] = ("error", "Not started:\n\n" + "\n".join(
            f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))
        return
    st.session_state["run_id"] = run_id
    st.session_state["launched"] = run_id


if (launched := st.session_state.pop("launched", None)) is not None:
    st.switch_page(state.page_path("live"), query_params={"run": launched})

st.title("Launch a run")
queue, current = lab.queue(), ", ".join(lab.running())
if current or queue:
    st.info(f"Running: **{current or '—'}** · waiting: {', '.join(queue) or 'none'}. A new run waits its turn.",
            icon=":material/queue:")
if (note := st.session_state.pop("launch-note", None)) is not None:
    getattr(st, note[0])(note[1])

with st.expander("Load, clone or save a config"):
    c1, c2, c3 = st.columns(3)
    with c1:
        st.file_uploader("Load a YAML config", type=["yaml", "yml"], key="upload-config", on_change=load_upload)
    with c2:
        runs = lab.list_runs()
        st.selectbox("Clone a past run's config", [r.id for r in runs], key="clone-run", index=None,
                     format_func=lambda i: next((plain(f"{r.name} · {r.id}") for r in runs if r.id == i), i),
                     placeholder="choose a run")
        st.button("Use its config", key="clone-button", on_click=clone_run,
                  disabled=not st.session_state.get("clone-run"))
    with c3:
        cfg_now, _ = forms.state_to_config(st.session_state)
        st.download_button("Download this config (YAML)", cfg_now.to_yaml() if cfg_now else "",
                           file_name=f"{cfg_now.name if cfg_now else 'config'}.yaml", mime="application/x-yaml",
                           key="download-config", disabled=cfg_now is None)
        st.button("Reset to the defaults", key="reset-config", on_click=reset_form)
        st.selectbox("Start from a preset", list(PRESETS), key="preset", index=None, on_change=load_preset,
                     placeholder="default, seed-article, tour",
                     help="default: the run README measures (about 25 min on 2 CPU cores); seed-article: the seed "
                          "article's values; tour: a 2-minute run on the tiny built-in model")

cfg, problems = forms.state_to_config(st.session_state)
errors = errors_by_field(problems) if cfg is None else data_problems(cfg.to_yaml(), policy.key)

c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    st.text_input("Run name", key=forms.key_of("name"))
    forms.show_errors(errors, "name")
with c2:
    forms.section("Run", errors, columns=1)
with c3:
    st.selectbox("Method", forms.CHOICES["method"], key=forms.key_of("method"),
                 help="ppo: the seed's PPO with a value head (causal and seq2seq). The others use TRL trainers "
                      "(causal policies only): dpo on human pairs, dpo_ai on pairs the reward mix labels, "
                      "reward_model trains a classifier (then, optionally, PPO with it), rloo / grpo are online "
                      "RL without a value head.")
    forms.show_errors(errors, "method")
    method = st.session_state.get(forms.key_of("method"), "ppo")
    # model.architecture's error also shows in the expander below (opened then); say it here, by the method, too.
    arch_errors = errors.get("model.architecture", [])
    if method in CAUSAL_ONLY_METHODS and causal_only_message(method) in arch_errors:
        st.error(f"{causal_only_message(method)}. The Policy below is seq2seq.", icon="⚠️")
    elif method in CAUSAL_ONLY_METHODS:
        st.caption("Causal (decoder-only) policies only: TRL's trainer for this method has no seq2seq support.")
then_ppo = method == "reward_model" and bool(st.session_state.get(forms.key_of("reward_model.then_ppo")))

st.subheader("Policy")
forms.model_inputs(errors)
detail_errors = any(p in errors for p, _ in forms.plain_fields(*forms.SECTIONS["Model details"]))
with st.expander("Architecture, precision, device", expanded=detail_errors):
    forms.section("Model details", errors, columns=3)
with st.expander("LoRA adapters"):
    forms.section("LoRA", errors)
    st.text_input("target modules (comma-separated; empty: PEFT's default)", key=forms.key_of("model.lora.target_modules"))

st.subheader("Reward")
st.caption("The reward is the weighted sum of these backends' scores; each one's raw score is logged too.")
if method == "reward_model":
    st.caption("A reward model learns from the human preference pairs, not from this mix: the mix is used only by "
               "the PPO run of then_ppo, and only with keep_rewards (otherwise the trained model alone is its reward).")
forms.reward_rows(errors)

for title in forms.METHOD_SECTIONS.get(method, ("PPO",)):
    st.subheader(title)
    if title == "Reward model":
        st.caption("then_ppo chains RLHF's two stages: when this reward model completes, a PPO run named "
                   "“<run name>-ppo” is queued first in line, rewarded by the trained model, with the Policy, "
                   "Reward, PPO, Generation, Data and Evaluation sections of this form.")
    forms.section(title, errors)
if then_ppo:
    st.subheader("PPO · after the reward model")
    forms.section("PPO", errors)
st.subheader("Generation")
forms.section("Generation", errors, columns=3)
st.subheader("Data")
forms.data_inputs(errors)
st.subheader("Evaluation")
st.caption("Toxicity of responses to the hold-out prompts, before and after training, by this evaluator.")
with st.container(border=True, key="evaluator"):
    forms.backend_inputs("cfg-evaluator-", "evaluation.evaluator", errors, forms.EVALUATOR_KINDS, weight=False)
forms.section("Evaluation", errors)
st.subheader("Checkpoints")
st.caption("A stopped run (failed, cancelled, interrupted) resumes from its newest checkpoint; at most every_steps "
           "steps are redone. `python -m engine resume RUN` from the command line.")
forms.section("Checkpoints", errors)

st.divider()
other = forms.unplaced_errors(errors, forms.placed_fields(st.session_state))
for field, messages in other.items():
    for message in messages:
        st.error(f"**{md(field)}**: {md(message, limit=1000)}")
n_problems = sum(len(v) for v in errors.values())
if n_problems:
    st.warning(f"{n_problems} problem(s) to fix before the run can start.", icon=":material/error:")
st.button("Start", type="primary", key="start-run", on_click=start, disabled=bool(n_problems),
          icon=":material/play_arrow:")
