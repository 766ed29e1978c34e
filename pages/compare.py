"""Compare methods page: several policy runs side by side (toxicity before/after, KL, cost), helpfulness by a
trained reward model, and the Pareto front of harmlessness and helpfulness."""

from __future__ import annotations

import streamlit as st

from app import charts, state
from app.safe_text import md, plain
from app.tables import fmt

TABLE_COLUMNS = {
    "n_prompts": st.column_config.NumberColumn("prompts", help="hold-out prompts evaluated"),
    "same_holdout": st.column_config.CheckboxColumn("same hold-out", help="same prompts as the first run"),
    "tox_before": st.column_config.NumberColumn("toxicity before", format="%.4f"),
    "tox_after": st.column_config.NumberColumn("toxicity after", format="%.4f"),
    "tox_change_%": st.column_config.NumberColumn("change % (mean)", format="%+.1f %%",
                                                  help="(after − before) / before × 100: negative is less toxic "
                                                       "(the Runs page's change %)"),
    "tox_std_before": st.column_config.NumberColumn("std before", format="%.4f"),
    "tox_std_after": st.column_config.NumberColumn("std after", format="%.4f"),
    "tox_std_change_%": st.column_config.NumberColumn("change % (std)", format="%+.1f %%"),
    "toxic_rate_before": st.column_config.NumberColumn("toxic rate before", format="percent"),
    "toxic_rate_after": st.column_config.NumberColumn("toxic rate after", format="percent"),
    "harmlessness_after": st.column_config.NumberColumn("harmlessness", format="%.4f",
                                                        help="1 − mean toxicity after"),
    "mean_kl": st.column_config.NumberColumn("KL to base", format="%.3f",
                                             help="mean sequence KL of the trained policy's responses to the "
                                                  "base model, nats"),
    "length_before": st.column_config.NumberColumn("length before", format="%.1f"),
    "length_after": st.column_config.NumberColumn("length after", format="%.1f"),
    "split": st.column_config.TextColumn("split", help="the prompts evaluated: test (never used to choose settings), "
                                                      "validation, or hold-out (runs from before the split, whose "
                                                      "hold-out also chose settings)"),
    "relevance_before": st.column_config.NumberColumn("relevance before", format="%.3f",
                                                      help="mean cosine of response and dialogue (MiniLM)"),
    "relevance_after": st.column_config.NumberColumn("relevance after", format="%.3f"),
    "wall_s": st.column_config.NumberColumn("wall time (s)", format="%.0f"),
    "train_steps": st.column_config.NumberColumn("steps"),
    "train_unit": st.column_config.TextColumn("unit"),
    "train_examples": st.column_config.NumberColumn("examples", format="%.0f",
                                                    help="training examples drawn: steps × examples per step"),
    "generated_samples": st.column_config.NumberColumn("sampled", format="%.0f",
                                                       help="responses the policy sampled for training"),
    "generated_tokens": st.column_config.NumberColumn("sampled tokens", format="%.0f"),
    "helpfulness_before": st.column_config.NumberColumn("helpfulness before", format="%.3f"),
    "helpfulness_after": st.column_config.NumberColumn("helpfulness after", format="%.3f"),
    "helpfulness_change": st.column_config.NumberColumn("Δ helpfulness", format="%+.3f"),
}

lab = state.lab()
st.title("Compare methods")
runs = lab.comparable_runs()
if not runs:
    st.info("No finished policy runs yet. Train a few with different methods (PPO, DPO, RLOO, GRPO, AI-labelled "
            "DPO) on the same data and evaluator, then compare them here.")
    st.page_link(state.page_path("launch"), label="Start one on the Launch page", icon=":material/rocket_launch:")
    st.stop()

names = {r.id: plain(f"{r.name} · {r.method} · {r.id}") + ("" if r.status == "completed" else f" · {r.status}")
         for r in runs}
# ?runs=ID,ID&scorer=ID preselect (a link to a comparison; docs/take_compare_screenshot.py uses it)
linked = [i for i in st.query_params.get("runs", "").split(",") if i in names]
selected = st.multiselect(
    "Runs", list(names), default=linked or [r.id for r in runs if r.status == "completed"], format_func=names.get,
    key="cmp-runs", placeholder="pick runs to compare",
    help="Finished runs of the policy methods. The first run's hold-out prompts are the reference: runs evaluated "
         "on other prompts are flagged and kept out of the charts.")
if not selected:
    st.info("Pick one or more runs to compare.")
    st.stop()
st.caption(f"Reference hold-out: that of **{md(names[selected[0]])}**, the first run in the list (put another "
           "first to compare against its prompts).")

scorers = {r.id: r for r in lab.helpfulness_scorers()}
scorer = None
if scorers:
    linked = st.query_params.get("scorer")
    scorer = st.selectbox(
        "Helpfulness scorer", list(scorers), key="cmp-scorer", index=list(scorers).index(linked) if linked in scorers else 0,
        format_func=lambda i: f"{plain(scorers[i].name)} · {i} · pairwise accuracy "
                              f"{fmt((scorers[i].summary or {}).get('pairwise_accuracy'), '.1%')}",
        help="A completed reward_model run: its reward model, trained on human HH preference pairs, scores every "
             "hold-out prompt + response. Scores are computed once and kept in the store.")
