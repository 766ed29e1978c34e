"""Live run page: what the run is doing in plain words, elapsed time and a stable ETA, a log, cancel (confirmed) or
resume, error and traceback, live curves, reward-hacking alarms with their evidence samples, judge accounting, recent
samples, and on completion a link to its result.

Watching costs the run nothing measurable: the page is drawn once and then learns whether the run changed from a
cheap signature (engine.api.watch_signature: the run row's status / phase / message / step, the newest metric row and
log line). Served by app/serve.py (scripts/lab.sh), a small component in the browser polls the server's watch route
(one tiny HTTP request a second, no Streamlit rerun, no websocket message) and reruns the page only when the token
differs from the one drawn; served otherwise (`streamlit run app/main.py`, AppTest) or when the route fails, a
`st.fragment` timer compares the signature on the server and draws nothing when it is unchanged. Either way a change
redraws the page at most every MIN_REDRAW_S, and at most a small share of the time given what the last draw took
(DRAW_BUDGET of this server's, BROWSER_DRAW_BUDGET of the browser's; at once when the run ends); the tabs watching
one run share that budget, and a hidden browser tab stops polling until it shows again.

The log expander shows the run's stored log (engine.run_log): phases entered, what a long phase is doing, warnings
and errors, kept after the worker exits.
"""

from __future__ import annotations

import os
import time

import streamlit as st

from app import auth, charts, judges, live_view, state
from app.resume import resume_control, resume_note
from app.safe_text import md
from engine.api import chain_links, signature_token
from engine.store import utcnow

T_PAGE = time.perf_counter()
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


MIN_REDRAW_S = 5.0  # a redraw (charts included) costs the browser and this server CPU the run shares: at most this often
DRAW_BUDGET = 0.05  # ... and at most this share of the time: a page that took 0.6 s to draw waits >= 12 s
# The browser's side is counted from its long tasks (> 50 ms on the page's main thread). Its budget is smaller than
# the server's: a browser on the training machine costs the run more than its CPU share (a run's torch threads all
# wait while one of them is descheduled): one tab redrawing each step of the default run slowed its steps by 16-21 %
# for 3.8 % of the 2 cores (bench/bench_live_tabs.py).
BROWSER_DRAW_BUDGET = 0.02
# Long tasks are wall time: on a machine whose cores the run keeps busy they stretch (one redraw of the default run's
# page measured 0.9-3.8 s of long tasks for ~1.5 s of Chromium CPU), so the wait they set is capped; at the cap one
# tab redraws about once a minute and N tabs each every N minutes.
MAX_BROWSER_WAIT_S = 60.0


WATCH_ROUTE = os.environ.get("RLAIF_LAB_WATCH_ROUTE")  # set by app/serve.py, which serves the route


def watch_component(route_url: str | None, sig_token: str, active: bool, every_s: float, wait_s: float):
    """The browser side of watching: polls `route_url` while the tab is visible and the run is active (after
    `every_s`, then 1.5 times longer each time nothing changed, up to 5 s), and reruns the page (a trigger) when the run's token differs from the drawn one, no sooner than `wait_s`
    after this draw (nor than the browser's own time on the last redraw, its long tasks, allows at
    BROWSER_DRAW_BUDGET), times the number of tabs watching the run (the route counts them: together they redraw
    about as often as one), unless the run ended. Without a route it only reports document.visibilityState (the fragment
    timer then stops in a hidden tab). Returns the component's state: `visible`, `fallback` (the route failed)."""
    return _WATCH(key="live-watch", data={"url": route_url or "", "run": run_id, "sig": sig_token,
                                          "active": bool(active), "every_ms": int(1000 * every_s),
                                          "wait_ms": int(1000 * wait_s), "budget": BROWSER_DRAW_BUDGET,
                                          "max_browser_wait_ms": int(1000 * MAX_BROWSER_WAIT_S),
                                          "report_visibility": not route_url},
                  default={"visible": True, "fallback": False}, on_visible_change=lambda: None,
                  on_fallback_change=lambda: None, on_redraw_change=lambda: None, height=0)


