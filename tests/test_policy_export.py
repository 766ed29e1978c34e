"""The trained model in the user's hands (issue 12, item 3): a run's policy exported (full weights or LoRA adapter,
tokenizer, model card) and loaded back with `from_pretrained` / `PeftModel.from_pretrained` giving the trained policy's
logits; a LoRA adapter merged into its base; a new run that continues from a run's final policy or checkpoint, starting
from exactly its weights, and bad references refused before anything is queued.

Real tiny PPO runs (the conftest's 2-layer GPT-2) whose in-memory policy is captured at each checkpoint and at the
final save, so the exported files are compared with the weights that were trained, not with themselves.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from engine import api
from engine.__main__ import main as cli
from engine.config import ConfigError, RewardBackendSettings, RunConfig, validate
from engine.methods.ppo import PPO
from engine.policy_export import export_policy, policy_zip
from engine.policy_source import PolicySourceError, find_policy
from engine.runner import execute
from engine.store import Store

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])


def logits_of(lm) -> torch.Tensor:
    lm.eval()
    with torch.no_grad():
        return lm(input_ids=IDS).logits.float()


class Capturing(PPO):
    """PPO that records its policy's logits on IDS at the start of training, at each checkpoint and at the final
    save: the weights that were trained, as they were in memory."""

    def __init__(self, into: dict) -> None:
        super().__init__()
        self.into = into

    def train(self, run):
        self.into["start"] = logits_of(run.bundle.policy.lm)
        save = run.save_checkpoint

        def save_and_capture(step, write):
            self.into[step] = logits_of(run.bundle.policy.lm)
            return save(step, write)

        run.save_checkpoint = save_and_capture
        return super().train(run)

    def save_policy(self, bundle, out_dir):
        self.into["final"] = logits_of(bundle.policy.lm)
        return super().save_policy(bundle, out_dir)


def tiny_config(model_dir, out: Path, lora: bool, steps: int = 2) -> RunConfig:
    cfg = RunConfig(name="export-lora" if lora else "export-full")
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(model_dir), "cpu", "none"
    cfg.model.lora.enabled, cfg.model.lora.r, cfg.model.lora.alpha = lora, 4, 8
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 4, 48
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples, cfg.evaluation.samples_per_prompt = 50, 1
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 4, 2, 2, steps
    p.learning_rate = 1e-2  # large: every step visibly moves the tiny model's logits
    cfg.generation.max_new_tokens = 6
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 1, 5
    cfg.output_dir = str(out)
    return cfg


def run_captured(cfg: RunConfig, store: Store) -> tuple[str, dict]:
    captured: dict = {}
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("engine.runner.policy_method", lambda name: Capturing(captured))
        execute(cfg, store, run_id)
    assert store.get_run(run_id).status == "completed"
    return run_id, captured


@pytest.fixture(scope="module")
def trained(tiny_gpt2_dir, tmp_path_factory):
    """One store with a full-weights PPO run and a LoRA PPO run (2 steps, a checkpoint after each)."""
    root = tmp_path_factory.mktemp("policy_export")
    store = Store(root / "runs.db")
    runs = {}
    for lora in (False, True):
        cfg = tiny_config(tiny_gpt2_dir, root / "out", lora)
        runs["lora" if lora else "full"] = run_captured(cfg, store)
    return store, runs, root


def unzip(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        zf.extractall(dest)
    (top,) = {n.split("/")[0] for n in names}
    return dest / top


def test_full_policy_zip_loads_with_from_pretrained_and_gives_the_trained_logits(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store, runs, _ = trained
    run_id, captured = runs["full"]
    folder = unzip(policy_zip(store, run_id, tmp_path / "policy.zip"), tmp_path / "x")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "rlaif_run.yaml", "tokenizer_config.json"} <= names
    assert "value_head.pt" not in names and "adapter_config.json" not in names  # the policy alone
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits_of(model), captured["final"], rtol=0, atol=1e-6)
    assert not torch.allclose(captured["final"], captured["start"], atol=1e-3)  # training moved it
    AutoTokenizer.from_pretrained(folder)

    card = (folder / "README.md").read_text()
    summary = store.get_run(run_id).summary
    assert "method **ppo**" in card and "Hold-out **test** split" in card
    assert f"{summary['before']['mean']:.4f}" in card and f"{summary['after']['mean']:.4f}" in card
    assert store.get_run(run_id).config_yaml.strip() in card
    assert RunConfig.from_yaml((folder / "rlaif_run.yaml").read_text()).name == "export-full"


def test_checkpoint_export_gives_that_steps_weights(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    store, runs, _ = trained
    run_id, captured = runs["full"]
    assert find_policy(store, run_id, 1).kind == "ppo"  # a PPO checkpoint (policy.pt), written as a model dir
    out = export_policy(store, run_id, tmp_path / "step1", step=1)
    torch.testing.assert_close(logits_of(AutoModelForCausalLM.from_pretrained(out)), captured[1], rtol=0, atol=1e-6)
    assert not torch.allclose(captured[1], captured["final"], atol=1e-3)
    assert "checkpoint after step 1" in (out / "README.md").read_text()
    assert not (out / "value_head.pt").exists()


def test_lora_adapter_export_and_merge(trained, tiny_gpt2_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    store, runs, _ = trained
    run_id, captured = runs["lora"]
    folder = unzip(policy_zip(store, run_id, tmp_path / "adapter.zip"), tmp_path / "a")
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    assert "library_name: peft" in (folder / "README.md").read_text()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), folder)
    torch.testing.assert_close(logits_of(with_adapter), captured["final"], rtol=0, atol=1e-6)

    merged_zip = policy_zip(store, run_id, tmp_path / "merged.zip", merge=True)
    merged_dir = unzip(merged_zip, tmp_path / "m")
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)  # no peft needed
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits_of(merged), logits_of(with_adapter), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits_of(merged), logits_of(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)),
                              atol=1e-3)  # the adapter is in it

    # a LoRA checkpoint (the adapter's weights in policy.pt) exports as an adapter directory too
    step1 = export_policy(store, run_id, tmp_path / "lora-step1", step=1)
    peft_step1 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), step1)
    torch.testing.assert_close(logits_of(peft_step1), captured[1], rtol=0, atol=1e-6)

    with pytest.raises(PolicySourceError, match="nothing to merge"):
        export_policy(store, runs["full"][0], tmp_path / "nope", merge=True)


def test_cli_export_policy(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    store, runs, _ = trained
    run_id, captured = runs["full"]
    db = str(store.url)
    assert cli(["--db", db, "export", run_id, "--policy", str(tmp_path / "cli-policy")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cli-policy")
    torch.testing.assert_close(logits_of(model), captured["final"], rtol=0, atol=1e-6)
    # nothing is overwritten; a step without a checkpoint is named
    assert cli(["--db", db, "export", run_id, "--policy", str(tmp_path / "cli-policy")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli(["--db", db, "export", run_id, "--policy", str(tmp_path / "s.zip"), "--step", "7"]) == 2
    assert "no checkpoint after step 7" in capsys.readouterr().err
    assert not (tmp_path / "s.zip").exists()


@pytest.mark.parametrize("which,step", [("lora", None), ("full", 1)], ids=["lora-final", "full-checkpoint"])
def test_continue_training_starts_from_the_source_weights(trained, which, step, capsys):
    store, runs, root = trained
    source_id, source = runs[which]
    cfg = api.Lab(store, start_worker=False).continue_config(source_id, step)
    assert cfg.model.init_from == f"run:{source_id}" + (f"@{step}" if step is not None else "")
    cfg.ppo.max_ppo_steps = 1
    new_id, captured = run_captured(cfg, store)
    torch.testing.assert_close(captured["start"], source["final" if step is None else step], rtol=0, atol=1e-6)
    summary = store.get_run(new_id).summary
    assert summary["init_from"] == cfg.model.init_from
    assert cli(["--db", str(store.url), "show", new_id]) == 0
    assert f"continued from {cfg.model.init_from}" in capsys.readouterr().out
    # the KL reference (and the "before" side) is still the base model: the same responses as the source's before
    before_new = store.evaluations(new_id, "before")["response"].tolist()
    assert before_new == store.evaluations(source_id, "before")["response"].tolist()


def test_bad_references_are_refused_before_queueing(trained, tiny_gpt2_dir, tmp_path):
    store, runs, root = trained
    lab = api.Lab(store, start_worker=False)
    lora_id, full_id = runs["lora"][0], runs["full"][0]
    empty_id = store.create_run(tiny_config(tiny_gpt2_dir, root / "out", False).to_yaml(), name="never-ran")
    rm_cfg = tiny_config(tiny_gpt2_dir, root / "out", False)
    rm_cfg.method = "reward_model"
    rm_id = store.create_run(rm_cfg.to_yaml(), name="rm", method="reward_model")
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_gpt2_dir, other_base)

    def attempt(init_from: str, lora: bool = False, **model) -> tuple[str, str]:
        cfg = tiny_config(tiny_gpt2_dir, root / "out", lora)
        cfg.model.init_from = init_from
        for k, v in model.items():
            setattr(cfg.model, k, v) if k != "r" else setattr(cfg.model.lora, "r", v)
        before = len(store.list_runs())
        with pytest.raises(ConfigError) as exc:
            lab.start_run(cfg)
        assert len(store.list_runs()) == before  # nothing queued
        (err,) = exc.value.errors
        return err.field, err.message

    assert attempt("run:no-such-run") == ("model.init_from", "no run with id 'no-such-run' in this store")
    field, msg = attempt(f"run:{empty_id}")
    assert field == "model.init_from" and "has no final policy" in msg
    field, msg = attempt(f"run:{full_id}@99")
    assert field == "model.init_from" and "no checkpoint after step 99" in msg and f"run:{full_id}@1" in msg
    field, msg = attempt(f"run:{rm_id}")
    assert field == "model.init_from" and "not a policy" in msg
    field, msg = attempt(f"run:{lora_id}", lora=True, name_or_path=str(other_base))
    assert field == "model.name_or_path" and "was trained from" in msg
    field, msg = attempt(f"run:{lora_id}", lora=False)
    assert field == "model.lora.enabled" and "LoRA adapter" in msg
    field, msg = attempt(f"run:{lora_id}", lora=True, r=8)
    assert field == "model.lora.r"
    field, msg = attempt(f"run:{full_id}", lora=True)
    assert field == "model.lora.enabled" and "full model" in msg
    # a directory: the adapter's own base is checked too
    adapter_dir = export_policy(store, lora_id, tmp_path / "adapter")
    field, msg = attempt(str(adapter_dir), lora=True, name_or_path=str(other_base))
    assert field == "model.name_or_path" and "belongs to the base" in msg
    # files gone since: missing on disk
    final = find_policy(store, full_id).path
    moved = final.with_name("policy-moved")
    final.rename(moved)
    try:
        field, msg = attempt(f"run:{full_id}")
        assert "missing on disk" in msg or "has no final policy" in msg
    finally:
        moved.rename(final)
    # malformed references: the config's own validation, no store needed
    cfg = RunConfig()
    cfg.model.init_from = "run:abc@x"
    assert [e.field for e in validate(cfg)] == ["model.init_from"]
    cfg.model.init_from = str(tmp_path / "nowhere")
    assert [e.field for e in validate(cfg)] == ["model.init_from"]


def test_cli_run_refuses_a_bad_reference_before_registering(trained, tiny_gpt2_dir, tmp_path, capsys):
    store, runs, root = trained
    cfg = tiny_config(tiny_gpt2_dir, root / "out", False)
    cfg.model.init_from = f"run:{runs['full'][0]}@42"
    path = cfg.save(tmp_path / "c.yaml")
    before = len(store.list_runs())
    assert cli(["--db", str(store.url), "run", str(path)]) == 2
    assert "no checkpoint after step 42" in capsys.readouterr().err
    assert len(store.list_runs()) == before


def test_seq2seq_policy_exports_and_continues_with_the_base_as_reference(tiny_t5_dir, tmp_path):
    """A T5 policy (weights perturbed as training would) recorded as a run's final policy: the export loads with
    AutoModelForSeq2SeqLM and its card says so; a run continuing from it loads exactly those weights into the policy
    while its reference stays the base."""
    from transformers import AutoModelForSeq2SeqLM

    from engine.methods.lifecycle import PolicyRun

    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_t5_dir, tmp_path / "out", lora=False)
    source_id = store.create_run(cfg.to_yaml(), name="t5", total_steps=2)
    trained = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    final = tmp_path / "out" / source_id / "policy"
    trained.save_pretrained(final)  # no tokenizer files, as in a Trainer checkpoint that did not save them
    store.add_checkpoint(source_id, 2, str(final))
    store.set_status(source_id, "running")
    store.set_status(source_id, "completed")

    def t5_logits(lm):
        lm.eval()
        with torch.no_grad():
            return lm(input_ids=IDS, decoder_input_ids=IDS[:, :3]).logits

    out = export_policy(store, source_id, tmp_path / "t5-export")
    torch.testing.assert_close(t5_logits(AutoModelForSeq2SeqLM.from_pretrained(out)), t5_logits(trained),
                               rtol=0, atol=1e-6)
    assert "AutoModelForSeq2SeqLM" in (out / "README.md").read_text()
    assert (out / "tokenizer_config.json").is_file()  # the base's tokenizer saved beside it

    new = tiny_config(tiny_t5_dir, tmp_path / "out", lora=False)
    new.model.init_from = f"run:{source_id}"
    new_id = store.create_run(new.to_yaml(), name="t5-continued")
    run = PolicyRun(new, store, new_id, notify=lambda p: None, check_cancel=lambda: None)
    run.prepare()
    run.load(seed=0)
    torch.testing.assert_close(t5_logits(run.bundle.policy.lm), t5_logits(trained), rtol=0, atol=1e-6)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    torch.testing.assert_close(t5_logits(run.bundle.reference), t5_logits(base), rtol=0, atol=1e-6)


def test_a_trainer_checkpoint_of_a_dpo_run_exports_and_starts_a_ppo_run(tiny_gpt2_dir, tmp_path):
    """The TRL methods' own `checkpoint-N` directories (optimizer, scheduler, RNG state beside the weights) are
    policies too: the export leaves the training state out, and a PPO run can continue from one."""
    from transformers import AutoModelForCausalLM

    from engine.methods.lifecycle import PolicyRun

    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path / "out", lora=False)
    cfg.method, cfg.name = "dpo", "dpo-source"
    d = cfg.dpo
    d.max_steps, d.batch_size, d.learning_rate, d.max_response_tokens, d.eval_pairs = 2, 4, 1e-2, 16, 4
    cfg.evaluation.enabled = False
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method="dpo", total_steps=cfg.total_steps)
    execute(cfg, store, run_id)
    source = find_policy(store, run_id, 1)
    assert source.kind == "full" and source.path.name == "checkpoint-1" and not source.final
    assert (source.path / "optimizer.pt").is_file()  # the Trainer's state is there ...
    out = export_policy(store, run_id, tmp_path / "dpo-step1", step=1)
    assert not {"optimizer.pt", "scheduler.pt", "trainer_state.json"} & {p.name for p in out.iterdir()}  # ... not here
    step1 = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits_of(step1), logits_of(AutoModelForCausalLM.from_pretrained(source.path)),
                               rtol=0, atol=0)
    final = AutoModelForCausalLM.from_pretrained(find_policy(store, run_id).path)
    assert not torch.allclose(logits_of(step1), logits_of(final), atol=1e-4)

    new = tiny_config(tiny_gpt2_dir, tmp_path / "out", lora=False)  # PPO, continuing the DPO run's checkpoint
    new.model.init_from = f"run:{run_id}@1"
    new_id = store.create_run(new.to_yaml(), name="ppo-after-dpo")
    run = PolicyRun(new, store, new_id, notify=lambda p: None, check_cancel=lambda: None)
    run.prepare()
    run.load(seed=0)
    torch.testing.assert_close(logits_of(run.bundle.policy.lm), logits_of(step1), rtol=0, atol=1e-6)
