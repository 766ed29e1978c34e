"""Launch page: pick a preset, set the essentials (the rest in expanders), see problems, warnings and an estimated
duration beside a Start button at the top, queue the run. On an empty store a welcome panel queues the tour or
the measured default in one click."""

from __future__ import annotations

import streamlit as st

from app import auth, forms, launch_advice, state
from app.form_labels import label_and_help
from app.safe_text import md, plain
from engine.api import errors_by_field, validate_config
from engine.config import CAUSAL_ONLY_METHODS, ConfigError, RunConfig, causal_only_message
from engine.policy import browser_policy
from engine.presets import preset
from engine.ray_cluster import RAY_ADDRESS_ENV_VAR, RayUnavailable

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
        st.session_state["preset"] = "custom"
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
        st.session_state["preset"] = "custom"
        note = refused_note(cfg)
        st.session_state["launch-note"] = ("warning" if note else "success", f"Loaded the config of run {run_id}.{note}")
    except ConfigError as exc:  # e.g. a run saved by an older version with a field that is gone
        st.session_state["launch-note"] = ("error", f"Run {run_id}'s config no longer loads:\n\n"
                                           + "\n".join(f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))


def reset_form() -> None:
    forms.load_into_state(RunConfig())
    st.session_state["preset"] = "default"
    st.session_state["launch-note"] = ("success", "Back to the measured default.")


PRESET_LABELS = {"default": "Measured default (~12 min on 2 CPU cores)", "tour": "Quick tour (~2 min, tiny model)",
                 "seed-article": "Seed article's values", "custom": "Custom"}
# The method's own steps and learning rate are essentials; the rest of its section goes in an expander.
ESSENTIALS = {"ppo": ("ppo.max_ppo_steps", "ppo.learning_rate"), "dpo": ("dpo.max_steps", "dpo.learning_rate"),
              "dpo_ai": ("dpo.max_steps", "dpo.learning_rate"),
              "reward_model": ("reward_model.max_steps", "reward_model.learning_rate"),
              "rloo": ("online.max_steps", "online.learning_rate"), "grpo": ("online.max_steps", "online.learning_rate")}
# Where each field is drawn: the anchor a problem links to (longest prefix first).
ANCHORS = (("model.name_or_path", "essentials"), ("name", "essentials"), ("method", "essentials"),
           ("reward.", "reward"), ("model.lora", "sec-lora"), ("model.", "sec-model"), ("ppo.", "sec-ppo"),
           ("dpo.", "sec-method"), ("online.", "sec-method"), ("reward_model.", "sec-method"),
           ("ai_preferences.", "sec-method"), ("generation.", "sec-generation"), ("data.", "sec-data"),
           ("evaluation.", "sec-evaluation"), ("checkpoint.", "sec-checkpoints"), ("resources", "sec-resources"),
           (RAY_ADDRESS_ENV_VAR, "cluster"))


def anchor_of(field: str, essentials: tuple[str, ...]) -> str:
    if field in essentials:
        return "essentials"
    return next((a for prefix, a in ANCHORS if field == prefix or field.startswith(prefix)), "sec-run")


def load_preset() -> None:
    name = st.session_state.get("preset")
    if name and name != "custom":
        forms.load_into_state(preset(name))
        st.session_state["launch-note"] = ("success", f"Loaded the preset “{PRESET_LABELS[name]}”.")


def queue_preset(name: str) -> None:
    """Callback of the welcome panel: queue a preset's run as it is and open its Live page."""
    try:
        st.session_state["launched"] = st.session_state["run_id"] = lab.start_run(preset(name), policy=policy)
    except ConfigError as exc:  # e.g. the operator's policy refuses the built-in model
        st.session_state["launch-note"] = ("error", "Not started:\n\n" + "\n".join(
            f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))
    except RayUnavailable as exc:
        st.session_state["launch-note"] = ("error", f"Not started (nothing was queued): {md(str(exc), limit=1000)}")


def start() -> None:
    cfg, problems = forms.state_to_config(st.session_state)
    errors = errors_by_field(problems) if cfg is None else data_problems(cfg.to_yaml(), policy.key)
    if errors:
        st.session_state["launch-note"] = ("error", "Not started: fix the problems listed above the form.")
        return
    try:
        run_id = lab.start_run(cfg, policy=policy, user=auth.user())
    except ConfigError as exc:
        st.session_state["launch-note"] = ("error", "Not started:\n\n" + "\n".join(
            f"- **{md(e.field)}**: {md(e.message, limit=1000)}" for e in exc.errors))
        return
    except RayUnavailable as exc:  # the cluster went away since the page was drawn: nothing was queued
        st.session_state["launch-note"] = ("error", f"Not started (nothing was queued): {md(str(exc), limit=1000)}")
        return
    st.session_state["run_id"] = run_id
    st.session_state["launched"] = run_id


