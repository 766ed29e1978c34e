"""The Runs page's per-run action bar: one bordered row per run with its name, status and result, and its own
actions: open Live or Before/after, clone its config into Launch, export it, resume it, cancel or delete it (both
ask first, in a popover, and name the run).

Not responsible for: what an action does or who may do it (engine.api.Lab: cancel_run / delete_run / resume_run
check the owner; a refusal is shown on the run's row).
"""

from __future__ import annotations

import math

import streamlit as st

from app import auth, forms, state
from app.safe_text import md
from engine.api import Lab
from engine.config import ConfigError

NOTE_KEY = "run-row-note"  # (run id, kind, text): what the last action on a row did, shown on that row once


def _note(run_id: str, kind: str, text: str) -> None:
    st.session_state[NOTE_KEY] = (run_id, kind, text)


def _clone(lab: Lab, run_id: str) -> None:
    try:
        forms.load_into_state(lab.run_config(run_id))
        st.session_state["go-launch"] = True
    except ConfigError as exc:  # e.g. a run saved by an older version with a field that is gone
        _note(run_id, "error", f"Its config no longer loads: {exc}")


def _cancel(lab: Lab, run_id: str) -> None:
    try:
        after = lab.cancel_run(run_id, user=auth.user())
        _note(run_id, "info", "Cancelled." if after == "cancelled" else "Stopping after the current step…")
    except (ValueError, PermissionError, KeyError) as exc:  # finished or deleted meanwhile; not the owner's
        _note(run_id, "error", str(exc))


def _delete(lab: Lab, run_id: str, name: str) -> None:
    try:
        lab.delete_run(run_id, user=auth.user())
        st.toast(md(f"Deleted {name} ({run_id})"))
    except (ValueError, PermissionError, KeyError) as exc:  # running now; not the owner's / admin's
        _note(run_id, "error", str(exc))


def _resume(lab: Lab, run_id: str, plan: str) -> None:
    try:
        lab.resume_run(run_id, user=auth.user())
        _note(run_id, "info", f"Queued again. {plan}")
    except (ValueError, PermissionError, KeyError) as exc:
        _note(run_id, "error", str(exc))


def switch_if_cloned() -> None:
    """After a Clone (its callback ran before this script): go to the Launch page with the config loaded."""
    if st.session_state.pop("go-launch", False):
        st.switch_page(state.page_path("launch"))


def action_row(lab: Lab, record, change_pct: float | None = None) -> None:
    """One run's row: "name · id · status · change %", then its actions (keys end with the run id)."""
    rid, name = record.id, record.name
    with st.container(border=True, key=f"run-row-{rid}"):
        result = f" · change **{change_pct:+.1f} %**" if change_pct is not None and math.isfinite(change_pct) else ""
        step = f" · step {record.step}/{record.total_steps}" if record.total_steps else ""
        st.markdown(f"**{md(name)}** · `{rid}` · {record.status}{step}{result}")
        bar = st.container(horizontal=True, gap="small", vertical_alignment="center", key=f"run-actions-{rid}")
        bar.page_link(state.page_path("live"), label="Live", query_params={"run": rid}, icon="📈",
                      help="its curves, phase and log")
        bar.page_link(state.page_path("before_after"), label="Before/after", query_params={"run": rid}, icon="⚖️",
                      help="its hold-out responses before and after training")
        bar.button("Clone", key=f"clone-{rid}", on_click=_clone, args=(lab, rid), icon=":material/content_copy:",
                   help="load its config into the Launch form")
        bar.download_button("Export", lambda: lab.export_run(rid), file_name=f"{rid}.zip", mime="application/zip",
                            key=f"export-{rid}", icon=":material/download:", help="a zip of its config, metrics, "
                            "samples, evaluations and log", on_click="ignore")
        if record.is_active:
            with bar.popover("Cancel", key=f"cancel-pop-{rid}", icon=":material/stop_circle:"):
                st.markdown(f"Stop **{md(name)}**? A running run stops **after its current step**; what it has done "
                            "is kept.")
                st.button("Yes, cancel it", key=f"cancel-yes-{rid}", type="primary", on_click=_cancel,
                          args=(lab, rid))
        else:
            ok, plan = lab.resume_plan(rid)
            if ok:
                bar.button("Resume", key=f"resume-{rid}", icon=":material/play_circle:", help=plan,
                           on_click=_resume, args=(lab, rid, plan))
            with bar.popover("Delete", key=f"delete-pop-{rid}", icon=":material/delete:"):
                st.markdown(f"Delete **{md(name)}** with all its metrics, samples, evaluations and log? Checkpoint "
                            "files stay on disk.")
                st.button("Yes, delete it", key=f"delete-yes-{rid}", type="primary", on_click=_delete,
                          args=(lab, rid, name))
        note = st.session_state.get(NOTE_KEY)
        if note and note[0] == rid:
            st.session_state.pop(NOTE_KEY, None)
            (st.error if note[1] == "error" else st.info)(md(note[2], limit=1000))
