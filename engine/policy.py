"""What a browser user may put in a run config: the operator's allow-list (engine.lab_settings) applied to it.

Responsible for: `BrowserPolicy`, which the lab's pages pass to engine.api (validate_config, Lab.start_run,
score_text) so that a config written in a browser can only
- use an LLM judge the operator listed: an OpenAI-compatible `base_url` with the one `api_key_env` and the model
  ids allowed for it, a Bedrock `region` / `endpoint_url` with its model ids (no entry: no judge at all), and
- name files inside the operator's folders: `output_dir` (outputs), `data.source` (data), `model.name_or_path`,
  `model.init_from` (a directory; `run:<id>` references are checked against the store), `reward_model.base_model`, hf_classifier `options.model` and jigsaw `options.model_dir` (models), resolved with
  realpath so that `..` and symlinks cannot leave them.
Each problem is a FieldError naming the field; a refused path is never looked at (the message is the same whether
or not the file exists), and `sanitized` gives the copy of a config that validation may inspect instead.

Not responsible for: the CLI and Python callers, which pass no policy and keep full freedom (whoever runs
`python -m engine` already has the server's files and credentials), nor the judges' own option checks.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import FieldError, RewardBackendSettings, RunConfig, looks_like_hub_id
from engine.lab_settings import LabSettings, load_settings, normalise_url

JUDGE_KINDS = ("openai_judge", "bedrock_judge")
DATA_KEYWORDS = ("auto", "builtin", "hub")
MODEL_PATH_KINDS = ("hf_classifier", "topic")  # reward kinds whose options.model may name a local directory
# What a refused path is replaced with in the copy that validation inspects (never the refused file itself).
_PLACEHOLDER_MODEL = "builtin:tiny-gpt2"


def _judge_default(kind: str, arg: str) -> Any:
    """The judge class's default for `arg` (what the judge uses when the options leave it out)."""
    if kind == "openai_judge":
        from engine.rewards.openai_judge import OpenAIJudge as cls
    else:
        from engine.rewards.bedrock_judge import BedrockJudge as cls
    param = inspect.signature(cls.__init__).parameters.get(arg)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _inside(value: str, roots: tuple[Path, ...]) -> bool:
    """Whether the path `value` (relative: from the working directory) resolves inside one of `roots`."""
    try:
        real = Path(os.path.realpath(os.path.expanduser(value)))
    except (OSError, ValueError):  # a NUL byte, an unreadable home: not a path this lab serves
        return False
    return any(real == root or root in real.parents for root in roots)


def is_local_model(name: str) -> bool:
    """Whether a model name is a local path (the rest: built-in models and hub ids, which name no file here)."""
    if name.startswith("builtin:"):
        return False
    return not looks_like_hub_id(name) or os.path.exists(os.path.expanduser(name))


