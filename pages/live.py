"""Live run page: status, progress and ETA, cancel, error and traceback, live curves, reward-hacking alarms with
their evidence samples, judge accounting and recent samples.

The panel below the controls is an `st.fragment` that re-runs on a timer in the browser while the run is
queued or running: only it re-runs, it reads only metric rows newer than the last it saw, and it
rebuilds figures only when there are new rows.
"""

from __future__ import annotations

import time

import streamlit as st

from app import auth, charts, judges, state
from app.resume import resume_control, resume_note
from app.safe_text import md
from engine.api import chain_links

lab = state.lab()
st.title("Live run")
run_id = state.select_run(prefer_active=True)
if run_id is None:
    st.info("No runs yet.")
    st.page_link(state.page_path("launch"), label="Start one on the Launch page", icon=":material/rocket_launch:")
    st.stop()

c1, c2, c3 = st.columns([3, 2, 1])
with c1:
    smoothing = st.slider("Smoothing (EMA weight)", 0.0, 0.99, 0.0, 0.01, key="smoothing")
with c2:
    x_axis = st.radio("x axis", ["step", "time"], horizontal=True, key="x-axis",
                      format_func=lambda v: "step" if v == "step" else "wall time")
with c3:
    refresh_s = st.selectbox("refresh (s)", [0.5, 1.0, 2.0, 5.0], index=1, key="refresh-s")

was_active = lab.get_run(run_id).is_active


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA —"
    m, s = divmod(int(round(seconds)), 60)
    return f"ETA {m}:{s:02d}" if m < 60 else f"ETA {m // 60} h {m % 60:02d} min"


def chain_notes(run_id: str) -> None:
    """RLHF chains: the reward-model run a PPO run is rewarded by, or the PPO run a reward-model run queues."""
    links = chain_links(lab.get_run(run_id))
    if links["parent_run"]:
        st.info(f"RLHF, second stage: rewarded by the reward model of run {md(links['parent_run'])}.",
                icon=":material/link:")
        st.page_link(state.page_path("live"), label=f"Reward-model run {links['parent_run']}",
                     query_params={"run": links["parent_run"]}, icon=":material/monitoring:")
    elif links["then_ppo"] and links["ppo_run"]:
        st.success(f"RLHF: PPO run {links['ppo_run']} is queued, rewarded by this reward model.",
                   icon=":material/link:")
        st.page_link(state.page_path("live"), label=f"PPO run {links['ppo_run']}",
                     query_params={"run": links["ppo_run"]}, icon=":material/monitoring:")
    elif links["then_ppo"] and links["ppo_not_queued"]:
        st.warning(f"RLHF: no PPO run was queued ({md(links['ppo_not_queued'], limit=1000)}).", icon=":material/link_off:")
    elif links["then_ppo"]:
        st.info("RLHF: when this reward model completes, a PPO run rewarded by it is queued first in line "
                "(then_ppo); it will be linked here.", icon=":material/link:")


def owner_line(status) -> None:
    """Who executes the run and whether it still says so (its heartbeat); a queued run waits for a worker."""
    lease = lab.store.lease_s
    if status.status == "running" and status.owner:
        age = status.heartbeat_age_s or 0.0
        if age > lease / 2:  # late: say so before the lease runs out and the run is marked interrupted
            st.warning(f"No heartbeat from {status.owner} for {age:.0f} s: its process may have died. The run is "
                       f"marked interrupted if it stays silent for {lease:g} s.", icon=":material/heart_broken:")
        else:
            st.caption(f"Executed by {status.owner} · heartbeat {age:.0f} s ago")
    elif status.status == "queued" and not lab.store.live_workers():
        st.caption("Waiting for a worker: none is live now (the lab starts one; see the Runs page).")


def figures(cache: state.MetricCache, x: str, smoothing: float) -> dict:
    """The run's figures, rebuilt only when new rows arrived or the view settings changed."""
    key = (cache.run_id, cache.version, x, smoothing)
    held = st.session_state.get("_figures")
    if held is None or held[0] != key:
        held = (key, charts.run_figures(cache.wide(), x=x, smoothing=smoothing))
        st.session_state["_figures"] = held
    return held[1]


