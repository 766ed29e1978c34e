"""The lab in a real browser: launch a tiny run, watch its KL curve grow live, cancel it, read a finished run's
before/after table; and two measurements (store-to-browser latency, render time of a 20,000-step run).

Run with `pytest tests/e2e -m browser -s` to see the measured numbers; RLAIF_LAB_SCREENSHOTS=1 also refreshes
docs/screenshots/*.png.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
from playwright.sync_api import expect

from engine.config import RewardBackendSettings, RunConfig

pytestmark = pytest.mark.browser

CHART_POINTS_JS = """name => {
    const d = document.querySelector('.st-key-chart-' + name + ' .js-plotly-plot');
    if (!d || !d._fullData) return [];
    return d._fullData.map(t => [t.name, t.x ? t.x.length : 0]);
}"""
RESULTS: dict[str, object] = {}


def tiny_config(model_dir, name: str, steps: int, out, evaluate: bool = True) -> RunConfig:
    cfg = RunConfig(name=name)
    cfg.output_dir = str(out)  # checkpoints of the test's runs stay in its tmp dir
    cfg.evaluation.enabled = evaluate
    cfg.model.name_or_path = str(model_dir)
    cfg.model.device = "cpu"
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 200
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.ppo.samples_per_step = 2
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    cfg.generation.max_new_tokens = 8
    return cfg


def open_page(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("[data-testid='stApp'] h1")


def kl_points(pg) -> int:
    traces = pg.evaluate(CHART_POINTS_JS, "kl")
    return next((n for name, n in traces if name == "objective/kl"), 0)


def status_of(pg) -> str:
    return pg.get_by_text("Status:").first.inner_text()  # the Live page's caption under the phase line


def launch_from_yaml(pg, server, cfg: RunConfig, tmp_path) -> str:
    """Upload a YAML config on the launch page, press Start, land on the new run's live page; its id."""
    open_page(pg, f"{server.url}/")  # the default page lives at the root
    path = tmp_path / f"{cfg.name}.yaml"
    cfg.save(path)
    pg.get_by_text("Load, clone or save a config").click()
    pg.locator(".st-key-upload-config input[type=file]").set_input_files(str(path))
    pg.get_by_text(f"Loaded {path.name}").wait_for()
    expect(pg.locator(".st-key-cfg-name input")).to_have_value(cfg.name)  # later in the same rerun's stream
    pg.locator(".st-key-start-run button").click()
    pg.wait_for_url("**/live?run=*")
    pg.wait_for_selector(".st-key-chart-kl")
    return pg.url.split("run=")[1].split("&")[0]


def test_launch_watch_the_kl_curve_grow_and_cancel(lab_server, page, tiny_gpt2_dir, tmp_path, screenshot_dir):
    pg = page
    # validation shows next to the field before anything starts, in the real page
    open_page(pg, f"{lab_server.url}/")
    pg.get_by_text("PPO settings", exact=True).click()  # the non-essential fields live in expanders
    box = pg.locator(".st-key-cfg-ppo-mini_batch_size input")
    box.fill("5")
    box.press("Enter")
    pg.get_by_text("must divide batch_size (32) exactly, got 5", exact=True).wait_for()  # under its field
    # the error and the Start button are drawn by the same rerun, top to bottom: wait for the button's turn
    pg.locator(".st-key-start-run button:disabled").wait_for(timeout=30_000)
    box.fill("4")
    box.press("Enter")
    expect(pg.get_by_text("must divide batch_size")).to_have_count(0)  # under the field and in the list at the top
    pg.screenshot(path=screenshot_dir / "launch.png")

    # long enough never to finish inside the test's waits (it is cancelled below): 2,000 tiny steps once completed
    # on an idle machine before the second chart update came
    long_steps = 200_000
    long_run = tiny_config(tiny_gpt2_dir, "e2e-long", steps=long_steps, out=tmp_path / "runs", evaluate=False)
    run_id = launch_from_yaml(pg, lab_server, long_run, tmp_path)
    pg.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloads
    pg.wait_for_function(f"() => ({CHART_POINTS_JS})('kl').some(t => t[0] === 'objective/kl' && t[1] >= 1)",
                         timeout=300_000)
    first = kl_points(pg)
    # a redraw waits >= 20x what the last one cost the server and >= 50x the browser's long tasks (pages/live.py):
    # on a loaded machine that is minutes
    pg.wait_for_function(f"n => ({CHART_POINTS_JS})('kl').some(t => t[0] === 'objective/kl' && t[1] > n)",
                         arg=first, timeout=300_000)
    assert kl_points(pg) > first
    assert pg.evaluate("window.__sameDocument") == "yes"  # new points arrived without a reload
    assert "running" in status_of(pg)
    pg.wait_for_timeout(1500)
    pg.screenshot(path=screenshot_dir / "live.png")

    pg.get_by_role("button", name="Cancel run").click()  # a popover that asks first
    pg.locator(".st-key-cancel-run button").click()
    pg.wait_for_function("() => document.body.innerText.includes('Status: cancelled')", timeout=300_000)
    with lab_server.store() as store:
        run = store.get_run(run_id)
    assert run.status == "cancelled" and 1 <= run.step < long_steps


