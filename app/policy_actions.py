"""The trained-policy actions of a run's page: download its policy (full weights or LoRA adapter, tokenizer, model
card) as a zip, the same with the adapter merged into its base, and "Continue training" (Launch opens prefilled with
a config whose model.init_from names this run's policy).

Not responsible for: building the zip (engine.policy_export, through engine.api.Lab.policy_zip: on disk, in the
engine) or starting the new run (the Launch page).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import forms, state
from app.safe_text import md
from engine.api import Lab
from engine.config import ConfigError

UI_ZIP_LIMIT_BYTES = 2 * 2**30  # engine.policy_export.UI_ZIP_LIMIT_BYTES (not imported: keeps torch-free imports)


def _continue(lab: Lab, run_id: str, step: int | None) -> None:
    try:
        forms.load_into_state(lab.continue_config(run_id, step))
        st.session_state["preset"] = "custom"
        st.session_state["policy-go-launch"] = True
        st.session_state["launch-note"] = ("success", f"Continuing run {run_id}: model.init_from is set; change "
                                           "what you like (steps, reward, learning rate) and start it.")
    except (ValueError, ConfigError) as exc:  # no such policy any more; a config that no longer loads
        st.session_state["policy-note"] = f"Cannot continue run {run_id}: {exc}"


def _build(lab: Lab, run_id: str, step: int | None, merge: bool) -> None:
    try:
        with st.spinner("Building the zip on disk…"):
            path = lab.policy_zip(run_id, step=step, merge=merge)
        st.session_state["policy-zip"] = (run_id, step, merge, str(path))
    except (ValueError, OSError, RuntimeError) as exc:  # no such policy; a full disk; weights that do not load
        st.session_state["policy-note"] = f"Could not export run {run_id}'s policy: {exc}"


def policy_panel(lab: Lab, run_id: str) -> None:
    """The "Trained policy" section for run `run_id`: which policy (final or a checkpoint), Build zip → Download,
    Merge (LoRA runs) and Continue training. Nothing for a run without a policy (a reward model, a run that saved
    none)."""
    if st.session_state.pop("policy-go-launch", False):  # Continue training was pressed: Launch, prefilled
        st.switch_page(state.page_path("launch"))
    choices = lab.policy_choices(run_id)
    st.subheader("Trained policy")
    if (note := st.session_state.pop("policy-note", None)) is not None:
        st.error(md(note, limit=2000))
    if not choices:
        st.caption("This run has no policy to export or continue from yet (a reward-model run, or no checkpoint "
                   "saved so far).")
        return
    labels = dict(choices)
    c = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
    step = c[0].selectbox("Policy", list(labels), format_func=lambda s: labels[s], key=f"policy-pick-{run_id}")
    adapter = lab.policy_is_adapter(run_id)
    merge = c[1].checkbox("Merge adapter into base", key=f"policy-merge-{run_id}", disabled=not adapter,
                          help="One full model (from_pretrained, no peft) instead of the LoRA adapter" if adapter
                          else "This run trained full weights: nothing to merge")
    c[2].button("Build policy zip", key="policy-build", icon=":material/folder_zip:",
                on_click=_build, args=(lab, run_id, step, merge and adapter),
                help="Weights (or the LoRA adapter), tokenizer and a model card with the config and before/after "
                     "numbers; built on disk by the engine")
    c[3].button("Continue training", key="policy-continue", icon=":material/fast_forward:",
                on_click=_continue, args=(lab, run_id, step),
                help="Open Launch with this run's config, starting from this policy (model.init_from)")
    built = st.session_state.get("policy-zip")
    if built and tuple(built[:3]) == (run_id, step, merge and adapter):
        path = Path(built[3])
        if not path.is_file():
            st.session_state.pop("policy-zip", None)
            return
        size = path.stat().st_size
        if size > UI_ZIP_LIMIT_BYTES:
            st.info(md(f"The zip is {size / 2**30:.1f} GiB, too large to serve from the web server's memory; it is on "
                       f"the server at {path}. From a shell: python -m engine export {run_id} --policy OUT.zip",
                       limit=1000))
            return
        st.download_button(f"Download {path.name} ({size / 2**20:.1f} MiB)", lambda: path.read_bytes(),
                           file_name=path.name, mime="application/zip", key="policy-download",
                           icon=":material/download:")
        st.caption(md(f"Built on the server at {path}. Load it with transformers' from_pretrained"
                      + (" (an adapter: peft's PeftModel.from_pretrained on its base)" if adapter and not merge
                         else "") + "; its README.md says how.", limit=1000))
