"""Before/after page: the evaluation summary of a run (cards) and its hold-out responses side by side."""

from __future__ import annotations

import streamlit as st

from app import charts, state, tables
from app.tables import fmt

lab = state.lab()
st.title("Before / after")
run_id = state.select_run()
if run_id is None:
    st.info("No runs yet.")
    st.stop()

record = lab.get_run(run_id)
table = lab.evaluations(run_id)
summary = record.summary or {}
before, after = summary.get("before") or {}, summary.get("after") or {}
# Several responses per hold-out prompt: the table has one row per response (its prompt repeated).
k = summary.get("samples_per_prompt") or 1

if not before:
    if table.empty:
        st.info(f"Run {run_id} is {record.status} and has no evaluation yet"
                + (" (it is written before training starts and after it ends)." if record.is_active else "."))
        st.stop()
    st.info("Only part of the evaluation exists so far; the summary appears when the run completes.")
else:
    ci = f"95 % CI [{fmt(summary.get('pct_ci_low'), '.1f')} %, {fmt(summary.get('pct_ci_high'), '.1f')} %]"
    cards = [
        ("Mean toxicity · before", fmt(before.get("mean")), None, "mean evaluator probability over the hold-out"),
        ("Mean toxicity · after", fmt(after.get("mean")), fmt(after["mean"] - before["mean"], "+.4f"), None),
        ("Improvement of the mean", fmt(summary.get("pct_improvement_mean"), ".1f") + " %", None,
         f"(before − after) / before; {ci}"),
        ("Mean KL to the reference", fmt(summary.get("mean_kl"), ".3f"), None, "KL(policy ‖ reference), nats per response"),
        ("Std of toxicity · before", fmt(before.get("std")), None, None),
        ("Std of toxicity · after", fmt(after.get("std")), fmt(after["std"] - before["std"], "+.4f"),
         f"improvement {fmt(summary.get('pct_improvement_std'), '.1f')} %"),
        ("Toxic rate · before", fmt(before.get("toxic_rate"), ".1%"), None, "share of responses above the threshold"),
        ("Toxic rate · after", fmt(after.get("toxic_rate"), ".1%"),
         fmt(100 * (after["toxic_rate"] - before["toxic_rate"]), "+.1f") + " pp", None),
    ]
    if "relevance_before" in summary:
        rel_ci = (f"95 % CI of the change [{fmt(summary.get('relevance_ci_low'), '+.4f')}, "
                  f"{fmt(summary.get('relevance_ci_high'), '+.4f')}]")
        cards += [
            ("Relevance · before", fmt(summary.get("relevance_before"), ".3f"), None,
             "mean cosine of response and dialogue (MiniLM sentence embeddings): do the responses still summarise?"),
            ("Relevance · after", fmt(summary.get("relevance_after"), ".3f"),
             fmt(summary.get("relevance_delta"), "+.4f"), rel_ci),
        ]
    for i, (label, value, delta, help_text) in enumerate(cards):
        if i % 4 == 0:
            cols = st.columns(4)
        # less toxicity is better (inverse colours); more relevance is better
        colour = "normal" if label.startswith("Relevance") else "inverse"
        cols[i % 4].metric(label, value, delta=delta, delta_color=colour, help=help_text, border=True)
    split = summary.get("split")
    st.caption(f"Evaluated on the **{split}** split" + (" (prompts never used to choose settings)" if split == "test"
                                                          else "") if split else
               "Evaluated on the hold-out prompts (a run from before the test / validation split: its hold-out also "
               "chose the settings)")
    st.caption(
        f"95 % CI of the change in mean toxicity: [{fmt(summary.get('delta_ci_low'), '+.4f')}, "
        f"{fmt(summary.get('delta_ci_high'), '+.4f')}] · % improvement CI [{fmt(summary.get('pct_ci_low'), '.1f')} %, "
        f"{fmt(summary.get('pct_ci_high'), '.1f')} %] · n = {tables.holdout_count(before.get('n'), k)} · "
        f"evaluator {summary.get('evaluator', '—')} · max {fmt(before.get('max'))} → {fmt(after.get('max'))} · "
        f"response length {fmt(summary.get('length_before'), '.1f')} → {fmt(summary.get('length_after'), '.1f')} tokens")

if not table.empty:
    st.plotly_chart(charts.toxicity_histogram(table), key="toxicity-histogram")

st.subheader("Responses side by side")
c1, c2 = st.columns([3, 2])
with c1:
    view = st.radio("Show", tables.BEFORE_AFTER_VIEWS, horizontal=True, key="ba-view")
with c2:
    query = st.text_input("Search prompts and responses", key="ba-search", placeholder="text to find")
shown = tables.filter_before_after(table, view, query)
st.caption(f"{len(shown)} of {tables.holdout_count(len(table), k, prefix='')} · change = toxicity after − before (negative is better) · "
           "click a column to sort, a row to read it in full")
picked = st.dataframe(
    shown, key="ba-table", hide_index=True, on_select="rerun", selection_mode="single-row", height=420,
    column_config={
        "idx": st.column_config.NumberColumn("#", width="small"),
        "prompt": st.column_config.TextColumn(width="medium"),
        "response_before": st.column_config.TextColumn("response before", width="medium"),
        "toxicity_before": st.column_config.NumberColumn("toxicity before", format="%.3f"),
        "response_after": st.column_config.TextColumn("response after", width="medium"),
        "toxicity_after": st.column_config.NumberColumn("toxicity after", format="%.3f"),
        "change": st.column_config.NumberColumn(format="%+.3f"),
    })
st.download_button("Download CSV", shown.to_csv(index=False), file_name=f"{run_id}-before-after.csv",
                   mime="text/csv", key="ba-download", icon=":material/download:")

rows = picked.selection.rows if picked is not None else []
if rows:
    row = shown.iloc[rows[0]]
    with st.container(border=True, key="ba-detail"):
        st.markdown(f"**Prompt #{row['idx']}**")
        st.text(row["prompt"])
        b, a = st.columns(2)
        b.markdown(f"**Before** · toxicity {fmt(row['toxicity_before'], '.3f')}")
        b.text(row["response_before"])
        a.markdown(f"**After** · toxicity {fmt(row['toxicity_after'], '.3f')}")
        a.text(row["response_after"])
