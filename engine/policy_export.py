"""A run's trained policy in the user's hands: a directory (or zip) `from_pretrained` loads, with a model card.

`export_policy(store, run_id, dest)` writes the run's final policy (or its checkpoint after `step`) as a Hugging Face
directory: the full weights, or the LoRA adapter when the run used LoRA (`merge=True`: the adapter merged into its
base, saved as a full model), the tokenizer, `README.md` (a model card: run, method, base model, the before/after
numbers and the split they come from, the run's config) and `rlaif_run.yaml` (the config itself).
`policy_zip(...)` zips that directory. Both are built on disk, file by file (the zip streams each file from disk in
chunks), so memory holds at most the model itself, and only when a PPO checkpoint is materialised or an adapter
merged; a final policy is copied without loading it.

Not in the export: PPO's value head (`value_head.pt`, the critic used only during training, stays in the run's
`policy/` directory) and optimizer / RNG / trainer state (the run's checkpoints keep them for `resume`).

Not responsible for: finding the policy (engine.policy_source) or serving the file (the CLI writes it; the UI's
download button reads it). Imports torch only to materialise a PPO checkpoint or to merge.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from engine.config import RunConfig, looks_like_hub_id
from engine.policy_source import PolicySource, PolicySourceError, find_policy

# Files a run directory holds for training only: never exported.
TRAINING_ONLY = {"value_head.pt", "optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json",
                 "training_args.bin", "policy.pt", "trainer.pt", "state.pt"}
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # already dense: zipped without compression
UI_ZIP_LIMIT_BYTES = 2 * 2**30  # the UI's download button serves a zip from the server's memory; above: the CLI


def _training_only(name: str) -> bool:
    return name in TRAINING_ONLY or name.startswith("rng_state")


def _fresh_dir(dest: Path) -> Path:
    """A temporary directory beside `dest` (renamed to `dest` when complete: a crash leaves no half export)."""
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _copy_policy_files(source: PolicySource, out: Path) -> None:
    for f in sorted(source.path.iterdir()):
        if f.is_file() and not _training_only(f.name):
            shutil.copy2(f, out / f.name)


def _model_cfg(source: PolicySource):
    """The source run's ModelSettings, on the CPU (an export needs no accelerator)."""
    cfg = RunConfig.from_yaml(source.config_yaml)
    cfg.model.device = "cpu"
    cfg.model.init_from = ""  # its weights come from the checkpoint below
    return cfg.model


def materialize(source: PolicySource, out: Path) -> None:
    """Write a PPO checkpoint's policy as a `from_pretrained` directory (full weights or adapter + tokenizer)."""
    from engine.models import load_policy, save_policy
    from engine.policy_source import apply_init

    bundle = load_policy(_model_cfg(source))
    apply_init(bundle, source)
    save_policy(bundle, out)
    (out / "value_head.pt").unlink(missing_ok=True)  # a fresh critic, not the run's: never exported


def _ensure_tokenizer(source: PolicySource, out: Path) -> None:
    """A Trainer checkpoint may lack the tokenizer: save the base's (the run never changes it)."""
    if (out / "tokenizer_config.json").is_file() or not source.base:
        return
    from engine.models import is_seq2seq, load_tokenizer, resolve_model_path

    path = resolve_model_path(source.base)
    load_tokenizer(path, is_seq2seq(path, source.architecture)).save_pretrained(out)


