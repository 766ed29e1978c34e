"""The run-config form of the launch page: RunConfig ⇄ widget state, and the widgets themselves.

Responsible for: mapping every RunConfig field to one widget key (`config_to_state`, `state_to_config`
are pure and tested without a browser), drawing those widgets with each field's validation errors
right under it, and the reward-backend rows (add / remove; kind, weight, options).

Not responsible for: validating (engine.config / engine.api) or starting runs (the page, via the API).
Widget values live in st.session_state under the keys below, so loading a YAML file or cloning a run
is just writing a state dict before the widgets are drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import re
from collections.abc import Mapping
from typing import Any, get_type_hints

import streamlit as st
import yaml

from app.form_labels import label_and_help
from app.safe_text import md
from engine.config import (
    BUILTIN_MODELS,
    DPO_LOSS_TYPES,
    GRPO_LOSS_TYPES,
    METHODS,
    REWARD_KINDS,
    ConfigError,
    FieldError,
    RewardBackendSettings,
    RunConfig,
)

CUSTOM_MODEL = "Hugging Face id or local path"
DATA_CHOICES = ("auto", "builtin", "hub", "file")
EVALUATOR_KINDS = ("profanity", "jigsaw", "hf_classifier")  # those that give a toxicity probability
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "model.architecture": ("auto", "causal", "seq2seq"),
    "model.dtype": ("float32", "bfloat16", "float16", "auto"),
    "model.mixed_precision": ("none", "bf16"),
    "model.device": ("auto", "cpu", "cuda", "mps"),
    "model.chat_template": ("auto", "on", "off"),
    "reward.normalize": ("none", "zscore", "minmax"),
    "dpo.loss_type": DPO_LOSS_TYPES,
    "online.grpo_loss_type": GRPO_LOSS_TYPES,
    "online.scale_rewards": ("group", "batch", "none"),
}
FLOAT_FORMAT = {"ppo.learning_rate": "%.3e", "dpo.learning_rate": "%.3e", "reward_model.learning_rate": "%.3e",
                "online.learning_rate": "%.3e"}
FLOAT_STEP = {k: 1e-6 for k in FLOAT_FORMAT}
# Titles of RunConfig's sections and the fields drawn by hand instead of by the generic widgets.
TITLES = {"model": "Model details", "model.lora": "LoRA", "ppo": "PPO", "generation": "Generation", "data": "Data",
          "evaluation": "Evaluation", "dpo": "DPO", "reward_model": "Reward model", "online": "RLOO / GRPO",
          "ai_preferences": "AI preferences", "checkpoint": "Checkpoints", "resources": "Resources",
          "distributed": "Several devices"}
HAND_DRAWN = {"model": ("name_or_path", "lora"), "model.lora": ("target_modules",), "data": ("source", "template"),
              "evaluation": ("evaluator",), "reward": ("backends", "normalize")}
# Which method sections the launch page shows for each method (PPO's are always valid defaults).
METHOD_SECTIONS = {"ppo": ("PPO",), "dpo": ("DPO",), "dpo_ai": ("AI preferences", "DPO"),
                   "reward_model": ("Reward model",), "rloo": ("RLOO / GRPO",), "grpo": ("RLOO / GRPO",)}


def _sections() -> dict[str, tuple[str, type, tuple[str, ...]]]:
    """title -> (dotted prefix, dataclass, hand-drawn fields) for every section of RunConfig, nested LoRA included.

    Built from the dataclasses, so a field added to the config gets a widget without a change here."""
    out: dict[str, tuple[str, type, tuple[str, ...]]] = {}

    def visit(prefix: str, cls: type) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp) and tp is not RewardBackendSettings:
                path = f"{prefix}{f.name}"
                if path != "reward":
                    out[TITLES.get(path, path)] = (path, tp, HAND_DRAWN.get(path, ()))
                visit(path + ".", tp)

    # RunConfig's own scalars, e.g. output_dir; parent_run is set by the engine (a chain's second run), not by hand
    out["Run"] = ("", RunConfig, ("name", "method", "parent_run"))
    visit("", RunConfig)
    return out


SECTIONS = _sections()
_row_ids = itertools.count(1)


def key_of(path: str) -> str:
    """The widget key of a config field: "ppo.learning_rate" → "cfg-ppo-learning_rate"."""
    return "cfg-" + path.replace(".", "-")


def row_key(row: int, name: str) -> str:
    """The widget key of a reward-backend row's input."""
    return f"rw-{row}-{name}"


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's trailing comment in engine/config.py (the reason for its default), used as the widget's help."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def plain_fields(prefix: str, cls: type, skip: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(dotted path, type) of a section's scalar fields that get a generic widget."""
    hints = get_type_hints(cls)
    return [(f"{prefix}.{f.name}" if prefix else f.name, hints[f.name]) for f in dataclasses.fields(cls)
            if f.name not in skip and not dataclasses.is_dataclass(hints[f.name])]