def test_finished_run_before_after_table(lab_server, page, tiny_gpt2_dir, tmp_path, screenshot_dir):
    pg = page
    short_run = tiny_config(tiny_gpt2_dir, "e2e-short", steps=3, out=tmp_path / "runs")
    run_id = launch_from_yaml(pg, lab_server, short_run, tmp_path)
    pg.wait_for_function("() => document.body.innerText.includes('Status: completed')", timeout=600_000)
    open_page(pg, f"{lab_server.url}/before_after?run={run_id}")
    pg.locator(".st-key-ba-table table tr").nth(8).wait_for(state="attached")
    rows = pg.locator(".st-key-ba-table table tr").evaluate_all(
        "rs => rs.map(r => Array.from(r.querySelectorAll('td,th')).map(c => c.textContent))")
    header, body = rows[0], rows[1:]
    # the table shares the row with the detail pane: its accessible mirror holds the columns in view
    assert header[:4] == ["#", "dialogue", "response before", "toxicity before"]
    assert [r[0] for r in body] == [str(i) for i in range(8)]
    with lab_server.store() as store:
        expected = store.evaluations(run_id)
    before = expected[expected.phase == "before"].set_index("idx")
    for r in body:
        assert float(r[3]) == pytest.approx(before.loc[int(r[0]), "toxicity"], abs=1e-3)
    assert pg.get_by_text("Std after", exact=True).count() == 1
    pg.screenshot(path=screenshot_dir / "before_after.png")


def table_rows(pg, selector: str) -> list[list[str]]:
    """The text of a st.dataframe's cells (its accessible table mirrors the canvas)."""
    return pg.locator(f"{selector} table tr").evaluate_all(
        "rs => rs.map(r => Array.from(r.querySelectorAll('td,th')).map(c => c.textContent))")


def test_runs_and_playground_pages(lab_server, page, screenshot_dir):
    pg = page
    with lab_server.store() as store:  # one run of "another process" besides those earlier tests made
        other = store.create_run(RunConfig(name="listed").to_yaml(), name="listed")
        store.set_status(other, "running")
        store.set_status(other, "failed", error="ValueError: for the list")
        expected = {r.name: r.status for r in store.list_runs()}  # names are unique in this session
    open_page(pg, f"{lab_server.url}/runs")
    pg.locator(".st-key-runs-table table tr").nth(len(expected)).wait_for(state="attached")
    rows = table_rows(pg, ".st-key-runs-table")
    header = rows[0]
    shown = {r[header.index("name")]: r[header.index("status")] for r in rows[1:]}  # name and status lead the table
    assert shown == expected
    pg.screenshot(path=screenshot_dir / "runs.png")

    open_page(pg, f"{lab_server.url}/playground")
    pg.locator("[data-testid='stDataFrame'] table tr").nth(2).wait_for(state="attached", timeout=60_000)
    rows = table_rows(pg, "[data-testid='stDataFrame']")
    scores = {r[0]: r for r in rows[1:]}
    col = rows[0].index("profanity toxicity")
    assert float(scores["You are terrible and i hate you."][col]) > float(scores["I like you."][col])
    pg.screenshot(path=screenshot_dir / "playground.png")