_WATCH = st.components.v2.component("rlaif_lab_live_watch", js="""
export default function (component) {
  // Called again whenever its data changes (after each redraw) without the previous cleanup: one timer per page.
  const { data, setStateValue, setTriggerValue } = component;
  const d = data || {};
  const w = (window.__rlaifLiveWatch = window.__rlaifLiveWatch || {});
  if (w.stop) w.stop();
  if (!w.observer && window.PerformanceObserver) {  // the browser's side of a redraw: its long tasks (> 50 ms)
    w.busy = 0;
    try {
      w.observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) w.busy += e.duration; });
      w.observer.observe({type: 'longtask', buffered: false});
    } catch (e) { w.observer = null; }
  }
  if (!w.id) w.id = Math.random().toString(36).slice(2, 12) || 'tab';  // this tab, for the route's count of watchers
  if (w.redraws === undefined) w.redraws = 0;  // redraws asked for (read by bench/bench_live_tabs.py)
  const drawnAt = Date.now();
  if (w.reported === undefined) w.reported = true;  // what Python last heard (across redraws: no repeated report)
  const maxEvery = Math.max(d.every_ms || 1000, 5000);
  let timer = null, failures = 0, stopped = false, every = d.every_ms || 1000;
  const visible = () => document.visibilityState === 'visible';
  const schedule = (ms) => { if (timer) clearTimeout(timer); timer = stopped ? null : setTimeout(tick, ms); };
  async function tick() {
    timer = null;
    if (stopped || !d.url || !d.active || !visible()) return;  // hidden: nothing until it shows again
    try {
      const r = await fetch(d.url + '?run=' + encodeURIComponent(d.run) + '&w=' + w.id,
                            {cache: 'no-store', credentials: 'same-origin'});
      if (!r.ok || !(r.headers.get('content-type') || '').includes('application/json')) throw new Error(String(r.status));
      const body = await r.json();
      failures = 0;
      if (stopped) return;
      if (body.sig !== d.sig) {
        // at most `budget` of the time on redraws, counting what the last one cost this browser too; the tabs
        // watching this run share that budget (each waits as many times longer as there are tabs)
        const browserMs = (w.busy || 0) - (w.busyAtRedraw || 0);
        const tabs = Math.min(Math.max(body.watchers || 1, 1), 16);
        const browserWait = d.budget > 0 ? Math.min(browserMs / d.budget, d.max_browser_wait_ms || Infinity) : 0;
        const waitMs = tabs * Math.max(d.wait_ms, browserWait);
        const wait = body.ended ? 0 : waitMs - (Date.now() - drawnAt);
        // the rerun calls this function again with the new drawing (and stops this one); should it draw the same
        // data, this one looks again after the wait
        if (wait <= 0) {
          w.busyAtRedraw = w.busy || 0;
          w.redraws += 1;
          setTriggerValue('redraw', body.sig);
          schedule(Math.max(d.wait_ms, d.every_ms || 1000));
          return;
        }
        schedule(Math.min(wait, maxEvery));  // keep polling meanwhile: a tab that stops is no longer counted
        return;
      }
    } catch (e) {
      if (++failures >= 3) { stopped = true; setStateValue('fallback', true); return; }
    }
    // nothing new: look again a little later each time, up to every 5 s (a redraw waits >= 5 s anyway)
    every = Math.min(every * 1.5, maxEvery);
    schedule(every);
  }
  const report = () => {
    const v = visible();
    if (d.report_visibility && v !== w.reported) { w.reported = v; setStateValue('visible', v); }
    return v;
  };
  const onVisibility = () => {
    if (report() && !timer) { every = d.every_ms || 1000; schedule(0); }  // shown again: look at once
  };
  document.addEventListener('visibilitychange', onVisibility);
  w.stop = () => { stopped = true; if (timer) clearTimeout(timer); timer = null;
                   document.removeEventListener('visibilitychange', onVisibility); };
  report();
  schedule(every);
  return () => w.stop && w.stop();
}
""")


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


def cancel_control(status) -> None:
    """Cancel asks first (a popover), then answers at once: the store's flag is set in this click's rerun."""
    if (refused := st.session_state.pop("_cancel_refused", None)) is not None:
        st.error(md(refused), icon=":material/block:")  # shown after the rerun (a toast would be lost with it)
    if st.session_state.get("_cancel_asked") == run_id and status.status == "running":
        st.info("Stopping after the current step…", icon=":material/hourglass_top:")
        return
    if status.status not in ("queued", "running"):
        return
    with st.popover("Cancel run", icon=":material/stop_circle:"):
        st.markdown("Stop this run? A running run stops **after its current step**; what it has done is kept.")
        if st.button("Yes, cancel the run", key="cancel-run", type="primary"):
            try:
                after = lab.cancel_run(run_id, user=auth.user())
                st.session_state["_cancel_asked"] = run_id
                st.toast("Cancelled." if after == "cancelled" else "Stopping after the current step…")
            except (ValueError, PermissionError) as exc:  # finished meanwhile; or not the owner's / admin's
                st.session_state["_cancel_refused"] = str(exc)
            st.rerun()


drawn_sig = lab.watch_signature(run_id)  # before anything is read: a change during this draw draws again
rec = lab.get_run(run_id)
status = lab.status(run_id)
cache = state.metric_cache(run_id)
cache.refresh(lab)
st.session_state["_live_sig"] = (run_id, drawn_sig)
st.session_state["_live_drawn"] = time.monotonic()
wait_s = max(MIN_REDRAW_S, st.session_state.get("_live_draw_s", 0.0) / DRAW_BUDGET)
use_route = bool(WATCH_ROUTE) and not st.session_state.get("_watch_fallback")
watched = watch_component(WATCH_ROUTE if use_route else None, signature_token(drawn_sig), was_active, refresh_s,
                          wait_s)
