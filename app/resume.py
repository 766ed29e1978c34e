"""The Resume control the Live run and Runs pages share: a button that queues a failed, cancelled or interrupted run
with a checkpoint again (a worker continues it from there), saying what will happen, or disabled with the reason.

Not responsible for: resuming itself (engine.api.Lab.resume_run queues it; the worker resumes it).
"""

from __future__ import annotations

import streamlit as st

from app import auth
from app.safe_text import md
from engine.api import Lab


def resume_control(lab: Lab, run_id: str, key: str, container=None) -> None:
    """Draw the Resume button for run `run_id` into `container` (default: the page), with what it will do as its
    help and a caption; nothing for a queued or running run (the page shows Cancel there)."""
    box = container if container is not None else st
    record = lab.get_run(run_id)
    if record.is_active:
        return
    ok, plan = lab.resume_plan(run_id)
    if box.button("Resume", key=key, icon=":material/play_circle:", disabled=not ok, help=plan):
        try:
            lab.resume_run(run_id, user=auth.user())
            st.session_state["resume-note"] = f"Run {run_id} is queued again. {plan}"
        except (ValueError, PermissionError) as exc:  # changed meanwhile (e.g. resumed from another tab); not the owner's
            st.session_state["resume-note"] = str(exc)
        st.rerun()
    if record.status in ("failed", "cancelled", "interrupted"):
        box.caption(md(plan if ok else f"Resume is not possible: {plan}", limit=500))


def resume_note() -> None:
    """Show (once) what the last Resume press did."""
    if (note := st.session_state.pop("resume-note", None)) is not None:
        st.info(md(note, limit=500), icon=":material/play_circle:")
