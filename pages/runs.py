"""Runs page: the workers serving the store; every run with its results and key hyperparameters first; overlay
several runs' curves and before/after numbers, and the config fields in which they differ; each run's own actions
(app/run_actions.py: open Live or Before/after, clone into Launch, export, resume, cancel or delete, asking first);
with one run selected, its trained policy: download (merged or not) or continue training (app.policy_actions)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import yaml

from app import charts, results, run_actions, state
from app.policy_actions import policy_panel
from app.resume import resume_note
from app.safe_text import plain

lab = state.lab()
run_actions.switch_if_cloned()  # a Clone's callback ran before this script: go to Launch before drawing anything
st.title("Runs")


def workers_panel() -> None:
    """Each worker process (host, pid, device, heartbeat age, current run); runs wait for a live one."""
    workers = lab.workers_table()
    live = int((workers["state"] == "live").sum())
    with st.expander(f"Workers: {live} live", expanded=live == 0, icon=":material/memory:"):
        if workers.empty:
            st.caption("No worker is registered: queued runs wait until one starts (`python -m engine worker`).")
        else:
            st.dataframe(workers, key="workers-table", hide_index=True,
                         column_config={"heartbeat_s": st.column_config.NumberColumn("heartbeat (s ago)",
                                                                                     format="%.1f")})
            st.caption(f"A worker silent for more than {lab.store.lease_s:g} s is presumed dead; its run is then "
                       "marked interrupted.")


workers_panel()
overview = lab.runs_table()
if overview.empty:
    st.info("No runs yet.")
    st.page_link(state.page_path("launch"), label="Start one on the Launch page", icon=":material/rocket_launch:")
    st.stop()



def config_of(run) -> dict:
    try:
        data = yaml.safe_load(run.config_yaml)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


runs_by_id = {r.id: r for r in lab.list_runs()}
# results and the key hyperparameters first; one sign convention: change % = (after − before) / before
# a run without results yet has None there: numeric columns show an empty cell for NaN, a "None" for None
for col in ("improvement_%", "tox_before", "tox_after", "mean_kl"):
    overview[col] = pd.to_numeric(overview[col], errors="coerce")
overview["change_%"] = -overview["improvement_%"]
hyper = pd.DataFrame([results.key_hyperparameters(config_of(runs_by_id[i])) if i in runs_by_id else {}
                      for i in overview["id"]], index=overview.index)
first = ["name", "status", "change_%", "tox_before", "tox_after", "mean_kl"]
overview = pd.concat([overview[first], hyper, overview.drop(columns=[*first, "improvement_%", "rewards"])], axis=1)
# per-row links to the run's pages (each run's actions: "Manage runs" below)
overview["live"] = "./live?run=" + overview["id"]
overview["before/after"] = "./before_after?run=" + overview["id"]
overview = overview[[*first, "live", "before/after", *[c for c in overview.columns if c not in (*first, "live",
                                                                                            "before/after")]]]
st.caption("Select rows to compare runs; each run's actions (clone, export, resume, cancel, delete) are under "
           "Manage runs below. " + results.CHANGE_LABEL + ".")
RESULT_COLUMNS = {
    "change_%": st.column_config.NumberColumn("change %", format="%+.1f %%", help=results.CHANGE_LABEL),
    "tox_before": st.column_config.NumberColumn("toxicity before", format="%.3f"),
    "tox_after": st.column_config.NumberColumn("toxicity after", format="%.3f"),
    "mean_kl": st.column_config.NumberColumn("mean KL", format="%.2f"),
    "learning rate": st.column_config.NumberColumn(format="%.2e"),
    "KL coef": st.column_config.NumberColumn(format="%.3g"),
    "live": st.column_config.LinkColumn("curves", display_text="Live", help="open the run's Live page"),
    "before/after": st.column_config.LinkColumn("result", display_text="Before/after",
                                                help="open the run's Before/after page"),
}
picked = st.dataframe(overview, key="runs-table", hide_index=True, on_select="rerun", selection_mode="multi-row",
                      column_config=RESULT_COLUMNS)
# rows picked before a delete may point past the end of the table now
selected = [overview["id"].iloc[i] for i in (picked.selection.rows if picked is not None else []) if i < len(overview)]


@st.cache_data(show_spinner=False, max_entries=32)
def wide_metrics(run_id: str, marker: tuple) -> pd.DataFrame:
    """A run's metrics, one column per key (cached until the run moves on: `marker`)."""
    return charts.to_wide(lab.metrics(run_id))


def comparison(selected: list[str]) -> None:
    """The selected runs' curves overlaid, their before/after numbers, and the config fields in which they differ."""
    records = {rid: runs_by_id.get(rid) or lab.get_run(rid) for rid in selected}
    labels = {rid: plain(f"{r.name} ({rid})") for rid, r in records.items()}  # legends and selectors: plain text
    wides = {labels[rid]: wide_metrics(rid, (r.status, r.step, r.finished_at)) for rid, r in records.items()}

    st.subheader("Curves")
    all_keys = sorted({k for w in wides.values() for k in w.columns if k != charts.TIME_COL})
    default = [k for k in ("objective/kl", "ppo/returns/mean", "env/reward_mean") if k in all_keys]
    c1, c2, c3 = st.columns([3, 1, 1])
    keys = c1.multiselect("Metrics", all_keys, default=default, key="compare-keys")
    smoothing = c2.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="compare-smoothing")
    x_axis = c3.radio("x axis", ["step", "time"], horizontal=True, key="compare-x")
    cols = st.columns(2)
    for i, key in enumerate(keys):
        with cols[i % 2]:
            st.plotly_chart(charts.overlay_figure(wides, key, x=x_axis, smoothing=smoothing), key=f"compare-{key}")

    summaries = {labels[rid]: r.summary for rid, r in records.items() if r.summary and r.summary.get("before")}
    if summaries:
        st.subheader("Before / after")
        st.plotly_chart(charts.compare_summaries_figure(summaries), key="compare-summaries")
        st.dataframe(overview[overview["id"].isin(selected)][["name", "change_%", "tox_before", "tox_after",
                                                              "mean_kl", "id"]], hide_index=True,
                     key="compare-table", column_config=RESULT_COLUMNS)

    if len(selected) > 1:
        st.subheader("Config: the fields that differ")
        diff = results.config_diff({labels[rid]: config_of(r) for rid, r in records.items()})
        if diff.empty:
            st.caption("The selected runs have the same config (apart from name and output folder).")
        else:
            st.dataframe(diff, hide_index=True, key="config-diff")


resume_note()
if selected:
    comparison(selected)
    if len(selected) == 1:
        policy_panel(lab, selected[0])
    else:
        st.caption("Select one run to download its trained policy or continue training from it.")
else:
    st.info("Select runs in the table to overlay their curves and compare their results and configs; select "
            "one to download its trained policy or continue training from it.")

st.subheader("Manage runs")
st.caption("Each run's own actions. Cancel and Delete ask first; only a run's owner or an admin may cancel, resume "
           "or delete it when the lab has a login.")
ROWS_SHOWN = 20
records_all = list(runs_by_id.values())  # newest first
change = dict(zip(overview["id"], overview["change_%"], strict=True))
show_all = len(records_all) > ROWS_SHOWN and st.toggle(f"Show all {len(records_all)} runs (the newest "
                                                        f"{ROWS_SHOWN} are shown)", key="rows-all")
for record in records_all[: None if show_all else ROWS_SHOWN]:
    run_actions.action_row(lab, record, change.get(record.id))
