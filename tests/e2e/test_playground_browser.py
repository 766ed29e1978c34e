"""The policy playground in a real browser at 1400 px and 1024 px: pick a completed tiny PPO run (executed by the
server's worker), ask for samples (a hold-out prompt at 1400, a typed one at 1024), and see the base model's and the
trained policy's samples side by side, each in its own column with the scores the worker stored; an empty prompt is
refused on the page before anything is queued.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from playwright.sync_api import expect

from engine.config import RewardBackendSettings, RunConfig
from engine.worker import submit, wait

pytestmark = pytest.mark.browser
WIDTHS = [1400, 1024]


@pytest.fixture(scope="module")
def played_run(lab_server, browser, tiny_gpt2_dir, tmp_path_factory):
    """A completed 2-step PPO run of the tiny GPT-2, executed by the server's worker (the browser fixture started it)."""
    cfg = RunConfig(name="played-in-browser")
    cfg.output_dir = str(tmp_path_factory.mktemp("played") / "out")
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(tiny_gpt2_dir), "cpu", "none"
    cfg.data.source, cfg.data.holdout_size = "builtin", 8
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity", name="judge")
    cfg.evaluation.samples_per_prompt, cfg.evaluation.bootstrap_samples, cfg.evaluation.relevance = 1, 100, False
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps, cfg.ppo.learning_rate = 4, 2, 2, 2e-2
    cfg.generation.max_new_tokens = 8
    with lab_server.store() as store:
        run_id = submit(store, cfg)
        assert wait(store, run_id, timeout=900) == "completed", store.get_run(run_id).error
    yield run_id
    # A playground process the server started (when its worker was busy) is no worker: stop_workers misses it.
    with lab_server.store() as store:
        pids = {int(g.owner.split("-")[-2]) for g in store.generations(run_id) if (g.owner or "").startswith("pg-")}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(params=WIDTHS, ids=lambda w: f"{w}px")
def wide_page(browser, request):
    context = browser.new_context(viewport={"width": request.param, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(120_000)  # waits return at once when ready; a busy machine needs minutes
    yield pg, request.param
    context.close()


def test_playground_shows_base_and_trained_samples_side_by_side(lab_server, played_run, wide_page, screenshot_dir):
    pg, width = wide_page
    run_id = played_run
    with lab_server.store() as store:
        before = {g.id for g in store.generations(run_id)}
    pg.goto(f"{lab_server.url}/policy_playground?run={run_id}")
    pg.get_by_role("heading", name="Policy playground").wait_for(timeout=180_000)
    pg.get_by_role("button", name="Generate").wait_for()  # the run is preselected by ?run= (checked below: the request)

    # An empty prompt is refused on the page, naming the field; nothing is queued.
    pg.get_by_role("button", name="Generate").click()
    pg.get_by_text("prompt: type a prompt or pick a hold-out prompt").wait_for()
    with lab_server.store() as store:
        assert {g.id for g in store.generations(run_id)} == before

    if width == 1400:
        pg.locator(".st-key-pp-source").get_by_text("A hold-out prompt", exact=True).first.click()
        pg.locator(".st-key-pp-holdout-" + run_id).wait_for()
    else:
        pg.locator(".st-key-pp-prompt textarea").fill("Human: What do you think of my neighbour?\n\nAssistant:")
    k = pg.locator(".st-key-pp-k input")
    k.fill("2")
    pg.get_by_role("button", name="Generate").click()
    base, trained = pg.locator(".st-key-pp-base"), pg.locator(".st-key-pp-trained")
    base.wait_for(timeout=300_000)
    trained.wait_for()
    for box in (base, trained):  # a box shows before all its contents have streamed in (slow on a loaded machine)
        expect(box).to_contain_text("mean toxicity (judge)")

    with lab_server.store() as store:
        new = [g for g in store.generations(run_id) if g.id not in before]
        holdout = list(store.evaluations(run_id)["prompt"])
    assert len(new) == 1 and new[0].status == "done", new
    g = new[0]
    assert g.settings["k"] == 2 and g.owner  # served by a process, not the web server
    if width == 1400:
        assert g.prompt in holdout
    else:
        assert "What do you think of my neighbour?" in g.prompt and g.prompt != "What do you think of my neighbour?"
    assert "Base model" in base.inner_text() and f"Trained policy · step {g.checkpoint_step}" in trained.inner_text()
    for side, box in (("base", base), ("trained", trained)):
        text = box.inner_text()
        assert "mean profanity" in text and "mean toxicity (judge)" in text
        for i, row in enumerate(g.result[side]):
            sample = box.locator(f".st-key-pp-{side}-{i}").inner_text()
            # each sample sits in its own column with its own stored scores
            assert f"profanity {row['rewards']['profanity']:.3f}" in sample
            assert f"toxicity {row['toxicity']:.3f}" in sample and f"{row['length']} tokens" in sample
            words = row["response"].split()
            assert " ".join(words[:3]) in " ".join(sample.split()), (row["response"], sample)
        assert box.locator(f".st-key-pp-{side}-2").count() == 0  # k = 2
    assert "KL" in trained.inner_text() and "KL to base" not in base.inner_text()
    if width == 1400:
        height = pg.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        pg.set_viewport_size({"width": 1400, "height": max(1100, min(int(height) + 40, 3200))})
        pg.wait_for_timeout(1500)
        pg.screenshot(path=screenshot_dir / "policy_playground.png")