def field_type(path: str) -> Any:
    """The declared type of a dotted config field, e.g. field_type("ppo.learning_rate") is float."""
    cls: Any = RunConfig
    *parents, last = path.split(".")
    for part in parents:
        cls = get_type_hints(cls)[part]
    return get_type_hints(cls)[last]


def _optional(tp: Any) -> bool:
    return type(None) in getattr(tp, "__args__", ())


def _base(tp: Any) -> Any:
    """X of Optional[X] (or tp itself)."""
    return next((a for a in getattr(tp, "__args__", (tp,)) if a is not type(None)), tp)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


# ---- config ⇄ state (pure) -------------------------------------------------------------------------


def backend_to_state(b: RewardBackendSettings, prefix: str) -> dict[str, Any]:
    """Widget values of one backend; hf_classifier's model and label get their own inputs."""
    options = dict(b.options)
    model = str(options.pop("model", "")) if b.kind == "hf_classifier" else ""
    label = str(options.pop("label", "")) if b.kind == "hf_classifier" else ""
    return {f"{prefix}kind": b.kind, f"{prefix}weight": float(b.weight), f"{prefix}name": b.name or "",
            f"{prefix}score_on": b.score_on, f"{prefix}model": model, f"{prefix}label": label,
            f"{prefix}options": yaml.safe_dump(options, sort_keys=False).strip() if options else ""}


def state_to_backend(state: Mapping[str, Any], prefix: str, field: str) -> tuple[dict[str, Any], list[FieldError]]:
    """One backend as a config dict from its widget values, and problems of its options text."""
    errors: list[FieldError] = []
    text = (state.get(f"{prefix}options") or "").strip()
    options: Any = {}
    if text:
        try:
            options = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            errors.append(FieldError(f"{field}.options", f"not valid YAML: {exc}"))
        if not isinstance(options, dict):
            if not errors:
                errors.append(FieldError(f"{field}.options", "must be a YAML mapping such as `label: toxic`"))
            options = {}
    kind = state.get(f"{prefix}kind", "profanity")
    if kind == "hf_classifier":
        if (model := (state.get(f"{prefix}model") or "").strip()):
            options["model"] = model
        if (label := (state.get(f"{prefix}label") or "").strip()):
            options["label"] = int(label) if label.isdigit() else label
    weight = state.get(f"{prefix}weight")
    return {"kind": kind, "weight": 1.0 if weight is None else weight, "name": (state.get(f"{prefix}name") or None),
            "score_on": state.get(f"{prefix}score_on", "response"), "options": options}, errors


