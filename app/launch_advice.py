"""Advice on a valid run config before it starts: values that are legal but unwise, and an estimated duration.

Pure functions of a RunConfig (no Streamlit), tested in tests/test_launch_advice.py. The speed figures are the
README's measured default run (SmolLM2-135M, PPO, 2 idle CPU cores, bf16 autocast; docs/experiments.md): 728 s end to
end: 437 s training for 28 steps of 32 responses x 24 new tokens (probes and checkpoints included), 287 s for 2 x 800
evaluation responses, 3 s loading.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import FOCUS_SAMPLES, RunConfig

DEFAULT_RUN_S = 728.0  # the measured default run, end to end
STEP_S = 437.0 / 28  # one PPO step of STEP_RESPONSES responses x STEP_TOKENS new tokens, measured default, 2 CPU cores
STEP_RESPONSES, STEP_TOKENS = 32, 24
EVAL_RESPONSE_S = (113.0 + 174.0) / 1600  # one evaluation response (generated and scored), same run
SETUP_S = DEFAULT_RUN_S - 28 * STEP_S - 2 * 800 * EVAL_RESPONSE_S  # loading models and prompts (seconds, cached)
TRAIN_PROMPTS = 408  # the shared HH file's training split (data.train_size None), for ppo.focus's rating pass
# Relative cost of a step on the built-in tiny model vs SmolLM2 (rough: it is ~30x smaller; not measured per step).
MODEL_FACTOR = {"builtin:smollm2": 1.0, "builtin:tiny-gpt2": 0.1}
CPU_STEP_LIMIT = 100  # above this many PPO steps on a CPU the run takes well over an hour


@dataclass(frozen=True)
class Warning_:
    field: str  # the config field the warning is about (the form links to its section)
    message: str


def warnings(cfg: RunConfig, on_gpu: bool = False) -> list[Warning_]:
    """Values that pass validation but usually waste a run."""
    out: list[Warning_] = []
    if cfg.evaluation.enabled and cfg.data.holdout_size < 200:
        out.append(Warning_("data.holdout_size", f"Only {cfg.data.holdout_size} hold-out prompts: the before/after "
                            "interval will be wide and a real change may read as not significant. Use 200 or more "
                            "for a result you want to report."))
    if cfg.method == "ppo":
        p = cfg.ppo
        if p.init_kl_coef == 0 and not p.adaptive_kl:
            out.append(Warning_("ppo.init_kl_coef", "KL coefficient 0 with adaptation off: nothing holds the policy "
                                "near the starting model; it tends to collapse into reward hacking or gibberish."))
        if p.learning_rate > 1e-3:
            out.append(Warning_("ppo.learning_rate", f"A learning rate of {p.learning_rate:g} usually makes PPO "
                                "diverge; 1e-5 to 1e-4 is the usual range for full fine-tuning."))
        if not on_gpu and p.max_ppo_steps > CPU_STEP_LIMIT:
            out.append(Warning_("ppo.max_ppo_steps", f"{p.max_ppo_steps} steps on a CPU: expect several hours. "
                                "Check a short run first."))
        if not cfg.generation.do_sample:
            out.append(Warning_("generation.do_sample", "Greedy decoding: PPO learns from sampled responses; "
                                "without sampling every response to a prompt is the same."))
    if cfg.evaluation.enabled and cfg.evaluation.samples_per_prompt * cfg.data.holdout_size > 4000:
        out.append(Warning_("evaluation.samples_per_prompt", "More than 4,000 evaluation responses a side: the "
                            "evaluation alone takes longer than most trainings."))
    return out


def estimate_s(cfg: RunConfig) -> float | None:
    """Seconds a PPO run takes on 2 CPU cores, scaled from the measured default; None for other methods."""
    if cfg.method != "ppo":
        return None
    p, factor = cfg.ppo, MODEL_FACTOR.get(cfg.model.name_or_path, 1.0)
    per_step = STEP_S * factor * (p.batch_size / STEP_RESPONSES) * (cfg.generation.max_new_tokens / STEP_TOKENS)
    per_step *= p.ppo_epochs
    evaluation = 0.0
    if cfg.evaluation.enabled:
        n = cfg.data.holdout_size * cfg.evaluation.samples_per_prompt
        evaluation = 2 * n * EVAL_RESPONSE_S * factor * (cfg.generation.max_new_tokens / STEP_TOKENS)
    rating = 0.0
    if p.focus > 0:  # ppo.focus rates every training prompt first: FOCUS_SAMPLES base responses each, like evaluation's
        n = (cfg.data.train_size or TRAIN_PROMPTS) * FOCUS_SAMPLES
        rating = n * EVAL_RESPONSE_S * factor * (cfg.generation.max_new_tokens / STEP_TOKENS)
    return SETUP_S * factor + p.max_ppo_steps * per_step + evaluation + rating


def duration_text(seconds: float) -> str:
    """Like "about 24 min" or "about 1 h 10 min"."""
    minutes = max(1, round(seconds / 60))
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


def estimate_note(cfg: RunConfig, device: str) -> str:
    """One line for the form: the estimate and what it rests on."""
    seconds = estimate_s(cfg)
    if seconds is None:
        return f"No duration estimate for {cfg.method} (measured for PPO only)."
    base = ("scaled from the measured default run (23 s per step of 32 responses x 24 tokens, 0.29 s per evaluation "
            "response, on 2 CPU cores)")
    if cfg.model.name_or_path not in MODEL_FACTOR:
        base += "; this model was not measured, so a SmolLM2-sized model is assumed"
    elif cfg.model.name_or_path != "builtin:smollm2":
        base += "; the tiny model's factor is a rough guess"
    if device != "cpu":
        return f"On a CPU this would take {duration_text(seconds)} ({base}); on this machine's {device} it is " \
               "not measured (usually much faster)."
    return f"Estimated duration: {duration_text(seconds)} — an estimate {base}."
