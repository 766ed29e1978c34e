"""Write docs/screenshots/ensemble_live.png: the Live run page of a tiny ensemble run (profanity + an LLM judge).

Usage: python docs/take_ensemble_screenshot.py [--steps 4] [--chromium /usr/bin/chromium] [--keep DIR]

Builds a random 2-layer GPT-2 with a byte-level BPE trained on the built-in dialogues (engine.assets
helpers, as tests/conftest.py does), starts the fake OpenAI-compatible endpoint of tests/judge_server.py,
runs a short PPO run (batch 4, mini-batch 2, max_new_tokens 8, builtin data, hold-out 8, profanity
evaluator) whose reward is the profanity classifier plus an `openai_judge` (model "fake", rubric
"toxicity", a made-up price so the cost column is filled) into a temporary SQLite store, then opens that run's Live page in Debian's chromium through
`streamlit run app/serve.py` and saves a full-height screenshot: one reward curve per signal and the
judge accounting table. Everything but the PNG lives in a temporary directory (kept with --keep).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots" / "ensemble_live.png"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # judge_server: the fake endpoint the judge tests use
sys.path.insert(0, str(ROOT / "docs"))  # take_screenshots: free_port, full_height

from take_screenshots import CHROMIUM_ARGS, full_height, lab_server  # noqa: E402


def build_tiny_gpt2(out_dir: Path) -> Path:
    """A random 2-layer, 32-wide GPT-2 and a 300-token BPE (eos = bos = pad, left padding), saved to out_dir."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from engine.assets import EOS_TOKEN, default_dialogues, train_bpe_tokenizer, wrap_tokenizer

    bpe = train_bpe_tokenizer(default_dialogues()[:200], vocab_size=300, special_tokens=[EOS_TOKEN])
    tok = wrap_tokenizer(bpe, 512, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
    tok.padding_side = "left"
    eos = tok.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def run_ensemble(model_dir: Path, db: Path, judge_url: str, steps: int) -> str:
    """The short PPO run with a profanity + openai_judge reward; returns its run id."""
    from engine.config import RewardBackendSettings, RunConfig
    from engine.runner import run
    from engine.store import Store

    cfg = RunConfig(name="ensemble-demo")
    cfg.model.name_or_path = str(model_dir)
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    cfg.generation.max_new_tokens = 8
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.reward.backends = [
        RewardBackendSettings(kind="profanity"),
        RewardBackendSettings(kind="openai_judge", name="judge",
                              options={"base_url": judge_url + "/v1", "model": "fake", "rubric": "toxicity",
                                       # a made-up price (USD per 1k tokens), so the cost column has a value
                                       "prices": {"fake": {"input": 0.5, "output": 1.5}}}),
    ]
    cfg.output_dir = str(db.parent / "out")
    with Store(db) as store:
        run_id, summary = run(cfg, store)
        status = store.get_run(run_id).status
    if status != "completed":
        sys.exit(f"run {run_id} ended {status}")
    print(f"run {run_id}: {steps} steps in {summary.get('wall_seconds', float('nan')):.1f} s")
    return run_id


def screenshot(db: Path, run_id: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with lab_server(db) as url:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(f"{url}/live?run={run_id}")
            pg.wait_for_selector(".st-key-chart-reward .js-plotly-plot", state="attached", timeout=60_000)
            pg.wait_for_selector(".st-key-judge-accounting [data-testid='stDataFrame']", state="attached",
                                 timeout=60_000)
            pg.wait_for_timeout(2500)
            full_height(pg, max_height=4400)  # eight charts, then the judge table
            pg.screenshot(path=OUT)
            browser.close()
        print(f"wrote {OUT.relative_to(ROOT)}")


def main() -> None:
    from judge_server import FakeJudgeServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--chromium", default=os.environ.get("RLAIF_LAB_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--keep", help="keep the model, store and checkpoints in this directory")
    args = ap.parse_args()

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ensemble-shot-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = (tmp / "lab.db").resolve()
    model_dir = build_tiny_gpt2(tmp / "tiny_gpt2")
    # A few ms per answer, so the latency percentiles in the table are not all zero.
    with FakeJudgeServer(default_reply="+5", latency_s=0.02) as server:
        run_id = run_ensemble(model_dir, db, server.url, args.steps)
        print(f"fake judge answered {len(server.requests)} requests")
    screenshot(db, run_id, args.chromium)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