def anchor(name: str) -> None:
    """An invisible target for the problems' links (expanders have no id of their own)."""
    st.markdown(f'<span id="{name}"></span>', unsafe_allow_html=True)  # a constant name, never user text


def device_of(cfg: RunConfig) -> str:
    """Where the run will train: the configured device, else the device a live worker reported."""
    if cfg.model.device != "auto":
        return cfg.model.device
    devices = [w.device or "cpu" for w in lab.store.live_workers()]
    return "cpu" if not devices or all(d.startswith("cpu") for d in devices) else devices[0]


def expander(title: str, name: str, errors: dict[str, list[str]], paths: list[str]) -> st.delta_generator.DeltaGenerator:
    anchor(name)
    return st.expander(title, expanded=any(p in errors for p in paths))


if (launched := st.session_state.pop("launched", None)) is not None:
    st.switch_page(state.page_path("live"), query_params={"run": launched})

st.session_state.setdefault("preset", "default")
st.title("Launch a run")
queue, current = lab.queue(), ", ".join(lab.running())
if current or queue:
    st.info(f"Running: **{current or '—'}** · waiting: {', '.join(queue) or 'none'}. A new run waits its turn.",
            icon="⏳")
if (note := st.session_state.pop("launch-note", None)) is not None:
    getattr(st, note[0])(note[1])

runs = lab.list_runs()
if not runs:
    with st.container(border=True, key="welcome"):
        st.markdown("#### Welcome — nothing has run here yet\nPick one to see the lab work; each starts at once and "
                    "opens its Live page. Or set up your own run below.")
        w1, w2 = st.columns(2)
        with w1:
            st.button("Take the 2-minute tour", key="welcome-tour", type="primary", on_click=queue_preset,
                      args=("tour",), icon="▶️")
            st.caption("PPO on the tiny built-in model, 8 short steps and a 50-prompt hold-out: every page fills in. "
                       "The tiny model is built on its first use (a few minutes on a busy machine).")
        with w2:
            st.button("Start the measured default run", key="welcome-default", on_click=queue_preset,
                      args=("default",), icon="▶️")
            st.caption("SmolLM2-135M, 28 PPO steps, 200 test prompts: mean toxicity −59 % in about 12 minutes on "
                       "2 idle CPU cores (the README's table).")

st.radio("Start from", list(PRESET_LABELS), key="preset", horizontal=True, on_change=load_preset,
         format_func=PRESET_LABELS.get,
         help="Loads a preset's values into the form (Custom keeps what is there). The measured default is the run "
              "the README measures; the seed article's values barely move SmolLM2 (kept to reproduce it).")

def cluster_panel() -> str | None:
    """With the Ray executor: the cluster's free resources and nodes (read at most every 15 s); returns why the
    cluster cannot be reached, or None."""
    if not lab.executor.is_ray:
        return None
    address = lab.executor.address
    anchor("cluster")
    with st.container(border=True, key="cluster"):
        try:
            cluster = lab.cluster()
        except RayUnavailable as exc:
            st.error(f"**Runs go to the Ray cluster at `{md(address)}`, which cannot be reached.** "
                     f"{md(str(exc), limit=1000)}. Nothing can be queued until it answers.", icon="🛰️")
            return str(exc)
        st.markdown(f"**Runs go to the Ray cluster at `{md(address)}`** — {md(cluster.describe())}. A run must fit "
                    "on one node; it waits in the queue until the cluster has its resources free.")
        st.dataframe([{"node": n.host, "alive": n.alive, "CPUs": n.cpus, "GPUs": n.gpus, "memory (GiB)": n.memory_gb}
                      for n in cluster.nodes], hide_index=True, key="cluster-nodes")
    return None


cfg, problems = forms.state_to_config(st.session_state)
errors = errors_by_field(problems) if cfg is None else data_problems(cfg.to_yaml(), policy.key)
if cfg is not None and not errors and cfg.model.init_from:  # continue training: the source checked in the store
    errors = lab.init_from_problems(cfg)