def merge_adapter(adapter_dir: str | Path, base: str, out: str | Path, architecture: str = "auto",
                  dtype: str = "float32") -> Path:
    """The LoRA adapter at `adapter_dir` merged into its base model `base`, saved to `out` as a full model
    (`from_pretrained` loads it without peft), with the adapter's tokenizer files."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from engine.models import _dtype, is_seq2seq, resolve_model_path

    path = resolve_model_path(base)
    cls = AutoModelForSeq2SeqLM if is_seq2seq(path, architecture) else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=_dtype("float32" if dtype == "auto" else dtype))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    for f in Path(adapter_dir).iterdir():  # tokenizer (and chat template) files, saved with the adapter
        if f.is_file() and not f.name.startswith("adapter_") and f.suffix not in STORED_SUFFIXES and \
                f.name not in ("README.md", "config.json", "generation_config.json") and not _training_only(f.name):
            shutil.copy2(f, out / f.name)
    return out


def export_policy(store, run_id: str, dest: str | Path, *, step: int | None = None, merge: bool = False) -> Path:
    """Write run `run_id`'s final policy (or its checkpoint after `step`) to the new directory `dest`; returns it.

    Full weights, or the LoRA adapter of a LoRA run (`merge`: merged into its base as a full model), the tokenizer,
    README.md (model card) and rlaif_run.yaml. PolicySourceError when the run has no such policy, when `merge` is
    asked of full weights, or when `dest` exists and is not empty (nothing is overwritten)."""
    source = find_policy(store, run_id, step)
    if merge and not source.is_adapter:
        raise PolicySourceError(f"{source.describe()} is already a full model: nothing to merge", "merge")
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise PolicySourceError(f"{dest} already exists and is not empty: give a new directory", "dest")
    tmp = _fresh_dir(dest)
    try:
        if source.kind == "ppo":
            materialize(source, tmp)
        else:
            _copy_policy_files(source, tmp)
            _ensure_tokenizer(source, tmp)
        if merge:
            adapter = tmp.with_name(tmp.name + "-adapter")
            os.replace(tmp, adapter)
            cfg = RunConfig.from_yaml(source.config_yaml)
            merge_adapter(adapter, source.base, tmp, cfg.model.architecture, cfg.model.dtype)
            shutil.rmtree(adapter)
        record = store.get_run(run_id)
        (tmp / "rlaif_run.yaml").write_text(record.config_yaml)
        (tmp / "README.md").write_text(model_card(record, source, merged=merge,
                                                         seq2seq=is_seq2seq_dir(tmp)))
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + "-adapter"), ignore_errors=True)
        raise
    return dest


def zip_directory(src: str | Path, zip_path: str | Path, root: str = "") -> Path:
    """Zip the files under `src` into `zip_path` (under the folder `root` inside the archive), streaming each file
    from disk; weights are stored, text deflated. Written under a temporary name, renamed when complete."""
    src, zip_path = Path(src), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for f in sorted(p for p in src.rglob("*") if p.is_file()):
                method = zipfile.ZIP_STORED if f.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
                zf.write(f, str(Path(root) / f.relative_to(src)) if root else str(f.relative_to(src)),
                         compress_type=method)
        os.replace(tmp, zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


def export_label(run_id: str, step: int | None = None, merge: bool = False) -> str:
    """The export's name: "<run>-policy", "<run>-step-4", with "-merged" for a merged adapter."""
    return f"{run_id}-{'policy' if step is None else f'step-{step}'}{'-merged' if merge else ''}"