else:
    st.info("No helpfulness scorer yet. Train one with a run of method **reward_model** (Launch page → method "
            "`reward_model`, or `python -m engine run my.yaml --set method=reward_model`): its reward model then "
            "scores these runs' responses, and a harmlessness vs helpfulness chart appears here. Until then: "
            "the table and toxicity vs KL.", icon=":material/info:")

table = None
if scorer is not None:
    try:
        missing = lab.missing_helpfulness(selected, scorer)
        if missing:
            bar = st.progress(0.0, text=f"scoring {missing} responses with reward model {scorer}")
            with st.spinner(f"Scoring {missing} hold-out responses with the reward model of {scorer}…"):
                table = lab.compare(selected, scorer, progress=lambda done, total: bar.progress(
                    done / total, text=f"scored {done}/{total} responses"))
            bar.empty()
        else:
            table = lab.compare(selected, scorer)
    except Exception as exc:  # e.g. its model folder was deleted: still show the rest
        st.error(md(f"The reward model of {scorer} could not score: {type(exc).__name__}: {exc}", limit=1000,
                    keep_newlines=True))
        scorer = None
if table is None:
    table = lab.compare(selected)

no_eval = table[table["n_prompts"] == 0]
if len(no_eval):
    st.warning("No hold-out evaluation for " + ", ".join(f"{md(n)} ({s})" for n, s in zip(no_eval["name"],
               no_eval["status"], strict=True)) + ": the run failed or was cancelled before evaluating, or ran with "
               "evaluation.enabled off. Its row stays empty.", icon=":material/warning:")
partial = table[(table["n_prompts"] > 0) & table["tox_after"].isna()]
if len(partial):
    st.warning("Only the 'before' side was evaluated for " + ", ".join(map(md, partial["name"]))
               + " (it stopped before training ended).", icon=":material/warning:")
mismatched = table[table["same_holdout"].eq(False)]
reference = table[table["same_holdout"].eq(True)]
if len(mismatched):
    st.warning(f"Evaluated on other hold-out prompts than {md(reference['name'].iloc[0])} ({reference['id'].iloc[0]}): "
               + ", ".join(map(md, mismatched["name"])) + ". Numbers on different prompts are not comparable: these rows are "
               "flagged in the table and left out of the charts. Put one of them first to compare against its "
               "prompts instead.", icon=":material/rule:")

with st.container(key="cmp-table"):  # a display-only table gets no key of its own in the page
    st.dataframe(table, hide_index=True, column_config=TABLE_COLUMNS,
                 column_order=[c for c in table.columns if c not in ("status", "harmlessness_before")])
st.download_button("Download CSV", table.to_csv(index=False), file_name="compare-methods.csv", mime="text/csv",
                   key="cmp-download", icon=":material/download:")
st.caption("change % = (after − before) / before × 100; negative = less toxic (as on the Runs page). Compute counts training only (evaluation is the same for every run): "
           "rollouts (PPO), completions (RLOO, GRPO) or preference pairs (DPO); sampled = responses the policy "
           "generated for training.")

shown = table[table["same_holdout"].eq(True) & table["tox_after"].notna()]
if shown.empty:
    st.info("No run here has a complete before/after evaluation to chart.")
    st.stop()
st.plotly_chart(charts.comparison_bars(shown), key="cmp-bars")

kl_points = lab.tradeoff(shown.assign(kl_before=0.0), "harmlessness_after", "mean_kl", (True, False),
                         "harmlessness_before", "kl_before")
kl_figure = charts.tradeoff_figure(kl_points, "harmlessness (1 − toxicity)", "KL to the base model",
                                   "Harmlessness vs KL (front: least KL for its harmlessness)",
                                   front_name="Pareto front (max harmlessness, min KL)")
if scorer is not None:
    points = lab.tradeoff(shown, "harmlessness_after", "helpfulness_after", (True, True), "harmlessness_before",
                          "helpfulness_before")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.tradeoff_figure(points, "harmlessness (1 − toxicity)", "helpfulness (reward model)",
                                               "Harmlessness vs helpfulness"), key="cmp-scatter")
    with right:
        st.plotly_chart(kl_figure, key="cmp-kl")
    front = points[points["on_front"]]
    st.caption(f"Helpfulness: mean score of the reward model of {md(scorers[scorer].name)} ({scorer}) on prompt + "
               "response, in its own units (compare runs, not scorers); grey: the base model's responses. Pareto "
               "front (no run is both more harmless and more helpful): " + ", ".join(map(md, front["name"])) + ".")
else:
    st.plotly_chart(kl_figure, key="cmp-kl")
    st.caption("Grey: the base model's responses (KL 0). Pareto front (no run is both more harmless and closer to "
               "the base): " + ", ".join(map(md, kl_points[kl_points["on_front"]]["name"])) + ".")