errors = dict(errors)
cluster_problem = cluster_panel()
if cluster_problem is not None:
    errors.setdefault(RAY_ADDRESS_ENV_VAR, []).append(cluster_problem)
elif cfg is not None and not any(field.startswith("resources") for field in errors):
    # more GPUs / CPUs / memory than a Ray node (or, with local workers, this machine) has: refused by field
    for field, messages in errors_by_field(lab.resource_problems(cfg)).items():
        errors.setdefault(field, []).extend(messages)
method = st.session_state.get(forms.key_of("method"), "ppo")
essentials = ESSENTIALS.get(method, ())
advice = launch_advice.warnings(cfg, on_gpu=device_of(cfg) != "cpu") if cfg is not None and not errors else []
n_problems = sum(len(v) for v in errors.values())

# Start, the problems and the estimate stay at the top: Streamlit has no sticky footer.
with st.container(border=True, key="start-panel"):
    c1, c2 = st.columns([1, 4])
    with c1:
        st.button("Start", type="primary", key="start-run", on_click=start, disabled=bool(n_problems), icon="▶️",
                  width="stretch")
    with c2:
        if n_problems:
            lines = []
            for field, messages in errors.items():
                label = label_and_help(field, None)[0] if field in forms.placed_fields(st.session_state) else field
                for message in messages:
                    lines.append(f"- [{md(label)}](#{anchor_of(field, essentials)}) (`{md(field)}`): "
                                 f"{md(message, limit=1000)}")
            st.error(f"**{n_problems} problem{'s' if n_problems > 1 else ''} to fix before the run can start:**\n"
                     + "\n".join(lines), icon="⚠️")
        elif cfg is not None:
            st.caption(launch_advice.estimate_note(cfg, device_of(cfg)))
        for w in advice:
            st.warning(f"[{md(label_and_help(w.field, None)[0])}](#{anchor_of(w.field, essentials)}): "
                       f"{md(w.message)}", icon="💡")

st.subheader("Essentials", anchor="essentials")
c1, c2, c3 = st.columns([2, 1, 3])
with c1:
    st.text_input("Run name", key=forms.key_of("name"), help="Shown on every page; need not be unique.")
    forms.show_errors(errors, "name")
with c2:
    st.selectbox("Method", forms.CHOICES["method"], key=forms.key_of("method"),
                 help="ppo: PPO with a value head (causal and seq2seq policies). The others use TRL trainers "
                      "(causal policies only): dpo on human preference pairs, dpo_ai on pairs the reward mix labels, "
                      "reward_model trains a classifier (then, optionally, PPO with it), rloo / grpo are online "
                      "RL without a value head.")
    forms.show_errors(errors, "method")
    # model.architecture's error also shows in the expander below (opened then); say it here, by the method, too.
    arch_errors = errors.get("model.architecture", [])
    if method in CAUSAL_ONLY_METHODS and causal_only_message(method) in arch_errors:
        st.error(f"{causal_only_message(method)}. The Policy below is seq2seq.", icon="⚠️")
    elif method in CAUSAL_ONLY_METHODS:
        st.caption("Causal (decoder-only) policies only: TRL's trainer for this method has no seq2seq support.")
with c3:
    forms.model_inputs(errors)
then_ppo = method == "reward_model" and bool(st.session_state.get(forms.key_of("reward_model.then_ppo")))
if essentials:
    e1, e2, _ = st.columns([1, 1, 2])
    for col, path in zip((e1, e2), essentials, strict=True):
        with col:
            forms.field_widget(path, forms.field_type(path), errors)

anchor("reward")
st.markdown("**Reward** — the weighted sum of these backends' scores; each one's raw score is logged too.")
if method == "reward_model":
    st.caption("A reward model learns from the human preference pairs, not from this mix: the mix is used only by "
               "the PPO run of then_ppo, and only with keep_rewards (otherwise the trained model alone is its reward).")
forms.reward_rows(errors)

st.subheader("More settings")
for title in forms.METHOD_SECTIONS.get(method, ("PPO",)):
    prefix = forms.SECTIONS[title][0]
    paths = [p for p, _ in forms.plain_fields(*forms.SECTIONS[title])]
    with expander(f"{title} settings", "sec-ppo" if title == "PPO" else "sec-method", errors, paths):
        if title == "Reward model":
            st.caption("then_ppo chains RLHF's two stages: when this reward model completes, a PPO run named "
                       "“<run name>-ppo” is queued first in line, rewarded by the trained model, with the Policy, "
                       "Reward, PPO, Generation, Data and Evaluation sections of this form.")
        forms.section(title, errors, columns=3, exclude=essentials)
