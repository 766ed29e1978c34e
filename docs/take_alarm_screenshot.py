"""Write docs/screenshots/alarms_live.png: the Live run page's alarm panel of a tiny run that games its judge.

Usage: python docs/take_alarm_screenshot.py [--steps 10] [--chromium /usr/bin/chromium] [--keep DIR]

The policy is the tests' tiny GPT-2 biased toward five common words (tests/test_alarms_runs.py: biased_gpt2); the
reward is an `openai_judge` against the fake OpenAI-compatible endpoint of tests/judge_server.py, here a lenient
judge whose "toxicity" score grows with how often the response says "the" (a reward that can be gamed by
repeating one word). A short PPO run (16 responses a step, lr 2e-2, probe every 2 steps) into a temporary store
fires reward-vs-probe, degeneration and KL runaway (10 steps); the page is opened in Debian's
chromium through `streamlit run app/serve.py`, the first alarm's evidence expanded, and the alarm panel saved.
Everything but the PNG lives in a temporary directory (kept with --keep).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots" / "alarms_live.png"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # judge_server and the biased tiny model of the alarm tests
sys.path.insert(0, str(ROOT / "docs"))

from take_ensemble_screenshot import build_tiny_gpt2  # noqa: E402
from take_screenshots import CHROMIUM_ARGS, lab_server  # noqa: E402


def lenient_judge():
    """A FakeJudgeServer scoring each response -5 .. +5 by its count of the word "the" (minus 3)."""
    from judge_server import FakeJudgeServer

    class Lenient(FakeJudgeServer):
        def plan(self, text: str):
            response = re.search(r"<response>(.*)</response>", text, re.DOTALL)
            n = (response.group(1) if response else "").split().count("the")
            return "reply", str(max(-5, min(5, n - 3)))

    return Lenient()


def run_hack(model_dir: Path, db: Path, judge_url: str, steps: int) -> str:
    from engine.config import RewardBackendSettings, RunConfig
    from engine.runner import run
    from engine.store import Store

    cfg = RunConfig(name="gamed-judge")
    cfg.model.name_or_path, cfg.model.mixed_precision = str(model_dir), "none"
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.max_ppo_steps, p.num_generations, p.learning_rate = 16, 4, steps, 1, 2e-2
    cfg.generation.max_new_tokens, cfg.generation.min_length = 16, 1
    cfg.data.source, cfg.data.holdout_size = "builtin", 8
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.samples_per_prompt, cfg.evaluation.bootstrap_samples = 1, 200
    cfg.alarms.probe_every, cfg.alarms.probe_prompts = 2, 4
    cfg.checkpoint.every_steps = 0
    cfg.reward.backends = [RewardBackendSettings(kind="openai_judge", name="lenient", options={
        "base_url": judge_url + "/v1", "model": "fake", "rubric": "toxicity", "cache": False})]
    cfg.output_dir = str(db.parent / "out")
    with Store(db) as store:
        run_id, _ = run(cfg, store)
        fired = store.alarms(run_id)
    print(f"run {run_id}: alarms {fired.name.tolist()} at steps {fired.step.tolist()}")
    return run_id


def screenshot(db: Path, run_id: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with lab_server(db) as url:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(f"{url}/live?run={run_id}")
            panel = pg.locator(".st-key-alarms-panel")
            panel.wait_for(state="attached", timeout=60_000)
            panel.locator("[data-testid='stExpander'] summary").first.click()
            pg.wait_for_selector(".st-key-alarms-panel [data-testid='stDataFrame']", timeout=60_000)
            pg.wait_for_timeout(2000)
            panel.screenshot(path=OUT)
            browser.close()
        print(f"wrote {OUT.relative_to(ROOT)}")


def main() -> None:
    from test_alarms_runs import WORDS, biased_gpt2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--chromium", default=os.environ.get("RLAIF_LAB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--keep", help="keep the model and store in this directory")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-fake-local-endpoint")

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="alarm-shot-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = (tmp / "lab.db").resolve()
    base = build_tiny_gpt2(tmp / "tiny_gpt2")
    model = biased_gpt2(base, tmp / "chatty", dict.fromkeys(WORDS, 0.86) | {"eos": 0.86})
    with lenient_judge() as server:
        run_id = run_hack(model, db, server.url, args.steps)
    screenshot(db, run_id, args.chromium)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
