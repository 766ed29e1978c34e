"""The policy playground: k samples of one prompt from a run's base model and from its trained policy, side by side,
each scored by the run's reward backends and its evaluator.

Responsible for: checking a request before anything is stored (`request_problems`: empty prompt, k / max_new_tokens /
temperature / top_p out of range, a run without a policy), queueing it in the store (`enqueue`), and serving it in a
worker process (`serve_next`: load the run's base model and the chosen checkpoint's weights, sample k responses per
side with the same seed so the sides differ by the weights only, score them, store the result), reporting progress
as it goes (loading, generating i/k, scoring, then done or failed with the reason).

Who serves: an idle `engine.worker` serves queued requests before it claims its next run; a worker busy with a run
never serves one (a run's RNG and memory stay its own), so the lab starts a small dedicated process for them
(`python -m engine playground`, `ensure_playground_server`) when no live worker is idle. Requests are never served
in the web server. A request whose serving process dies is marked failed once its heartbeat is older than the
lease (Store.expire_generations).

Not responsible for: drawing (pages/policy_playground.py) or the queue of runs (engine.worker). Imports no torch at
module level: the UI imports it to check and queue requests.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError, FieldError, RunConfig

if TYPE_CHECKING:
    from engine.policy import BrowserPolicy
    from engine.store import CheckpointRecord, GenerationRecord, Store

log = logging.getLogger(__name__)

MAX_K = 16  # samples per side
MAX_NEW_TOKENS = 512
MAX_PROMPT_CHARS = 20_000
PLAYGROUND_IDLE_EXIT_S = 300.0  # the dedicated process exits after this long with nothing to serve
NO_POLICY_METHODS = ("reward_model",)  # runs that train no policy


@dataclass
class PlaygroundSettings:
    """Generation settings of one request (the same for both sides)."""

    k: int = 4  # samples per side
    temperature: float = 1.0
    top_p: float = 1.0  # 1.0: no nucleus filtering
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 24
    seed: int = 0  # both sides sample with it: they differ by the weights only

    def problems(self) -> list[FieldError]:
        """What is wrong with these settings, by field ("k", "temperature", ...)."""
        out = []

        def whole(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                out.append(FieldError(name, f"must be a whole number, got {v!r}"))
            elif not lo <= v <= hi:
                out.append(FieldError(name, f"must be between {lo} and {hi}, got {v}"))

        def number(name: str, ok, what: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                out.append(FieldError(name, f"must be a number, got {v!r}"))
            elif not ok(v):
                out.append(FieldError(name, f"must be {what}, got {v}"))

        whole("k", 1, MAX_K)
        whole("max_new_tokens", 1, MAX_NEW_TOKENS)
        whole("top_k", 0, 100_000)
        whole("seed", 0, 2**31 - 1)
        number("temperature", lambda v: 0 < v <= 10, "above 0 and at most 10")
        number("top_p", lambda v: 0 < v <= 1, "above 0 and at most 1")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlaygroundSettings:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError([FieldError(k, "unknown generation setting") for k in sorted(unknown)])
        return cls(**data)


# ---- what a run offers ------------------------------------------------------------------------------


def _loadable(path: str | Path) -> bool:
    """Whether a checkpoint directory holds policy weights the playground loads: PPO's own (policy.pt), a LoRA
    adapter, or full weights (a `from_pretrained` directory: the final policy, a Trainer's checkpoint-N)."""
    p = Path(path)
    return (p / "policy.pt").is_file() or (p / "adapter_config.json").is_file() or (p / "config.json").is_file()


def policy_checkpoints(store: Store, run_id: str) -> list[CheckpointRecord]:
    """The run's checkpoints that hold a policy still on disk, newest step first (at one step, the final policy
    before a periodic checkpoint). Empty for a run that trains no policy (a reward model)."""
    record = store.get_run(run_id)
    if record.method in NO_POLICY_METHODS:
        return []
    found = [c for c in store.checkpoints(run_id) if _loadable(c.path)]
    return sorted(found, key=lambda c: (c.step, Path(c.path).name == "policy"), reverse=True)


def no_policy_reason(store: Store, run_id: str) -> str | None:
    """Why run `run_id` cannot be played with (a sentence), or None when it has a policy checkpoint."""
    record = store.get_run(run_id)
    if record.method in NO_POLICY_METHODS:
        return f"run {run_id} trained a reward model, not a policy: pick a policy run"
    if not policy_checkpoints(store, run_id):
        if record.status in ("queued", "running"):
            return f"run {run_id} has saved no checkpoint yet ({record.status}, step {record.step}): wait for one"
        return f"run {run_id} ({record.status}) has no policy checkpoint on disk"
    return None


def holdout_prompts(store: Store, run_id: str, limit: int = 50) -> list[str]:
    """The hold-out prompts the run evaluated (as the model saw them), in order; empty before its evaluation."""
    rows = store.evaluations(run_id)
    if rows.empty:
        return []
    seen = list(dict.fromkeys(rows.sort_values(["phase", "idx"], ascending=[False, True])["prompt"]))
    return seen[:limit]


# ---- the request --------------------------------------------------------------------------------------


def refused_by(policy: BrowserPolicy, cfg: RunConfig) -> list[str]:
    """What of run config `cfg` the browser's `policy` refuses and a request would use: the model's path and every
    backend that scores (a judge the operator does not list is never called from the playground)."""
    from engine.policy import is_local_model

    problems = []
    if isinstance(cfg.model.name_or_path, str) and is_local_model(cfg.model.name_or_path):
        problems.append(policy.path_problem("model.name_or_path", cfg.model.name_or_path, "models"))
    for i, b in enumerate(cfg.reward.backends):
        problems += policy.backend_problems(b, f"reward.backends[{i}]")
    problems += policy.backend_problems(cfg.evaluation.evaluator, "evaluation.evaluator")
    return [str(p) for p in problems if p is not None]


def request_problems(store: Store, run_id: str, prompt: Any, settings: PlaygroundSettings,
                     checkpoint_step: int | None = None, policy: BrowserPolicy | None = None) -> list[FieldError]:
    """Everything wrong with a request, by field (run, checkpoint, prompt, k, ...); empty when it can be queued.
    `policy`: the operator's allow-list when the request comes from a browser (None: no limits, as for Python)."""
    problems = settings.problems()
    if not isinstance(prompt, str) or not prompt.strip():
        problems.insert(0, FieldError("prompt", "type a prompt or pick a hold-out prompt"))
    elif len(prompt) > MAX_PROMPT_CHARS:
        problems.insert(0, FieldError("prompt", f"at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"))
    try:
        reason = no_policy_reason(store, run_id)
    except KeyError:
        reason = f"no run with id {run_id!r}"
    if not reason and policy is not None:
        refused = refused_by(policy, RunConfig.from_yaml(store.get_run(run_id).config_yaml))
        if refused:
            reason = f"the lab's settings do not allow this run's {'; '.join(refused)}"
    if reason:
        problems.insert(0, FieldError("run", reason))
    elif checkpoint_step is not None and checkpoint_step not in {c.step for c in policy_checkpoints(store, run_id)}:
        steps = ", ".join(str(c.step) for c in policy_checkpoints(store, run_id))
        problems.insert(0, FieldError("checkpoint", f"run {run_id} has no policy checkpoint after step "
                                                    f"{checkpoint_step} (it has: {steps})"))
    return problems


def enqueue(store: Store, run_id: str, prompt: str, settings: PlaygroundSettings | dict[str, Any] | None = None,
            checkpoint_step: int | None = None, user: str | None = None, policy: BrowserPolicy | None = None) -> str:
    """Check and queue a request; returns its id. ConfigError naming each bad field before anything is stored.
    `checkpoint_step` None: the run's newest policy checkpoint (the final policy of a completed run); `policy`: the
    browser's allow-list (a run whose judge or model it refuses is refused)."""
    if settings is None:
        settings = PlaygroundSettings()
    elif isinstance(settings, dict):
        settings = PlaygroundSettings.from_dict(settings)
    if problems := request_problems(store, run_id, prompt, settings, checkpoint_step, policy):
        raise ConfigError(problems)
    chosen = [c for c in policy_checkpoints(store, run_id) if checkpoint_step in (None, c.step)][0]
    return store.create_generation(run_id, chosen.step, chosen.path, prompt, asdict(settings), total=2 * settings.k,
                                   owner_user=user)


# ---- serving (in a worker process) ---------------------------------------------------------------------


def load_checkpoint_weights(bundle, path: str | Path) -> None:
    """Put the trained weights of checkpoint `path` into `bundle.policy` (its reference keeps the base weights).

    PPO's periodic checkpoints hold the trainable parameters (policy.pt); a LoRA adapter directory holds the adapter
    (the bundle must have LoRA on, as the run had); any other `from_pretrained` directory holds the full weights."""
    import torch

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint {p} is gone from disk (pruned or moved)")
    if (p / "policy.pt").is_file():
        state = torch.load(p / "policy.pt", map_location="cpu", weights_only=True)
        params = dict(bundle.policy.named_parameters())
        unknown = sorted(set(state) - set(params))
        if unknown or not state:
            raise ValueError(f"checkpoint {p} does not match the run's model (unexpected {unknown[:3]})")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)
        return
    if (p / "adapter_config.json").is_file():
        from peft import set_peft_model_state_dict

        if not hasattr(bundle.policy.lm, "disable_adapter"):
            raise ValueError(f"checkpoint {p} is a LoRA adapter but the run's model has no LoRA")
        if (p / "adapter_model.safetensors").is_file():
            from safetensors.torch import load_file

            weights = load_file(str(p / "adapter_model.safetensors"))
        else:
            weights = torch.load(p / "adapter_model.bin", map_location="cpu", weights_only=True)
        result = set_peft_model_state_dict(bundle.policy.lm, weights)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter {p} does not match the run's LoRA (unexpected {result.unexpected_keys[:3]})")
        return
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if bundle.seq2seq else AutoModelForCausalLM
    trained = cls.from_pretrained(str(p), dtype=next(bundle.policy.lm.parameters()).dtype)
    missing, unexpected = bundle.policy.lm.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:  # a tied head is saved once
        raise ValueError(f"checkpoint {p} does not match the run's model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")


