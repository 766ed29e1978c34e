"""Where a run's trained policy lives on disk, and a new run that starts from it ("continue training").

A policy is one of three kinds of directory:
- "full": a model directory `from_pretrained` loads (config.json + weights): the final policy of a run trained
  without LoRA, or a TRL Trainer checkpoint of one;
- "adapter": a LoRA adapter directory (adapter_config.json) that `peft.PeftModel.from_pretrained` puts on its base;
- "ppo": a PPO checkpoint (`policy.pt`: the trainable parameters by ActorCritic name, all weights or the adapter's,
  next to `state.pt`).

`find_policy(store, run_id, step)` finds a run's final policy or its checkpoint after `step`;
`resolve_init_from(store, cfg)` checks `model.init_from` against the store and the new config before anything loads
(a ConfigError naming the field); `apply_init(bundle, source)` puts the source's weights into a freshly loaded policy.

The new run's KL reference (and its "before" evaluation) stays `model.name_or_path`, the base: continuing a run keeps
measuring against the model it started from. PPO's value head is not carried over (a new run starts a fresh one).

Not responsible for: exporting (engine.policy_export) or training. Imports torch only inside `apply_init`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig, parse_init_from

POLICY_METHODS = ("ppo", "dpo", "dpo_ai", "rloo", "grpo")  # methods that train a policy (not reward_model)
FINAL_POLICY_DIR = "policy"  # <output_dir>/<run id>/policy: the lifecycle's final save


class PolicySourceError(ValueError):
    """A policy cannot be found (unknown run, no policy, checkpoint missing) or does not fit the new run."""

    def __init__(self, message: str, field: str = "model.init_from") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PolicySource:
    """A trained policy on disk: its directory, kind (full | adapter | ppo) and where it came from."""

    path: Path
    kind: str
    run_id: str | None = None
    step: int | None = None  # the checkpoint's step (the final policy: the run's last step)
    final: bool = False  # the run's final policy (not a periodic checkpoint)
    base: str = ""  # the base model's name_or_path (the run's config; an adapter directory's adapter_config)
    lora: dict[str, Any] = field(default_factory=dict)  # adapter: r, alpha, target_modules; {} for full weights
    config_yaml: str = ""  # the source run's config ("" for a plain directory)
    architecture: str = "auto"  # the source run's model.architecture

    @property
    def is_adapter(self) -> bool:
        """Whether the policy is a LoRA adapter (on `base`) rather than full weights."""
        return bool(self.lora)

    def describe(self) -> str:
        """One phrase: "run abc's final policy (LoRA adapter)", "run abc's checkpoint after step 4 (full weights)"."""
        what = "LoRA adapter" if self.is_adapter else "full weights"
        if self.run_id is None:
            return f"the directory {self.path} ({what})"
        where = "final policy" if self.final else f"checkpoint after step {self.step}"
        return f"run {self.run_id}'s {where} ({what})"


def kind_of(path: str | Path) -> str | None:
    """"ppo", "adapter" or "full" for a directory holding a policy; None when it holds none."""
    from engine.checkpoint import PPO_STATE_FILE

    p = Path(path)
    if (p / "policy.pt").is_file() and (p / PPO_STATE_FILE).is_file():
        return "ppo"
    if (p / "adapter_config.json").is_file():
        return "adapter"
    if (p / "config.json").is_file():
        return "full"
    return None


def _lora_of(cfg: RunConfig) -> dict[str, Any]:
    lora = cfg.model.lora
    if not lora.enabled:
        return {}
    return {"r": lora.r, "alpha": lora.alpha, "target_modules": lora.target_modules}


def _checkpoint_steps(records, final_name: str = FINAL_POLICY_DIR) -> list[int]:
    return sorted({r.step for r in records if Path(r.path).name != final_name and kind_of(r.path) is not None})


def find_policy(store, run_id: str, step: int | None = None) -> PolicySource:
    """Run `run_id`'s final policy (step None) or its checkpoint after `step`; PolicySourceError saying why not
    (no such run, a reward-model run, not finished, the step has no checkpoint, the files are gone)."""
    try:
        record = store.get_run(run_id)
    except KeyError:
        raise PolicySourceError(f"no run with id {run_id!r} in this store") from None
    if record.method not in POLICY_METHODS:
        raise PolicySourceError(f"run {run_id} is a {record.method} run: it trained a reward model, not a policy")
    try:
        cfg = RunConfig.from_yaml(record.config_yaml)
    except ConfigError as exc:
        raise PolicySourceError(f"run {run_id}'s config no longer loads: {exc}") from None
    records = store.checkpoints(run_id)
    steps = _checkpoint_steps(records)
    offer = f"; its checkpoints: {', '.join(f'run:{run_id}@{s}' for s in steps)}" if steps else \
        "; it has no checkpoint either (checkpoint.every_steps)"
    if step is None:
        finals = [r for r in records if Path(r.path).name == FINAL_POLICY_DIR]
        if not finals:
            raise PolicySourceError(f"run {run_id} is {record.status} and has no final policy{offer}")
        chosen = finals[-1]
    else:
        at = [r for r in records if r.step == step and kind_of(r.path) is not None]
        if not at:
            known = [r for r in records if r.step == step]
            if known:
                raise PolicySourceError(f"run {run_id}'s checkpoint after step {step} is missing on disk "
                                        f"({known[-1].path}){offer}")
            final = [r.step for r in records if Path(r.path).name == FINAL_POLICY_DIR]
            also = f" (its final policy: step {final[-1]}, run:{run_id})" if final else ""
            raise PolicySourceError(f"run {run_id} has no checkpoint after step {step}{offer}{also}")
        # the final policy when it is at that step (a from_pretrained directory), else the checkpoint
        finals = [r for r in at if Path(r.path).name == FINAL_POLICY_DIR]
        chosen = (finals or at)[-1]
    path = Path(chosen.path).expanduser().resolve()
    kind = kind_of(path)
    if kind is None:
        raise PolicySourceError(f"run {run_id}'s policy is missing on disk: {path} holds no model files (deleted or "
                                "moved?)")
    return PolicySource(path=path, kind=kind, run_id=run_id, step=chosen.step,
                        final=path.name == FINAL_POLICY_DIR, base=cfg.model.name_or_path, lora=_lora_of(cfg),
                        config_yaml=record.config_yaml, architecture=cfg.model.architecture)


def directory_source(path: str | Path) -> PolicySource:
    """A plain directory as a policy source (a full model or a LoRA adapter); PolicySourceError when it is neither."""
    p = Path(os.path.expanduser(str(path))).resolve()
    kind = kind_of(p)
    if kind not in ("full", "adapter"):
        raise PolicySourceError(f"{p} holds neither config.json (a full model) nor adapter_config.json (a LoRA "
                                "adapter)")
    if kind == "full":
        return PolicySource(path=p, kind=kind)
    try:
        conf = json.loads((p / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise PolicySourceError(f"{p / 'adapter_config.json'} does not parse: {exc}") from None
    targets = conf.get("target_modules")
    lora = {"r": conf.get("r"), "alpha": conf.get("lora_alpha"),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets}
    return PolicySource(path=p, kind=kind, base=str(conf.get("base_model_name_or_path") or ""), lora=lora)


def _same_model(a: str, b: str) -> bool:
    """Whether two model names name the same model (equal, or the same directory once built-ins are resolved)."""
    if a == b:
        return True
    from engine.models import resolve_model_path

    def real(name: str) -> str:
        try:
            return os.path.realpath(resolve_model_path(name)) if name.startswith("builtin:") else \
                os.path.realpath(os.path.expanduser(name))
        except Exception:  # a built-in that cannot be built here: compare the names only
            return name
    return real(a) == real(b)


_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer",
               "num_layers", "intermediate_size", "num_attention_heads", "n_head")


def _shape_mismatch(source_dir: Path, base: str) -> str | None:
    """The first config.json field in which a full model directory differs from the base (None: same shape or
    the base's config cannot be read here, e.g. a hub id offline)."""
    from engine.models import resolve_model_path

    try:
        mine = json.loads((source_dir / "config.json").read_text())
        theirs = json.loads((Path(resolve_model_path(base)) / "config.json").read_text())
    except Exception:
        return None
    for key in _SHAPE_KEYS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            return f"{key} {mine[key]!r} vs {theirs[key]!r}"
    return None


def check_fits(source: PolicySource, cfg: RunConfig) -> None:
    """PolicySourceError (naming the field to change) when the new run `cfg` cannot start from `source`."""
    m = cfg.model
    if cfg.method not in POLICY_METHODS:
        raise PolicySourceError(f"a {cfg.method} run trains a reward model: model.init_from is for policy methods "
                                f"({', '.join(POLICY_METHODS)})")
    what = source.describe()
    if source.run_id is not None and not _same_model(source.base, m.name_or_path):
        raise PolicySourceError(f"{what} was trained from {source.base!r}, but this run's base is "
                                f"{m.name_or_path!r}: continue from the same base (it is the KL reference)",
                                "model.name_or_path")
    if source.is_adapter:
        if source.run_id is None and source.base and not _same_model(source.base, m.name_or_path):
            raise PolicySourceError(f"the adapter {source.path} belongs to the base {source.base!r}, not to this "
                                    f"run's {m.name_or_path!r}", "model.name_or_path")
        if not m.lora.enabled:
            raise PolicySourceError(f"{what} is a LoRA adapter: turn model.lora.enabled on (rank {source.lora['r']}, "
                                    f"alpha {source.lora['alpha']}) to continue training it, or merge it into its "
                                    "base first (python -m engine export RUN --policy DIR --merge) and start from "
                                    "the merged directory as model.name_or_path", "model.lora.enabled")
        for key, name in (("r", "model.lora.r"), ("alpha", "model.lora.alpha")):
            have = getattr(m.lora, key)
            if source.lora.get(key) is not None and have != source.lora[key]:
                raise PolicySourceError(f"{what} has LoRA {key} {source.lora[key]}; this run asks for {have}: the "
                                        "adapter's shape must match", name)
        theirs = source.lora.get("target_modules")
        if source.run_id is not None and m.lora.target_modules != theirs:
            raise PolicySourceError(f"{what} adapts the modules {theirs or 'PEFT default'}; this run names "
                                    f"{m.lora.target_modules or 'PEFT default'}", "model.lora.target_modules")
        if source.run_id is None and m.lora.target_modules and isinstance(theirs, list) and \
                sorted(m.lora.target_modules) != theirs:
            raise PolicySourceError(f"the adapter {source.path} adapts {theirs}; this run names "
                                    f"{m.lora.target_modules}", "model.lora.target_modules")
    else:
        if m.lora.enabled:
            raise PolicySourceError(f"{what} is a full model: turn model.lora.enabled off to continue training it "
                                    "(to put a LoRA adapter on it, give its directory as model.name_or_path)",
                                    "model.lora.enabled")
        if source.kind == "full" and (problem := _shape_mismatch(source.path, m.name_or_path)):
            raise PolicySourceError(f"{what} does not have the shape of this run's base {m.name_or_path!r} "
                                    f"({problem})", "model.name_or_path")


def resolve_init_from(store, cfg: RunConfig) -> PolicySource | None:
    """The policy `cfg.model.init_from` names, checked to fit `cfg` (None when the field is empty). ConfigError
    naming the field otherwise; loads no model (only config files are read)."""
    value = cfg.model.init_from
    if not value:
        return None
    try:
        ref = parse_init_from(value)
        if ref is not None:
            if store is None:
                raise PolicySourceError(f"{value} names a run, but no store is open to look it up")
            source = find_policy(store, *ref)
        else:
            source = directory_source(value)
        check_fits(source, cfg)
    except PolicySourceError as exc:
        raise ConfigError([FieldError(exc.field, f"{exc} (model.init_from: {value})"
                                      if exc.field != "model.init_from" else str(exc))]) from None
    except ValueError as exc:  # a malformed run reference
        raise ConfigError([FieldError("model.init_from", str(exc))]) from None
    return source


def apply_init(bundle, source: PolicySource) -> None:
    """Put `source`'s weights into `bundle`'s freshly loaded policy (the same base and LoRA shape, as `check_fits`
    made sure); the reference and the value head are left as they are. RuntimeError when the weights do not fit."""
    import torch

    lm = bundle.policy.lm
    if source.kind == "ppo":
        state = torch.load(source.path / "policy.pt", map_location="cpu", weights_only=True)
        params = dict(bundle.policy.named_parameters())
        wanted = {n for n, p in params.items() if p.requires_grad and n.startswith("lm.")}
        given = {n for n in state if n.startswith("lm.")}
        if wanted != given:
            raise RuntimeError(f"{source.describe()} does not fit this policy: missing {sorted(wanted - given)[:3]}, "
                               f"unexpected {sorted(given - wanted)[:3]}")
        with torch.no_grad():
            for name in wanted:
                params[name].copy_(state[name])
        return
    if source.kind == "adapter":
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        weights = load_peft_weights(str(source.path), device="cpu")
        result = set_peft_model_state_dict(lm, weights)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"{source.describe()} does not fit this policy's adapter: missing {missing[:3]}, "
                               f"unexpected {list(result.unexpected_keys)[:3]}")
        return
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if bundle.seq2seq else AutoModelForCausalLM
    dtype = next(lm.parameters()).dtype
    trained = cls.from_pretrained(str(source.path), dtype=dtype)
    try:
        lm.load_state_dict(trained.state_dict(), strict=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{source.describe()} does not fit this policy: {str(exc).splitlines()[0]}") from exc
    finally:
        del trained


def policy_choices(store, run_id: str) -> list[tuple[int | None, str]]:
    """What of run `run_id` can be exported or continued from, newest first: (None, "final policy (step N)") when it
    has one, then (step, "checkpoint after step N") for each checkpoint on disk. [] for a run without a policy."""
    try:
        record = store.get_run(run_id)
    except KeyError:
        return []
    if record.method not in POLICY_METHODS:
        return []
    records = store.checkpoints(run_id)
    out: list[tuple[int | None, str]] = []
    finals = [r for r in records if Path(r.path).name == FINAL_POLICY_DIR and kind_of(r.path) is not None]
    if finals:
        out.append((None, f"final policy (step {finals[-1].step})"))
    out += [(s, f"checkpoint after step {s}") for s in reversed(_checkpoint_steps(records))]
    return out


def continue_config(store, run_id: str, step: int | None = None) -> RunConfig:
    """The config of a new run that continues run `run_id` from its final policy (or checkpoint after `step`):
    the source's config with model.init_from set and a new name. PolicySourceError when there is no such policy."""
    from engine.config import MAX_NAME_CHARS

    find_policy(store, run_id, step)
    cfg = RunConfig.from_yaml(store.get_run(run_id).config_yaml)
    cfg.model.init_from = f"run:{run_id}" + (f"@{step}" if step is not None else "")
    cfg.parent_run = None
    suffix = "-continued"
    cfg.name = (cfg.name or run_id)[:MAX_NAME_CHARS - len(suffix) - 14] + suffix
    return cfg
