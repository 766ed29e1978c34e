"""A run's result in words, and the one sign convention of every page, as pure functions (no Streamlit, no store).

"change %" = (after − before) / before × 100 for mean toxicity: negative means less toxic. The Runs table, the
Compare page and the Before/after sentence all use it.
"""

from __future__ import annotations

import math

CHANGE_LABEL = "change % (after − before) / before; negative = less toxic"


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def change_pct(before: float | None, after: float | None) -> float | None:
    """(after − before) / before × 100; None when either is missing or before is 0."""
    before, after = _num(before), _num(after)
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before * 100


def summary_change(summary: dict) -> float | None:
    """A run summary's change % of mean toxicity: −pct_improvement_mean (the engine's number), else from the means."""
    improvement = _num((summary or {}).get("pct_improvement_mean"))
    if improvement is not None:
        return -improvement
    return change_pct(((summary or {}).get("before") or {}).get("mean"), ((summary or {}).get("after") or {}).get("mean"))


def result_sentence(summary: dict) -> tuple[str, str]:
    """("Toxicity fell 68 % (95 % CI 60–75 %), significant.", kind): kind is "good" (fell, significant), "bad" (rose,
    significant) or "neutral" (the interval crosses 0, or no interval). Reads the summary's improvement fields
    (pct_improvement_mean and its CI, improvement = −change) and turns them into the change convention."""
    change = summary_change(summary)
    if change is None:
        return "No result yet: the evaluation has not finished.", "neutral"
    lo_i, hi_i = _num(summary.get("pct_ci_low")), _num(summary.get("pct_ci_high"))
    verb = "fell" if change < 0 else "rose" if change > 0 else "did not change"
    amount = f" {abs(change):.1f} %" if change else ""
    if lo_i is None or hi_i is None:
        return f"Toxicity {verb}{amount} (no confidence interval: too few responses).", "neutral"
    lo, hi = -hi_i, -lo_i  # the change's interval
    if hi < 0 or lo > 0:  # the interval excludes 0
        direction = "fell" if hi < 0 else "rose"
        ci = f"{abs(hi):.0f}–{abs(lo):.0f} %" if direction == "fell" else f"{lo:.0f}–{hi:.0f} %"
        return (f"Toxicity {direction} {abs(change):.1f} % (95 % CI {ci}), significant.",
                "good" if direction == "fell" else "bad")
    return (f"Toxicity {verb}{amount}, not significant: the 95 % CI of the change, {lo:+.0f} % to {hi:+.0f} %, "
            "crosses 0.", "neutral")


def strip_template(prompt: str, template: str | None) -> str:
    """The dialogue of a prompt built from `template` (the text around {dialogue} removed); the prompt unchanged
    when it was not built from that template."""
    if not isinstance(prompt, str) or not template or template.count("{dialogue}") != 1:
        return prompt
    head, tail = template.replace("{{", "{").replace("}}", "}").split("{dialogue}")
    if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail):
        return prompt[len(head):len(prompt) - len(tail)].strip()
    return prompt


_SECTION = {"ppo": "ppo", "dpo": "dpo", "dpo_ai": "dpo", "reward_model": "reward_model", "rloo": "online",
            "grpo": "online"}


def key_hyperparameters(config: dict) -> dict:
    """The settings a user changes most, from a run's config dict: learning rate, steps, batch, KL coefficient
    (PPO's init_kl_coef, else the method's beta), reward mix; read from the method's own section."""
    method = config.get("method") or "ppo"
    sec = config.get(_SECTION.get(method, "ppo")) or {}
    kl = sec.get("init_kl_coef", sec.get("beta"))
    mix = []
    for b in (config.get("reward") or {}).get("backends") or []:
        if isinstance(b, dict):
            w = b.get("weight", 1.0)
            mix.append(f"{b.get('name') or b.get('kind', '?')}×{w:g}" if isinstance(w, (int, float)) else "?")
    return {"learning rate": sec.get("learning_rate"), "steps": sec.get("max_ppo_steps", sec.get("max_steps")),
            "batch": sec.get("batch_size"), "KL coef": kl, "reward mix": " + ".join(mix)}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"ppo.learning_rate": 5e-05, "reward.backends": "[...]", ...}: nested dicts joined with dots; lists as text."""
    out = {}
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = repr(v) if isinstance(v, (list, tuple)) else v
    return out


def config_diff(configs: dict):
    """Only the config fields that differ between runs: one row per field, one column per run label."""
    import pandas as pd

    flat = {label: flatten(cfg or {}) for label, cfg in configs.items()}
    fields = sorted({f for d in flat.values() for f in d})
    _missing = object()
    rows = []
    for f in fields:
        values = [flat[label].get(f, _missing) for label in flat]
        if any(v != values[0] for v in values[1:]) and f not in ("name", "output_dir"):
            rows.append({"field": f, **{label: ("—" if v is _missing else str(v)) for label, v in zip(flat, values, strict=True)}})
    return pd.DataFrame(rows, columns=["field", *flat])