def test_latency_from_store_row_to_browser(lab_server, page):
    """Metric rows written by another process are drawn in the live KL chart without a reload; prints the latency
    (served by app/serve.py the page redraws on a new row, at most every 5 s and no sooner than 20x its last draw's
    cost, so that watching costs the run nothing measurable: a few seconds is expected)."""
    with lab_server.store() as store:
        run_id = store.create_run(RunConfig(name="latency").to_yaml(), name="latency", total_steps=100)
        store.set_status(run_id, "running")
        store.log_metrics(run_id, 1, {"objective/kl": 0.1, "objective/kl_coef": 0.2})
        open_page(page, f"{lab_server.url}/live?run={run_id}")
        page.wait_for_function(f"() => ({CHART_POINTS_JS})('kl').some(t => t[0] === 'objective/kl' && t[1] === 1)")
        latencies = []
        for step in range(2, 10):
            page.wait_for_timeout(int(np.random.default_rng(step).uniform(100, 900)))  # land anywhere in the cycle
            t0 = time.perf_counter()
            store.log_metrics(run_id, step, {"objective/kl": 0.1 * step, "objective/kl_coef": 0.2})
            page.wait_for_function(f"n => ({CHART_POINTS_JS})('kl').some(t => t[0] === 'objective/kl' && t[1] === n)",
                                   arg=step, polling=25, timeout=90_000)
            latencies.append(time.perf_counter() - t0)
        store.set_status(run_id, "completed")
    RESULTS["latency_s"] = {"median": round(statistics.median(latencies), 3), "max": round(max(latencies), 3),
                            "all": [round(x, 3) for x in latencies]}
    print("\nstore → browser latency (s):", json.dumps(RESULTS["latency_s"]))
    # The latency is reported, not asserted (a timed test fails on a busy CPU); each point must arrive (90 s cap).


def charts_drawn_ms(pg, url: str, min_points: int) -> float:
    """Milliseconds from navigating to `url` until all 8 panels are drawn (the KL one with >= min_points)."""
    t0 = time.perf_counter()
    open_page(pg, url)
    pg.wait_for_function(f"n => document.querySelectorAll('.js-plotly-plot').length === 8 && "
                         f"({CHART_POINTS_JS})('throughput').length > 0 && "
                         f"({CHART_POINTS_JS})('kl').some(t => t[1] >= n)", arg=min_points, timeout=600_000)
    return 1000 * (time.perf_counter() - t0)


def redraw_ms(pg, label: str, axis_title: str) -> tuple[float, int]:
    """Switch the x axis: every figure is rebuilt from the session's data, sent and drawn. (browser ms, server ms)"""
    t = time.perf_counter()
    pg.locator(".st-key-x-axis").get_by_text(label, exact=True).click()
    pg.wait_for_function("t => Array.from(document.querySelectorAll('.js-plotly-plot')).every("
                         "d => d.layout && d.layout.xaxis.title.text === t)", arg=axis_title, timeout=120_000)
    ms = 1000 * (time.perf_counter() - t)
    text = pg.locator("[data-testid='stCaptionContainer']", has_text="drawn in").inner_text()
    return ms, int(text.split("drawn in ")[1].split(" ms")[0])


def redraws(pg) -> list[tuple[float, int]]:
    wall = "wall time since the first step (s)"
    return [redraw_ms(pg, "wall time", wall), redraw_ms(pg, "step", "training step"), redraw_ms(pg, "wall time", wall)]


def test_render_time_of_a_20000_step_run(lab_server, page):
    """Cold page load and redraws of a 20,000 × 20 run, against the same for a 10-step run."""
    from bench.bench_ui_render import write_big_run

    with lab_server.store() as store:
        small = write_big_run(store, steps=10, n_series=20)
        big = write_big_run(store, steps=20_000, n_series=20)
    small_ms = charts_drawn_ms(page, f"{lab_server.url}/live?run={small}", 10)
    small_redraws = redraws(page)
    big_ms = charts_drawn_ms(page, f"{lab_server.url}/live?run={big}", 1000)
    caption = page.locator("[data-testid='stCaptionContainer']", has_text="drawn in").inner_text()
    assert "400,000 metric rows · last step 20000" in caption
    built_ms = int(caption.split("drawn in ")[1].split(" ms")[0])
    for name in ("kl", "returns", "reward", "losses", "entropy", "clipfrac", "length", "throughput"):
        for _, n in page.evaluate(CHART_POINTS_JS, name):
            assert 0 < n <= 4000  # ~2,000 per series (a mean ± std band draws both edges)
    big_redraws = redraws(page)
    RESULTS["render_20000x20"] = {
        "cold_page_ms": {"10_steps": round(small_ms), "20000_steps": round(big_ms)},
        "server_panel_cold_ms": built_ms,
        "redraw_ms_10_steps": [round(b) for b, _ in small_redraws],
        "redraw_ms_20000_steps": [round(b) for b, _ in big_redraws],
        "redraw_server_panel_ms_20000_steps": [s for _, s in big_redraws]}
    print("\n20,000 × 20 run page:", json.dumps(RESULTS["render_20000x20"]))
    # The time is reported, not asserted (it depends on the machine's load): bench/bench_ui_render.py measures it.