def config_to_state(cfg: RunConfig, rows: list[int] | None = None) -> dict[str, Any]:
    """Every widget value of the form for `cfg` (reward rows numbered from `rows`, or fresh ids)."""
    state: dict[str, Any] = {key_of("name"): cfg.name}
    model = cfg.model.name_or_path
    state[key_of("model.choice")] = model if model in BUILTIN_MODELS else CUSTOM_MODEL
    state[key_of("model.custom")] = "" if model in BUILTIN_MODELS else model
    state[key_of("model.lora.target_modules")] = ", ".join(cfg.model.lora.target_modules or [])
    state[key_of("method")] = cfg.method
    for prefix, cls, skip in SECTIONS.values():
        for path, tp in plain_fields(prefix, cls, skip):
            value = _get(cfg, path)
            state[key_of(path)] = "" if value is None and _base(tp) is str else value
    state[key_of("reward.normalize")] = cfg.reward.normalize
    source = cfg.data.source
    state[key_of("data.source_choice")] = source if source in DATA_CHOICES else "file"
    state[key_of("data.source_path")] = "" if source in DATA_CHOICES else source
    state[key_of("data.template")] = cfg.data.template
    state.update(backend_to_state(cfg.evaluation.evaluator, "cfg-evaluator-"))
    rows = list(rows) if rows is not None else [next(_row_ids) for _ in cfg.reward.backends]
    if len(rows) != len(cfg.reward.backends):
        raise ValueError(f"rows: {len(rows)} row ids for {len(cfg.reward.backends)} reward backends")
    state["reward_rows"] = rows
    for row, b in zip(rows, cfg.reward.backends, strict=True):
        state.update(backend_to_state(b, f"rw-{row}-"))
    return state


def state_to_config(state: Mapping[str, Any]) -> tuple[RunConfig | None, list[FieldError]]:
    """The RunConfig the widgets describe, or None and the problems that stop building it.

    Range and consistency checks are engine.config.validate's job; this only reports what cannot
    be parsed (an options box that is not a YAML mapping, a wrong type).
    """
    data: dict[str, Any] = {"name": state.get(key_of("name"), "")}
    errors: list[FieldError] = []
    choice = state.get(key_of("model.choice"), "builtin:smollm2")
    _set(data, "model.name_or_path", choice if choice != CUSTOM_MODEL else (state.get(key_of("model.custom")) or "").strip())
    targets = [t.strip() for t in (state.get(key_of("model.lora.target_modules")) or "").split(",") if t.strip()]
    _set(data, "model.lora.target_modules", targets or None)
    if key_of("method") in state:
        data["method"] = state[key_of("method")]
    for prefix, cls, skip in SECTIONS.values():
        for path, tp in plain_fields(prefix, cls, skip):
            if key_of(path) in state:
                value = state[key_of(path)]
                if _optional(tp) and _base(tp) is str and not (value or "").strip():
                    value = None  # an empty box means "not set"
                _set(data, path, value)
    _set(data, "reward.normalize", state.get(key_of("reward.normalize"), "none"))
    source = state.get(key_of("data.source_choice"), "auto")
    _set(data, "data.source", (state.get(key_of("data.source_path")) or "").strip() if source == "file" else source)
    if key_of("data.template") in state:
        _set(data, "data.template", state[key_of("data.template")])
    evaluator, errs = state_to_backend(state, "cfg-evaluator-", "evaluation.evaluator")
    errors += errs
    evaluator.pop("weight")
    _set(data, "evaluation.evaluator", evaluator)
    backends = []
    for i, row in enumerate(state.get("reward_rows", [])):
        backend, errs = state_to_backend(state, f"rw-{row}-", f"reward.backends[{i}]")
        backends.append(backend)
        errors += errs
    _set(data, "reward.backends", backends)
    try:
        cfg = RunConfig.from_dict(data)
    except ConfigError as exc:
        return None, errors + exc.errors
    return (None, errors) if errors else (cfg, [])


# ---- widgets -------------------------------------------------------------------------------------------


def init_state(cfg: RunConfig | None = None, force: bool = False) -> None:
    """Fill the form's state from `cfg` (defaults: RunConfig()) unless it is already filled."""
    if force or "reward_rows" not in st.session_state:
        load_into_state(cfg or RunConfig())


def load_into_state(cfg: RunConfig) -> None:
    """Replace the form's values with `cfg` (call from a callback or before the widgets are drawn)."""
    for key in [k for k in st.session_state if str(k).startswith("rw-")]:
        del st.session_state[key]
    st.session_state.update(config_to_state(cfg))