def policy_zip(store, run_id: str, dest: str | Path | None = None, *, step: int | None = None,
               merge: bool = False) -> Path:
    """The run's policy export (see `export_policy`) as a zip file on disk; returns its path.

    dest None: `<output_dir>/<run id>/exports/<label>.zip`, reused while it is newer than the policy it was built
    from (a final policy and a checkpoint never change). The directory is built beside the zip and removed after."""
    source = find_policy(store, run_id, step)
    label = export_label(run_id, step, merge)
    if dest is None:
        cfg = RunConfig.from_yaml(store.get_run(run_id).config_yaml)
        dest = Path(cfg.output_dir).expanduser().resolve() / run_id / "exports" / f"{label}.zip"
        if dest.is_file() and dest.stat().st_mtime >= source.path.stat().st_mtime:
            return dest
    dest = Path(dest)
    work = dest.with_name(f".{label}.build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        export_policy(store, run_id, work, step=step, merge=merge)
        return zip_directory(work, dest, root=label)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ model card
def _num(value: Any, fmt: str = ".4f") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(v) else format(v, fmt)


def results_table(summary: dict[str, Any]) -> str:
    """The before/after numbers of a run's summary as a Markdown table with the split they come from."""
    if not summary.get("before"):
        return "No before/after evaluation (evaluation was off, or the run did not finish).\n"
    b, a = summary["before"], summary["after"]
    n = b.get("n", "?")
    lines = [f"Hold-out **{summary.get('split', 'test')}** split: {summary.get('holdout_prompts', '?')} prompts, "
             f"{n} responses per side; evaluator `{summary.get('evaluator', '?')}`. \"Before\" is the base model "
             "(the run's KL reference), \"after\" the trained policy.", "",
             "| | before | after |", "|---|---|---|",
             f"| mean toxicity | {_num(b.get('mean'))} | {_num(a.get('mean'))} |",
             f"| toxic rate | {_num(b.get('toxic_rate'), '.3f')} | {_num(a.get('toxic_rate'), '.3f')} |",
             f"| max toxicity | {_num(b.get('max'))} | {_num(a.get('max'))} |"]
    if "length_before" in summary:
        lines.append(f"| mean response length (tokens) | {_num(summary['length_before'], '.1f')} | "
                     f"{_num(summary.get('length_after'), '.1f')} |")
    lines.append("")
    if "pct_improvement_mean" in summary:
        lines.append(f"Change of the mean toxicity: {-float(summary['pct_improvement_mean']):+.1f} %"
                     + (f" (95 % CI of after − before: [{_num(summary['delta_ci_low'], '+.4f')}, "
                        f"{_num(summary['delta_ci_high'], '+.4f')}])" if "delta_ci_low" in summary else "") + ".")
    if "mean_kl" in summary:
        lines.append(f"Mean KL to the base: {_num(summary['mean_kl'], '.2f')} nats per response.")
    return "\n".join(lines) + "\n"


def is_seq2seq_dir(path: str | Path) -> bool:
    """Whether an exported directory holds an encoder-decoder (config.json) or an adapter for one."""
    import json

    p = Path(path)
    try:
        if (p / "adapter_config.json").is_file():
            return json.loads((p / "adapter_config.json").read_text()).get("task_type") == "SEQ_2_SEQ_LM"
        return bool(json.loads((p / "config.json").read_text()).get("is_encoder_decoder"))
    except (OSError, ValueError):
        return False


def model_card(record, source: PolicySource, merged: bool = False, seq2seq: bool = False) -> str:
    """README.md of an exported policy: what it is, how to load it, its before/after numbers, the run's config."""
    cfg = RunConfig.from_yaml(record.config_yaml)
    base = cfg.model.name_or_path
    summary = record.summary or {}
    adapter = source.is_adapter and not merged
    library = "peft" if adapter else "transformers"
    auto = "AutoModelForSeq2SeqLM" if seq2seq else "AutoModelForCausalLM"
    front = ["---", f"library_name: {library}"]
    if looks_like_hub_id(base) and not base.startswith("builtin:"):
        front.append(f"base_model: {base}")
    front += ["tags:", "- rlaif-lab", f"- {record.method}", "---", ""]
    what = ("a LoRA adapter (load it onto its base model)" if adapter else
            "the LoRA adapter merged into its base model: a full model" if merged else "the full model weights")
    where = (f"the final policy after {source.step} steps" if source.final
             else f"the checkpoint after step {source.step} (the numbers below are the final policy's)")
    if adapter:
        load = (f"from transformers import {auto}, AutoTokenizer\nfrom peft import PeftModel\n\n"
                f"base = {auto}.from_pretrained(BASE)  # {base}\n"
                "model = PeftModel.from_pretrained(base, \"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")")
        base_note = (f"\nBASE is the base model `{base}`"
                     + ("; a built-in name resolves with `engine.models.resolve_model_path` (adapter_config.json's "
                        "`base_model_name_or_path` names its files on the machine that trained it)."
                        if base.startswith("builtin:") else ".")
                     + " For one standalone model, export with `--merge`.\n")
    else:
        load = (f"from transformers import {auto}, AutoTokenizer\n\n"
                f"model = {auto}.from_pretrained(\"path/to/this/folder\")\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")")
        base_note = ""
    lines = front + [
        f"# {record.name or record.id}: a policy trained by RLAIF Lab", "",
        f"- **Run**: `{record.id}` ({record.status}), method **{record.method}**",
        f"- **Base model**: `{base}`" + (" with LoRA (rank "
                                          f"{cfg.model.lora.r}, alpha {cfg.model.lora.alpha})" if source.is_adapter
                                          else ""),
        f"- **This folder**: {what}; {where}",
    ]
    if cfg.model.init_from:
        lines.append(f"- **Continued from**: `{cfg.model.init_from}`")
    lines += [
        "- **Not included**: PPO's value head (the critic, used only in training) and the optimizer state; the run's "
        "own folder keeps them.", "",
        "## Before / after", "", results_table(summary),
        "## How to load", "", "```python", load, "```", base_note,
        "Generation: the run sampled with the settings in `generation` below (the model's own generation_config is "
        "saved unchanged).", "",
        "## The run's config", "", "```yaml", record.config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)