if then_ppo:
    paths = [p for p, _ in forms.plain_fields(*forms.SECTIONS["PPO"])]
    with expander("PPO settings · the run after the reward model", "sec-ppo", errors, paths):
        forms.section("PPO", errors, columns=3)
with expander("Generation", "sec-generation", errors, [p for p, _ in forms.plain_fields(*forms.SECTIONS["Generation"])]):
    forms.section("Generation", errors, columns=3)
data_paths = ["data.source", "data.template"] + [p for p, _ in forms.plain_fields(*forms.SECTIONS["Data"])]
with expander("Data: prompts and hold-out", "sec-data", errors, data_paths):
    forms.data_inputs(errors)
eval_paths = [p for p in errors if p.startswith("evaluation.")]
with expander("Evaluation: toxicity before and after", "sec-evaluation", errors, eval_paths):
    st.caption("Toxicity of responses to the hold-out prompts, before and after training, by this evaluator.")
    with st.container(border=True, key="evaluator"):
        forms.backend_inputs("cfg-evaluator-", "evaluation.evaluator", errors, forms.EVALUATOR_KINDS, weight=False)
    forms.section("Evaluation", errors, columns=3)
ckpt_paths = [p for p, _ in forms.plain_fields(*forms.SECTIONS["Checkpoints"])]
with expander("Checkpoints and resume", "sec-checkpoints", errors, ckpt_paths):
    st.caption("A stopped run (failed, cancelled, interrupted) resumes from its newest checkpoint; at most "
               "“checkpoint every” steps are redone. `python -m engine resume RUN` from the command line.")
    forms.section("Checkpoints", errors)
resource_paths = ["resources"] + [p for p, _ in forms.plain_fields(*forms.SECTIONS["Resources"])]
with expander("Resources: GPUs, CPUs, memory", "sec-resources", errors, resource_paths):
    st.caption(f"What the run reserves where it executes: {md(lab.executor.describe())}. A run asking for more "
               "than a single node (or this machine) has is refused before it is queued.")
    forms.section("Resources", errors, columns=3)
    forms.show_errors(errors, "resources")
detail_paths = [p for p, _ in forms.plain_fields(*forms.SECTIONS["Model details"])]
with expander("Architecture, precision, device", "sec-model", errors, detail_paths):
    forms.section("Model details", errors, columns=3)
lora_paths = ["model.lora.target_modules"] + [p for p, _ in forms.plain_fields(*forms.SECTIONS["LoRA"])]
with expander("LoRA adapters", "sec-lora", errors, lora_paths):
    forms.section("LoRA", errors)
    st.text_input("Target modules (comma-separated; empty: PEFT's default)",
                  key=forms.key_of("model.lora.target_modules"))
    forms.show_errors(errors, "model.lora.target_modules")
run_paths = [p for p, _ in forms.plain_fields(*forms.SECTIONS["Run"])]
with expander("Output folder", "sec-run", errors, run_paths):
    forms.section("Run", errors, columns=1)
other = forms.unplaced_errors(errors, forms.placed_fields(st.session_state))
for field, messages in other.items():
    for message in messages:
        st.error(f"**{md(field)}**: {md(message, limit=1000)}")

with st.expander("Load, clone or save a config"):
    c1, c2, c3 = st.columns(3)
    with c1:
        st.file_uploader("Load a YAML config", type=["yaml", "yml"], key="upload-config", on_change=load_upload)
    with c2:
        st.selectbox("Clone a past run's config", [r.id for r in runs], key="clone-run", index=None,
                     format_func=lambda i: next((plain(f"{r.name} · {r.id}") for r in runs if r.id == i), i),
                     placeholder="choose a run")
        st.button("Use its config", key="clone-button", on_click=clone_run,
                  disabled=not st.session_state.get("clone-run"))
    with c3:
        cfg_now, _ = forms.state_to_config(st.session_state)
        # made on click (a callable): an eager file is dropped when the page changes and its URL then 404s
        config_yaml = cfg_now.to_yaml() if cfg_now else ""
        st.download_button("Download this config (YAML)", lambda: config_yaml,
                           file_name=f"{cfg_now.name if cfg_now else 'config'}.yaml", mime="application/x-yaml",
                           key="download-config", disabled=cfg_now is None, on_click="ignore")
        st.button("Reset to the measured default", key="reset-config", on_click=reset_form)