def keep_state() -> None:
    """Keep the form's values while other pages show (Streamlit drops state of widgets not drawn)."""
    for key in list(st.session_state):
        if str(key).startswith(("cfg-", "rw-")):
            st.session_state[key] = st.session_state[key]


def show_errors(errors: Mapping[str, list[str]], *paths: str) -> None:
    """Each error of these fields, right where the caller is drawing."""
    for path in paths:
        for message in errors.get(path, []):
            st.error(md(message, limit=1000), icon="⚠️")  # messages echo what the user typed


def field_widget(path: str, tp: Any, errors: Mapping[str, list[str]], help: str | None = None) -> None:
    """A generic widget for one scalar field (type from the dataclass), its errors under it; the label and help
    a practitioner reads come from app.form_labels (the config's comment is the fallback help)."""
    key = key_of(path)
    label, help = label_and_help(path, help)
    optional, base = _optional(tp), _base(tp)
    if path in CHOICES:
        options = list(CHOICES[path])
        if st.session_state.get(key) not in options:  # e.g. "cuda:1" from a loaded file
            options.append(st.session_state.get(key))
        st.selectbox(label, options, key=key, help=help)
    elif base is bool:
        st.checkbox(label, key=key, help=help)
    elif base is int:
        st.number_input(label, step=1, key=key, placeholder="not set" if optional else None, help=help)
    elif base is float:
        st.number_input(label, format=FLOAT_FORMAT.get(path, "%g"), step=FLOAT_STEP.get(path), key=key, help=help)
    else:
        st.text_input(label, key=key, placeholder="not set" if optional else None, help=help)
    show_errors(errors, path)


def section(title: str, errors: Mapping[str, list[str]], columns: int = 4, exclude: tuple[str, ...] = ()) -> None:
    """The generic widgets of one SECTIONS entry in a grid (less the `exclude` paths, drawn elsewhere)."""
    prefix, cls, skip = SECTIONS[title]
    fields = [f for f in plain_fields(prefix, cls, skip) if f[0] not in exclude]
    cols = st.columns(columns)
    helps = field_help(cls)
    for i, (path, tp) in enumerate(fields):
        with cols[i % columns]:
            field_widget(path, tp, errors, helps.get(path.rsplit(".", 1)[-1]))


def backend_inputs(prefix: str, field: str, errors: Mapping[str, list[str]], kinds: tuple[str, ...],
                   weight: bool = True) -> None:
    """Kind, weight, name, score_on, (hf_classifier: model, label) and other options of one backend."""
    cols = st.columns([2, 1, 2, 2] if weight else [2, 2, 2])
    with cols[0]:
        st.selectbox("kind", kinds, key=f"{prefix}kind")
        show_errors(errors, f"{field}.kind")
    i = 1
    if weight:
        with cols[1]:
            st.number_input("weight", format="%g", step=0.1, key=f"{prefix}weight")
            show_errors(errors, f"{field}.weight")
        i = 2
    with cols[i]:
        st.text_input("name (optional)", key=f"{prefix}name", placeholder=st.session_state.get(f"{prefix}kind"))
    with cols[i + 1]:
        st.selectbox("score on", ("response", "prompt_response"), key=f"{prefix}score_on")
        show_errors(errors, f"{field}.score_on")
    if st.session_state.get(f"{prefix}kind") == "hf_classifier":
        c1, c2 = st.columns(2)
        with c1:
            st.text_input("classifier model (hub id or local directory)", key=f"{prefix}model",
                          placeholder="facebook/roberta-hate-speech-dynabench-r4-target")
            show_errors(errors, f"{field}.options.model")
        with c2:
            st.text_input("reward label (name or index)", key=f"{prefix}label", placeholder="nothate")
    st.text_area("other options (YAML)", key=f"{prefix}options", height=68,
                 placeholder="e.g. label: toxic  (jigsaw)  ·  cap: 0.47  (profanity, overlap, topic)  ·  model_id: …  (judges)")
    show_errors(errors, f"{field}.options", *[p for p in errors if p.startswith(f"{field}.options.")
                                              and p != f"{field}.options.model"])