if getattr(watched, "fallback", False) and not st.session_state.get("_watch_fallback"):
    st.session_state["_watch_fallback"] = True  # the route failed (a proxy refusing it?): the server-side timer
    st.rerun()
visible = bool(getattr(watched, "visible", True))
run_log = lab.run_log(run_id)

t0 = time.perf_counter()
c1, c2 = st.columns([3, 1])
line = live_view.phase_text(status.status, status.phase, status.message, status.step, status.total)
with c1:
    st.markdown(f"### {md(line)}")
    st.caption(f"Status: {status.status}")
    elapsed = ((rec.finished_at or utcnow()) - rec.started_at).total_seconds() if rec.started_at else None
    times = list(rec.step_times)
    if not times and "time/step_s" in cache.wide().columns:  # an owner that stored no step times: the metric rows
        times = cache.wide()["time/step_s"].dropna().tolist()
    eta = live_view.stable_eta(times, status.step, status.total) if status.status == "running" else None
    total = status.total or "?"
    in_phase = live_view.phase_seconds(run_log, status.phase, utcnow()) if status.status == "running" else None
    st.progress(status.fraction, text=f"step {status.step}/{total} · elapsed {live_view.fmt_duration(elapsed)}"
                + (f" · this phase {live_view.fmt_duration(in_phase)}" if in_phase is not None else "")
                + (f" · {live_view.fmt_eta(eta)}" if status.status == "running" else ""))
    owner_line(status)
with c2:
    cancel_control(status)
    if status.status not in ("queued", "running"):
        resume_control(lab, run_id, key="resume-run")
resume_note()
if status.status == "completed":
    with st.container(border=True, key="result-strip"):
        summary = rec.summary or {}
        before, after = summary.get("toxicity_before_mean"), summary.get("toxicity_after_mean")
        if isinstance(before, float) and isinstance(after, float):
            st.markdown(f"**The run completed.** Mean toxicity of the hold-out responses: {before:.3f} before, "
                        f"{after:.3f} after.")
        else:
            st.markdown("**The run completed.**")
        st.page_link(state.page_path("before_after"), label="Open Before/after", query_params={"run": run_id},
                     icon=":material/compare_arrows:")
if status.error and status.status != "cancelled":
    st.error(md(status.error, limit=2000, keep_newlines=True))
elif status.error:
    st.warning(md(status.error, limit=2000, keep_newlines=True))
if status.traceback:
    with st.expander("Traceback"):
        st.code(status.traceback, language="text")
warnings_n = int(run_log["level"].isin(["warning", "error"]).sum()) if not run_log.empty else 0
with st.expander(f"Log: {len(run_log)} line{'s' if len(run_log) != 1 else ''}"
                 + (f", {warnings_n} warning{'s' if warnings_n != 1 else ''} or error{'s' if warnings_n != 1 else ''}"
                    if warnings_n else ""), icon=":material/receipt_long:", key="live-log"):
    if run_log.empty:
        st.caption("No log lines stored for this run yet (a run from before the stored log has none).")
    else:
        st.caption("Phases entered, what a long phase is doing (every 30 s at most), warnings and errors; stored "
                   "with the run, so they stay after its worker exits. Newest last, times in UTC.")
        st.code(live_view.log_text(run_log.tail(60)), language="text")
chain_notes(run_id)

figs = figures(cache, x_axis, smoothing)
cols = st.columns(2)
for i, (name, fig) in enumerate(figs.items()):
    with cols[i % 2]:
        st.plotly_chart(fig, key=f"chart-{name}", config={"displaylogo": False})
last_step = int(cache.long["step"].max()) if not cache.long.empty else 0
st.caption(f"{len(cache.long):,} metric rows · last step {last_step} · "
           f"drawn in {1000 * (time.perf_counter() - t0):.0f} ms",
           help="redrawn only when the run reports something new")

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


@st.fragment(run_every=refresh_s if (was_active and visible and not use_route) else None)
def watch() -> None:
    """The server-side timer (no watch route): draws nothing; redraws the page only when the run's signature
    changed (or it ended)."""
    sig = (run_id, lab.watch_signature(run_id))
    ended = sig[1][0] not in ("queued", "running")
    quiet = time.monotonic() - st.session_state.get("_live_drawn", 0.0) < wait_s
    if st.session_state.get("_live_sig") != sig and (ended or not quiet):
        st.rerun()


watch()
st.session_state["_live_draw_s"] = time.perf_counter() - T_PAGE  # what a redraw costs this server
