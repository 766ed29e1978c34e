"""Before/after page: the run's result in one sentence (coloured by what happened, significance included), the
evaluation summary (cards), and its hold-out responses side by side with the selected one in full beside the table;
below, the trained policy's download and "Continue training" (app.policy_actions)."""

from __future__ import annotations

import streamlit as st

from app import charts, results, state, tables
from app.policy_actions import policy_panel
from app.safe_text import md
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
        policy_panel(lab, run_id)
        st.stop()
    if record.is_active:
        st.info("Only part of the evaluation exists so far; the summary appears when the run completes.")
    else:
        st.warning(f"This run {record.status if record.status != 'completed' else 'ended'} before its evaluation "
                   "finished: there is no summary, only the responses that were scored.", icon=":material/info:")
else:
    sentence, kind = results.result_sentence(summary)
    box = {"good": st.success, "bad": st.error}.get(kind, st.info)
    split = summary.get("split")
    box(f"**{sentence}**" + (f" Numbers from the **{md(str(split))}** split." if split else ""),
        icon={"good": ":material/trending_down:", "bad": ":material/trending_up:"}.get(kind, ":material/info:"))
    change = results.summary_change(summary)
    ci = f"95 % CI [{fmt(summary.get('pct_ci_low'), '.1f')} %, {fmt(summary.get('pct_ci_high'), '.1f')} %]"
    cards = [
        ("Before", fmt(before.get("mean"), ".3f"), None, "mean toxicity before training (evaluator probability)"),
        ("After", fmt(after.get("mean"), ".3f"), fmt(after["mean"] - before["mean"], "+.3f"), "mean toxicity after training"),
        ("Change", fmt(change, "+.0f") + "%", None, f"{results.CHANGE_LABEL}; improvement {ci}"),
        ("KL", fmt(summary.get("mean_kl"), ".2f"), None, "mean KL(policy ‖ reference), nats per response"),
        ("Std before", fmt(before.get("std"), ".3f"), None, "standard deviation of toxicity"),
        ("Std after", fmt(after.get("std"), ".3f"), fmt(after["std"] - before["std"], "+.3f"),
         f"improvement {fmt(summary.get('pct_improvement_std'), '.1f')} %"),
        ("Toxic before", fmt(before.get("toxic_rate"), ".0%"), None, "share of responses above the threshold"),
        ("Toxic after", fmt(after.get("toxic_rate"), ".0%"),
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
try:
    template = lab.run_config(run_id).data.template
except Exception:  # noqa: BLE001 - a config from an older version: show the prompts as stored
    template = None
shown = shown.assign(prompt=[results.strip_template(p, template) for p in shown["prompt"]]) if len(shown) else shown
st.caption(f"{len(shown)} of {tables.holdout_count(len(table), k, prefix='')} · change = toxicity after − before "
           "(negative is better) · the prompt column shows the dialogue without the prompt template · click a row "
           "to read it in full on the right")
left, right = st.columns([3, 2])
with left:
    picked = st.dataframe(
        shown, key="ba-table", hide_index=True, on_select="rerun", selection_mode="single-row", height=480,
        column_config={
            "idx": st.column_config.NumberColumn("#", width="small"),
            "prompt": st.column_config.TextColumn("dialogue", width="medium"),
            "response_before": st.column_config.TextColumn("response before", width="medium"),
            "toxicity_before": st.column_config.NumberColumn("toxicity before", format="%.3f"),
            "response_after": st.column_config.TextColumn("response after", width="medium"),
            "toxicity_after": st.column_config.NumberColumn("toxicity after", format="%.3f"),
            "change": st.column_config.NumberColumn(format="%+.3f"),
        })
    st.download_button("Download CSV", shown.to_csv(index=False), file_name=f"{run_id}-before-after.csv",
                       mime="text/csv", key="ba-download", icon=":material/download:")

rows = picked.selection.rows if picked is not None else []
with right, st.container(border=True, key="ba-detail", height=540):
    if not rows:
        st.caption("Click a row of the table to read its dialogue and both responses in full here.")
    else:
        row = shown.iloc[rows[0]]
        st.markdown(f"**Dialogue #{row['idx']}**")
        st.text(row["prompt"])
        st.markdown(f"**Before** · toxicity {fmt(row['toxicity_before'], '.3f')}")
        st.text(row["response_before"])
        st.markdown(f"**After** · toxicity {fmt(row['toxicity_after'], '.3f')}")
        st.text(row["response_after"])

policy_panel(lab, run_id)  # download the trained policy (merged or not), or continue training from it