def add_reward_row() -> None:
    """Callback: append a profanity row."""
    row = next(_row_ids)
    st.session_state.update(backend_to_state(RewardBackendSettings(), f"rw-{row}-"))
    st.session_state["reward_rows"] = [*st.session_state.get("reward_rows", []), row]


def remove_reward_row(row: int) -> None:
    """Callback: drop one reward row."""
    st.session_state["reward_rows"] = [r for r in st.session_state.get("reward_rows", []) if r != row]
    for key in [k for k in st.session_state if str(k).startswith(f"rw-{row}-")]:
        del st.session_state[key]


def reward_rows(errors: Mapping[str, list[str]]) -> None:
    """The reward mix: one bordered row per backend, add / remove buttons."""
    show_errors(errors, "reward.backends")
    for i, row in enumerate(st.session_state.get("reward_rows", [])):
        with st.container(border=True, key=f"reward-row-{i}"):
            backend_inputs(f"rw-{row}-", f"reward.backends[{i}]", errors, REWARD_KINDS)
            st.button("Remove this backend", key=f"remove-reward-{row}", on_click=remove_reward_row, args=(row,))
    c1, c2 = st.columns([1, 3])
    with c1:
        st.button("Add a reward backend", key="add-reward", on_click=add_reward_row, icon="➕")
    with c2:
        field_widget("reward.normalize", str, errors)


def model_inputs(errors: Mapping[str, list[str]]) -> None:
    """The policy: a built-in model, or a hub id / local path."""
    c1, c2 = st.columns([1, 2])
    with c1:
        st.selectbox("base model", [*BUILTIN_MODELS, CUSTOM_MODEL], key=key_of("model.choice"),
                     format_func=lambda m: m if m == CUSTOM_MODEL else f"{m}")
    with c2:
        if st.session_state.get(key_of("model.choice")) == CUSTOM_MODEL:
            st.text_input("Hugging Face id or local directory", key=key_of("model.custom"),
                          placeholder="google/flan-t5-base  or  /models/my-gpt2")
        else:
            st.caption(BUILTIN_MODELS.get(st.session_state.get(key_of("model.choice")), ""))
    show_errors(errors, "model.name_or_path")


def data_inputs(errors: Mapping[str, list[str]]) -> None:
    """Where the prompts come from, the prompt template, and the sizes."""
    c1, c2 = st.columns([1, 2])
    with c1:
        st.selectbox("data source", DATA_CHOICES, key=key_of("data.source_choice"),
                     help="auto: the shared HH-RLHF file when present, else the hub, else built-in dialogues")
    with c2:
        if st.session_state.get(key_of("data.source_choice")) == "file":
            st.text_input("path to HH .jsonl(.gz) or prompt .csv/.jsonl", key=key_of("data.source_path"))
    show_errors(errors, "data.source")
    st.text_area("prompt template", key=key_of("data.template"), height=90)
    show_errors(errors, "data.template")
    section("Data", errors)


def unplaced_errors(errors: Mapping[str, list[str]], placed: set[str]) -> dict[str, list[str]]:
    """Errors of fields the form has no widget for (shown together above the Start button)."""
    return {k: v for k, v in errors.items() if k not in placed and ".options." not in k}


def placed_fields(state: Mapping[str, Any]) -> set[str]:
    """Every field path the form draws errors for."""
    placed = {"name", "method", "model.name_or_path", "data.source", "data.template", "reward.backends",
              "reward.normalize", "model.lora.target_modules", "resources"}
    for prefix, cls, skip in SECTIONS.values():
        placed |= {p for p, _ in plain_fields(prefix, cls, skip)}
    for field in ["evaluation.evaluator"] + [f"reward.backends[{i}]" for i in range(len(state.get("reward_rows", [])))]:
        placed |= {f"{field}.{n}" for n in ("kind", "weight", "score_on", "options", "options.model")}
    return placed