def _score(backends: list[tuple[str, Any]], evaluator, prompt: str, responses: list[str]) -> list[dict[str, Any]]:
    """Per response: each backend's reward (its own score, before the run's mix) and the evaluator's toxicity."""
    from engine.evaluate import score_toxicity

    rewards: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for name, backend in backends:
        try:
            rewards[name] = [float(v) for v in backend.score([prompt] * len(responses), responses).scores]
        except Exception as exc:  # a judge unreachable: shown beside the others' scores, not a failed request
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    tox = score_toxicity(evaluator, responses) if evaluator is not None else [math.nan] * len(responses)
    return [{"rewards": {n: v[i] for n, v in rewards.items()}, "toxicity": tox[i], "errors": errors}
            for i in range(len(responses))]


class _Heartbeat:
    """Beats a request this process serves every few seconds (loading a large model sends no progress)."""

    def __init__(self, store: Store, gen_id: str) -> None:
        self.store, self.gen_id = store, gen_id
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generation-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.store.heartbeat_s):
            try:
                if not self.store.note_generation(self.gen_id):
                    self.lost = True
                    return
            except Exception:  # the store is busy for a moment: the next beat tries again
                log.warning("heartbeat of generation %s failed", self.gen_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def serve(store: Store, request: GenerationRecord) -> None:
    """Serve one claimed request: base and trained samples, scored; the result (or the reason it failed) stored."""
    try:
        with _Heartbeat(store, request.id) as beat:
            result = _generate(store, request, beat)
    except Exception as exc:
        log.exception("generation %s failed", request.id)
        store.finish_generation(request.id, error=f"{type(exc).__name__}: {exc}")
        return
    if not store.finish_generation(request.id, result=result):
        log.warning("generation %s was marked failed by another process before it finished", request.id)


def _generate(store: Store, request: GenerationRecord, beat: _Heartbeat) -> dict[str, Any]:
    import torch

    from engine import data as data_mod
    from engine.config import GenerationSettings
    from engine.evaluate import generate_responses
    from engine.models import load_policy, pick_device
    from engine.rewards import build_backend

    s = PlaygroundSettings.from_dict(request.settings)
    cfg = RunConfig.from_yaml(store.get_run(request.run_id).config_yaml)
    device = pick_device(cfg.model.device)
    store.note_generation(request.id, "loading", 0, "loading the base model and the checkpoint's weights")
    torch.manual_seed(0)  # a LoRA adapter's fresh initial weights (overwritten by the checkpoint's)
    bundle = load_policy(cfg.model)
    load_checkpoint_weights(bundle, request.checkpoint_path)
    backends = [(b.display_name, build_backend(b, device=device)) for b in cfg.reward.backends]
    evaluator = build_backend(cfg.evaluation.evaluator, device=device)
    prompt = data_mod.truncate_left([request.prompt], bundle.tokenizer, cfg.data.max_prompt_tokens, template=None)[0]
    gen = GenerationSettings(min_length=cfg.generation.min_length, max_new_tokens=s.max_new_tokens, top_k=s.top_k,
                             top_p=s.top_p, do_sample=True, temperature=float(s.temperature))
    sides: dict[str, Any] = {}
    for offset, (side, which) in enumerate((("base", "before"), ("trained", "after"))):
        if beat.lost:
            raise RuntimeError("another process marked this request failed (no heartbeat in time)")
        label = "base model" if side == "base" else f"trained policy (step {request.checkpoint_step})"

        def progress(done: int, total: int, offset: int = offset, label: str = label) -> None:
            store.note_generation(request.id, "generating", offset * s.k + done,
                                  f"generating with the {label}: {done}/{total}")

        responses, lengths, kls = generate_responses(bundle, [prompt], gen, which=which, batch_size=s.k,
                                                     max_prompt_tokens=cfg.data.max_prompt_tokens, seed=s.seed,
                                                     progress=progress, repeats=s.k)
        sides[side] = [{"response": r, "length": int(n), "kl": float(kl)}
                       for r, n, kl in zip(responses, lengths, kls, strict=True)]
    store.note_generation(request.id, "scoring", 2 * s.k,
                          f"scoring with {', '.join(n for n, _ in backends)} and the evaluator")
    for rows in sides.values():
        for row, scored in zip(rows, _score(backends, evaluator, prompt, [r["response"] for r in rows]), strict=True):
            row.update(scored)
    return {**sides, "backends": [n for n, _ in backends], "evaluator": cfg.evaluation.evaluator.display_name,
            "prompt_used": prompt, "checkpoint_step": request.checkpoint_step}


def serve_next(store: Store) -> bool:
    """Claim and serve the oldest queued request; False when none is queued."""
    store.expire_generations()
    request = store.claim_generation()
    if request is None:
        return False
    log.info("serving generation %s (run %s, step %d)", request.id, request.run_id, request.checkpoint_step)
    serve(store, request)
    return True


def serve_forever(url: str | None = None, poll_s: float = 0.5, idle_exit_s: float | None = PLAYGROUND_IDLE_EXIT_S,
                  once: bool = False) -> int:
    """`python -m engine playground`: serve playground requests until idle for `idle_exit_s` seconds (None or 0:
    never); returns how many it served. It registers as no worker: it never takes a run."""
    from engine.store import Store, new_owner_id

    store = Store(url, owner=new_owner_id("pg"))
    served, idle_since = 0, time.monotonic()
    try:
        while True:
            try:
                did = serve_next(store)
            except Exception:  # the store is busy or unreachable for a while: look again
                log.exception("playground server: could not claim a request")
                did = False
            if did:
                served, idle_since = served + 1, time.monotonic()
                continue
            if once or (idle_exit_s and time.monotonic() - idle_since >= idle_exit_s):
                return served
            time.sleep(poll_s)
    finally:
        store.close()


def ensure_playground_server(store: Store, log_dir: str | Path | None = None) -> subprocess.Popen:
    """Start `python -m engine playground` for `store` (own session: it outlives the UI that started it; it exits
    after PLAYGROUND_IDLE_EXIT_S idle). Its output goes to <log_dir>/playground-<time>-<pid>.log."""
    from engine.store import DB_ENV_VAR

    if log_dir is None:
        db = store.engine.url.database if store.engine.url.get_backend_name() == "sqlite" else None
        log_dir = Path(db).parent if db and db != ":memory:" else Path("runs")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", DB_ENV_VAR: store.url}  # the URL not on the command line (ps)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = log_dir / f"playground-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "playground"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    log.info("started a playground server (pid %d) for %r; log %s", proc.pid, store, log_path)
    return proc