def write_policy_run(store, name: str, method: str, after: list[float], kl: float) -> str:
    """A completed policy run with before/after evaluations, written as the runner writes them (no training)."""
    run_id = store.create_run(RunConfig(name=name, method=method).to_yaml(), name=name, method=method)
    store.set_status(run_id, "running")
    for phase, values in (("before", [0.8, 0.6, 0.2, 0.5]), ("after", after)):
        store.add_evaluations(run_id, phase, [
            {"idx": i, "prompt": f"compare hold-out {i}", "response": f"{phase} reply {i}", "toxicity": t,
             "scores": {"length": 12, "kl": 0.0 if phase == "before" else kl}} for i, t in enumerate(values)])
    store.set_summary(run_id, {"wall_seconds": 60.0})
    store.set_status(run_id, "completed")
    return run_id


def test_compare_page_table_and_scatter(lab_server, page, tiny_gpt2_dir, tmp_path, screenshot_dir):
    """Three methods' runs and a reward model written straight into the store; the Compare page shows their table,
    scores helpfulness with the reward model, and draws the harmlessness vs helpfulness scatter."""
    from dataclasses import asdict

    from engine.methods.reward_model import backend_settings, load_reward_model

    rm_dir = tmp_path / "reward_model"  # what a reward_model run saves: the tiny GPT-2 with a one-logit head
    model, tokenizer = load_reward_model(str(tiny_gpt2_dir))
    model.save_pretrained(rm_dir)
    tokenizer.save_pretrained(rm_dir)
    with lab_server.store() as store:
        runs = {"cmp-ppo": write_policy_run(store, "cmp-ppo", "ppo", [0.2, 0.3, 0.1, 0.2], kl=3.0),
                "cmp-dpo": write_policy_run(store, "cmp-dpo", "dpo", [0.5, 0.4, 0.2, 0.3], kl=0.8),
                "cmp-grpo": write_policy_run(store, "cmp-grpo", "grpo", [0.3, 0.3, 0.1, 0.3], kl=1.5)}
        rm = store.create_run(RunConfig(name="cmp-rm", method="reward_model").to_yaml(), name="cmp-rm",
                              method="reward_model")
        store.set_status(rm, "running")
        store.set_summary(rm, {"model_path": str(rm_dir), "pairwise_accuracy": 0.6,
                               "reward_backend": asdict(backend_settings(rm_dir, max_length=64))})
        store.set_status(rm, "completed")
    pg = page
    open_page(pg, f"{lab_server.url}/compare")
    pg.wait_for_selector(".st-key-cmp-scatter .js-plotly-plot", state="attached", timeout=120_000)
    pg.locator(".st-key-cmp-table table tr").nth(len(runs)).wait_for(state="attached")
    rows = table_rows(pg, ".st-key-cmp-table")
    header = rows[0]
    shown = {r[header.index("id")]: r for r in rows[1:]}
    assert set(runs.values()) <= set(shown)
    ppo = shown[runs["cmp-ppo"]]  # the accessible table holds the raw values of the columns in view
    assert float(ppo[header.index("toxicity after")]) == pytest.approx(0.2)
    assert float(ppo[header.index("change % (mean)")]) == pytest.approx(100 * (0.2 - 0.525) / 0.525)
    assert ppo[header.index("same hold-out")] == "true"
    traces = pg.evaluate("""() => document.querySelector('.st-key-cmp-scatter .js-plotly-plot')._fullData
        .map(t => [t.name, t.hovertext ? Array.from(t.hovertext) : []])""")
    labels = {label for _, texts in traces for label in texts}
    for name, rid in runs.items():
        assert f"{name} ({rid})" in labels
    assert {"ppo", "dpo", "grpo"} <= {name for name, _ in traces}
    with lab_server.store() as store:
        assert len(store.scores(runs["cmp-dpo"], f"reward_model:{rm}")) == 8  # scored once, kept in the store
    height = pg.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    pg.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 3200)})  # the whole page in one picture
    pg.wait_for_timeout(1500)
    pg.screenshot(path=screenshot_dir / "compare.png")