@dataclass(frozen=True)
class BrowserPolicy:
    """The operator's allow-list, applied to configs and reward backends that come from a browser."""

    settings: LabSettings

    @property
    def key(self) -> str:
        """Changes when the operator's settings change (for caches keyed on validation results)."""
        return self.settings.fingerprint

    def _where(self, table: str) -> str:
        name = self.settings.source if self.settings.source != "defaults" else "lab_settings.toml"
        return f"the operator lists them in {name} ({table})"

    # ---- paths ---------------------------------------------------------------------------------------------
    def path_problem(self, field: str, value: Any, kind: str) -> FieldError | None:
        """A FieldError when the path `value` of `field` is outside the operator's `kind` folders (data, models,
        outputs). The message does not depend on whether the file exists."""
        roots = {"data": self.settings.data_roots, "models": self.settings.model_roots,
                 "outputs": self.settings.output_roots}[kind]
        if isinstance(value, str) and value.strip() and _inside(value.strip(), roots):
            return None
        return FieldError(field, f"not inside the folders this lab allows for {kind}; "
                                 f"{self._where(f'[paths] {kind}')}")

    # ---- judges --------------------------------------------------------------------------------------------
    def _openai_problems(self, options: Mapping[str, Any], prefix: str) -> list[FieldError]:
        entries = self.settings.openai
        if not entries:
            return [FieldError(prefix + ".kind", "LLM judges are not enabled on this lab for browser users: "
                                                 f"{self._where('[[judges.openai]]')}")]
        try:
            url = normalise_url(options.get("base_url")) if isinstance(options.get("base_url"), str) else None
        except ValueError:
            url = None
        matching = [e for e in entries if e.base_url == url]
        if not matching:
            return [FieldError(prefix + ".options.base_url", "not an endpoint this lab allows; "
                                                             + self._where("[[judges.openai]] base_url"))]
        key_env = options.get("api_key_env", _judge_default("openai_judge", "api_key_env"))
        matching = [e for e in matching if e.api_key_env == key_env]
        if not matching:  # the name is not echoed: a key pasted here by mistake must not be shown back
            return [FieldError(prefix + ".options.api_key_env", "not a key variable this lab allows for that "
                                                                "endpoint; " + self._where("[[judges.openai]] api_key_env"))]
        model = options.get("model")
        if not any("*" in e.models or model in e.models for e in matching):
            return [FieldError(prefix + ".options.model", "not a model this lab allows at that endpoint; "
                                                          + self._where("[[judges.openai]] models"))]
        return []

    def _bedrock_problems(self, options: Mapping[str, Any], prefix: str) -> list[FieldError]:
        entries = self.settings.bedrock
        if not entries:
            return [FieldError(prefix + ".kind", "Bedrock judges are not enabled on this lab for browser users: "
                                                 f"{self._where('[[judges.bedrock]]')}")]
        raw = options.get("endpoint_url") or ""
        try:
            endpoint = normalise_url(raw) if isinstance(raw, str) and raw else ("" if not raw else None)
        except ValueError:
            endpoint = None
        matching = [e for e in entries if e.endpoint_url == endpoint]
        if not matching:
            return [FieldError(prefix + ".options.endpoint_url", "not an endpoint this lab allows; "
                                                                 + self._where("[[judges.bedrock]] endpoint_url"))]
        region = options.get("region", _judge_default("bedrock_judge", "region"))
        matching = [e for e in matching if e.region == region]
        if not matching:
            return [FieldError(prefix + ".options.region", "not a region this lab allows; "
                                                           + self._where("[[judges.bedrock]] region"))]
        model = options.get("model_id", _judge_default("bedrock_judge", "model_id"))
        if not any("*" in e.models or model in e.models for e in matching):
            return [FieldError(prefix + ".options.model_id", "not a model this lab allows in that region; "
                                                             + self._where("[[judges.bedrock]] models"))]
        return []

    def backend_problems(self, b: RewardBackendSettings, prefix: str) -> list[FieldError]:
        """Why a browser user may not use this reward backend (`prefix`: e.g. "reward.backends[0]")."""
        options = b.options
        if not isinstance(options, Mapping):
            return [FieldError(prefix + ".options", "must be a mapping of option names to values")]
        if b.kind == "openai_judge":
            return self._openai_problems(options, prefix)
        if b.kind == "bedrock_judge":
            return self._bedrock_problems(options, prefix)
        # Backends that load a model from a path: hf_classifier's classifier, topic's language model.
        if b.kind in MODEL_PATH_KINDS and isinstance(options.get("model"), str) and is_local_model(options["model"]):
            return [p for p in [self.path_problem(prefix + ".options.model", options["model"], "models")] if p]
        if b.kind == "jigsaw" and options.get("model_dir") is not None:
            return [p for p in [self.path_problem(prefix + ".options.model_dir", options["model_dir"], "models")] if p]
        return []

    # ---- whole configs -------------------------------------------------------------------------------------
    def config_problems(self, cfg: RunConfig) -> list[FieldError]:
        """Every setting of `cfg` a browser user may not use (paths outside the folders, judges not listed)."""
        out: list[FieldError] = []

        def add(problem: FieldError | None) -> None:
            if problem is not None:
                out.append(problem)

        add(self.path_problem("output_dir", cfg.output_dir, "outputs"))
        source = cfg.data.source
        if not (isinstance(source, str) and (source in DATA_KEYWORDS or source.startswith("hub:"))):
            add(self.path_problem("data.source", source, "data"))
        for field, name in (("model.name_or_path", cfg.model.name_or_path),
                            ("reward_model.base_model", cfg.reward_model.base_model)):
            if isinstance(name, str) and is_local_model(name):
                add(self.path_problem(field, name, "models"))
        init_from = cfg.model.init_from
        if isinstance(init_from, str) and init_from and not init_from.startswith("run:"):  # a directory
            add(self.path_problem("model.init_from", init_from, "models"))
        for i, b in enumerate(cfg.reward.backends):
            out += self.backend_problems(b, f"reward.backends[{i}]")
        out += self.backend_problems(cfg.evaluation.evaluator, "evaluation.evaluator")
        return out

    def sanitized(self, cfg: RunConfig, problems: list[FieldError]) -> RunConfig:
        """A copy of `cfg` whose refused paths are replaced by harmless ones, so that validating it never looks
        at a file outside the operator's folders (errors must not reveal what exists there)."""
        fields = {p.field for p in problems}
        safe = copy.deepcopy(cfg)
        if "output_dir" in fields:
            safe.output_dir = str(self.settings.output_roots[0]) if self.settings.output_roots else "runs"
        if "data.source" in fields:
            safe.data.source = "builtin"
        if "model.name_or_path" in fields:
            safe.model.name_or_path = _PLACEHOLDER_MODEL
        if "reward_model.base_model" in fields:
            safe.reward_model.base_model = None
        if "model.init_from" in fields:
            safe.model.init_from = ""
        for prefix, b in [(f"reward.backends[{i}]", b) for i, b in enumerate(safe.reward.backends)] + [
                ("evaluation.evaluator", safe.evaluation.evaluator)]:
            if f"{prefix}.options.model" in fields and b.kind in MODEL_PATH_KINDS:
                b.options = {**b.options, "model": _PLACEHOLDER_MODEL}
            if f"{prefix}.options.model_dir" in fields:
                b.options = {k: v for k, v in b.options.items() if k != "model_dir"}
        return safe


def browser_policy() -> BrowserPolicy:
    """The policy of this server's browser users, from the operator's settings file (engine.lab_settings).

    Raises engine.lab_settings.SettingsError when that file is malformed (the app then refuses to serve)."""
    return BrowserPolicy(load_settings())
