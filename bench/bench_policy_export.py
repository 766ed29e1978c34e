"""What exporting a run's policy costs: seconds, zip size and this process's peak memory for (1) the zip of a final
full-weights policy (copied file by file, never loaded), (2) the zip of a LoRA adapter, (3) the adapter merged into its
base and zipped (the one export that loads the model).

Usage: python bench/bench_policy_export.py [--smoke] [--model builtin:smollm2]

Each policy is recorded as a completed run's final policy in a throwaway store (as a run leaves it); the adapter is a
fresh LoRA (rank 16, PEFT's default modules) with its B matrices perturbed so that the merge changes the weights.
--smoke: a tiny GPT-2 built in a temporary folder (seconds; for CI). Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_policy(store, model: str, policy_src: Path, out: Path, lora: bool) -> str:
    from engine.config import RunConfig

    cfg = RunConfig(name="bench-export-lora" if lora else "bench-export-full")
    cfg.model.name_or_path, cfg.model.lora.enabled, cfg.output_dir = model, lora, str(out)
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, total_steps=1)
    final = out / run_id / "policy"
    shutil.copytree(policy_src, final)
    store.set_status(run_id, "running")
    store.add_checkpoint(run_id, 1, str(final.resolve()))
    store.set_status(run_id, "completed")
    return run_id


def timed(label: str, fn, rows: list) -> Path:
    t0 = time.perf_counter()
    path = fn()
    rows.append((label, time.perf_counter() - t0, path.stat().st_size / 2**20, peak_mib()))
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a tiny GPT-2 (seconds)")
    ap.add_argument("--model", default="builtin:smollm2")
    args = ap.parse_args()

    from engine.models import resolve_model_path
    from engine.policy_export import policy_zip
    from engine.store import Store

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:
            from _tiny import build_gpt2

            build_gpt2(tmp / "model", vocab=512, n_embd=32, n_layer=2, n_head=2, n_dialogues=50)
            model = str(tmp / "model")
        else:
            model = args.model
        path = Path(resolve_model_path(model))
        store = Store(tmp / "runs.db")
        rows: list = []
        start = peak_mib()
        full = record_policy(store, model, path, tmp / "out", lora=False)
        timed("full weights -> zip (no model load)", lambda: policy_zip(store, full, tmp / "full.zip"), rows)

        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        lm = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(r=16, lora_alpha=32,
                                                                                 task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.01)
        adapter_dir = tmp / "adapter"
        lm.save_pretrained(adapter_dir)
        AutoTokenizer.from_pretrained(path).save_pretrained(adapter_dir)
        del lm
        loaded = peak_mib()
        lora = record_policy(store, model, adapter_dir, tmp / "out", lora=True)
        timed("LoRA adapter -> zip", lambda: policy_zip(store, lora, tmp / "adapter.zip"), rows)
        timed("LoRA merged into base -> zip", lambda: policy_zip(store, lora, tmp / "merged.zip", merge=True), rows)

        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
        print(f"model {model}: {size:.0f} MiB on disk; peak RSS before the first export {start:.0f} MiB, after "
              f"building the adapter (model loaded once) {loaded:.0f} MiB")
        print(f"{'export':40} {'seconds':>8} {'zip MiB':>9} {'peak RSS MiB':>13}")
        for label, seconds, mib, peak in rows:
            print(f"{label:40} {seconds:>8.2f} {mib:>9.1f} {peak:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