def alarm_panel(run_id: str) -> None:
    """The reward-hacking alarms fired so far: what, since which step, value vs threshold, evidence samples."""
    cards = lab.alarms(run_id)
    if not cards:
        return
    box = st.container(key="alarms-panel")  # a stable selector for browser tests and screenshots
    box.subheader(f"Alarms ({len(cards)})")
    for i, a in enumerate(cards):
        box.warning(f"**{md(a['name'])}** at step {a['step']} (since step {a['since_step']}): value "
                    f"{a['value']:.3g} vs threshold {a['threshold']:.3g} — {md(a['message'], limit=500)}",
                    icon=":material/warning:")
        if not a["evidence"].empty:
            with box.expander(f"Evidence: {len(a['evidence'])} samples of step {a['step']}"):
                st.dataframe(a["evidence"], key=f"alarm-evidence-{i}", hide_index=True,
                             column_config={"response": st.column_config.TextColumn(width="large")})


@st.fragment(run_every=refresh_s if was_active else None)
def live_panel() -> None:
    t0 = time.perf_counter()
    status = lab.status(run_id)
    c1, c2 = st.columns([4, 1])
    with c1:
        phase = f" · {status.phase}" if status.phase != status.status else ""
        st.markdown(f"**Status:** `{status.status}`{phase}  {status.message}")
        total = status.total or "?"
        st.progress(status.fraction, text=f"step {status.step}/{total} · {fmt_eta(status.eta_s)}")
        owner_line(status)
    with c2:
        if status.status in ("queued", "running"):
            if st.button("Cancel run", key="cancel-run", icon=":material/stop_circle:", type="secondary"):
                try:
                    after = lab.cancel_run(run_id, user=auth.user())
                    st.toast("Cancelled." if after == "cancelled" else "Stopping after the current PPO step…")
                except (ValueError, PermissionError) as exc:  # finished meanwhile; or not the owner's / admin's
                    st.toast(md(str(exc)))
        else:
            resume_control(lab, run_id, key="resume-run")
    resume_note()
    if status.error and status.status != "cancelled":
        st.error(md(status.error, limit=2000, keep_newlines=True))
    elif status.error:
        st.warning(md(status.error, limit=2000, keep_newlines=True))
    if status.traceback:
        with st.expander("Traceback"):
            st.code(status.traceback, language="text")
    chain_notes(run_id)

    cache = state.metric_cache(run_id)
    cache.refresh(lab)
    figs = figures(cache, x_axis, smoothing)
    cols = st.columns(2)
    for i, (name, fig) in enumerate(figs.items()):
        with cols[i % 2]:
            st.plotly_chart(fig, key=f"chart-{name}", config={"displaylogo": False})
    last_step = int(cache.long["step"].max()) if not cache.long.empty else 0
    st.caption(f"{len(cache.long):,} metric rows · last step {last_step} · "
               f"panel built in {1000 * (time.perf_counter() - t0):.0f} ms", help="updated live while the run is active")

    alarm_panel(run_id)

    judge_rows = judges.judge_table(cache.wide())  # reads only the judge/* columns
    if not judge_rows.empty:
        st.subheader("Judge accounting")
        judge_box = st.container(key="judge-accounting")  # a stable selector for browser tests and screenshots
        judge_box.dataframe(judge_rows, key="judge-table", hide_index=True,
                            column_config={"p50 latency (s)": st.column_config.NumberColumn(format="%.3f"),
                                           "p95 latency (s)": st.column_config.NumberColumn(format="%.3f"),
                                           "est. cost (USD)": st.column_config.NumberColumn(format="$%.4f")})
        if judge_rows["est. cost (USD)"].isna().any():
            judge_box.caption("Cumulative over the run. No cost estimate for a model without a price in the table.")
        else:
            judge_box.caption("Cumulative over the run.")

    st.subheader("Recent samples")
    samples = lab.samples(run_id, last_n=24)
    if samples.empty:
        st.caption("No samples yet: they appear after the first PPO step.")
    else:
        st.dataframe(samples, key="samples-table", hide_index=True, height=320,
                     column_config={"prompt": st.column_config.TextColumn(width="large"),
                                    "response": st.column_config.TextColumn(width="large")})
    if was_active and status.status not in ("queued", "running"):
        st.rerun()  # the run ended: redraw the whole page once, without the timer


live_panel()
