"""The small API the lab's UI uses: runs, their data shaped for tables, export, validation, the playground.

Responsible for: turning UI intents (start, cancel, delete, export, score this text) into calls on the
worker and the store, and shaping store rows into the tables the pages show (runs overview, recent
samples, before/after side by side, the methods comparison of engine.compare). Pages call this module and
nothing deeper.

Not responsible for: training (engine.runner, in a worker process: engine.worker), persistence (engine.store)
or drawing (app/). It imports no Streamlit, so every function is usable and testable from Python. The lab never
trains: it enqueues runs in the store and reads them back; a worker process executes them.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ConfigError, FieldError, RewardBackendSettings, RunConfig, validate
from engine.owners import NotOwnerError, User, check_may_act, may_act  # noqa: F401 (NotOwnerError: for callers)
from engine.worker import cancel, eta_seconds, submit

if TYPE_CHECKING:
    import subprocess

    import pandas as pd

    from engine.policy import BrowserPolicy
    from engine.ray_cluster import ClusterInfo, Executor
    from engine.store import GenerationRecord, RunRecord, Store, WorkerRecord


# ---- configs ---------------------------------------------------------------------------------------


def as_config(cfg: RunConfig | dict[str, Any] | str) -> RunConfig:
    """A RunConfig from a RunConfig, a dict of sections or YAML text (ConfigError when malformed)."""
    if isinstance(cfg, RunConfig):
        return cfg
    if isinstance(cfg, dict):
        return RunConfig.from_dict(cfg)
    if isinstance(cfg, str):
        return RunConfig.from_yaml(cfg)
    raise ValueError(f"cfg must be a RunConfig, a dict or YAML text, got {type(cfg).__name__}")


def errors_by_field(errors: Sequence[FieldError]) -> dict[str, list[str]]:
    """FieldErrors grouped as {field: [messages]} in their original order."""
    out: dict[str, list[str]] = {}
    for e in errors:
        out.setdefault(e.field, []).append(e.message)
    return out


def validate_config(cfg: RunConfig | dict[str, Any] | str, check_data: bool = False,
                    policy: BrowserPolicy | None = None) -> dict[str, list[str]]:
    """Every problem of a config as {field: [messages]}; empty when it is valid.

    `check_data=True` also loads and splits the prompts (only when the fields are valid), so a missing
    or too small data source is reported under "data.source" / "data.train_size".
    `policy`: the operator's allow-list for configs written in a browser (the pages pass it; None: no limits,
    as for the CLI). What it refuses is reported first, and validation then never looks at a refused path.
    """
    from engine.runner import prepare_prompts

    try:
        cfg = as_config(cfg)
    except ConfigError as exc:
        return errors_by_field(exc.errors)
    refused = policy.config_problems(cfg) if policy is not None else []
    checked = policy.sanitized(cfg, refused) if refused else cfg
    refused_fields = {p.field for p in refused}
    problems = refused + [p for p in validate(checked) if p.field not in refused_fields]
    if not problems and check_data:
        try:
            prepare_prompts(checked)
        except ConfigError as exc:
            problems = exc.errors
    return errors_by_field(problems)


def policy_problems(cfg: RunConfig, policy: BrowserPolicy | None) -> list[FieldError]:
    """What `policy` refuses in `cfg` (nothing without a policy)."""
    return policy.config_problems(cfg) if policy is not None else []


# ---- the playground ---------------------------------------------------------------------------------

_BACKENDS: dict[str, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def _backend(settings: RewardBackendSettings) -> Any:
    """A built backend, kept per settings: building one may load a model (seconds), scoring is fast."""
    from engine.rewards import build_backend

    key = json.dumps(asdict(settings), sort_keys=True, default=str)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = build_backend(settings)
        return _BACKENDS[key]


def score_text(backends: Sequence[RewardBackendSettings], text: str, prompt: str = "",
               policy: BrowserPolicy | None = None) -> list[dict[str, Any]]:
    """Score one text with each backend: a row per backend with its reward, toxicity (when it has one) and raw signals.

    A backend that fails (missing package, unreachable judge) gives a row with `error` set instead of
    stopping the others. With a `policy` (the pages pass the browser's), a backend it refuses is never built,
    so it can call nothing: its row carries the refusal as its error.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    rows = []
    for i, settings in enumerate(backends):
        row: dict[str, Any] = {"backend": settings.display_name, "kind": settings.kind, "reward": math.nan,
                               "toxicity": math.nan, "raw": {}, "error": None}
        problems = policy.backend_problems(settings, f"reward.backends[{i}]") if policy is not None else []
        problems = problems or validate_backend_settings(settings, i)
        if problems:
            row["error"] = "; ".join(str(p) for p in problems)
            rows.append(row)
            continue
        try:
            backend = _backend(settings)
            result = backend.score([prompt], [text])
            row["reward"] = float(result.scores[0])
            row["raw"] = {k: v[0] for k, v in result.raw.items()}
            if hasattr(backend, "toxicity"):
                row["toxicity"] = float(backend.toxicity([text])[0])
        except Exception as exc:  # shown next to the backend; the others still score
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def validate_backend_settings(settings: RewardBackendSettings, index: int = 0) -> list[FieldError]:
    """Problems of one backend's settings (named reward.backends[index].…)."""
    from engine.config import validate_backend

    return validate_backend(settings, f"reward.backends[{index}]")


# ---- tables ----------------------------------------------------------------------------------------


def before_after_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """The side-by-side table from store.evaluations rows: one row per hold-out prompt (joined on idx).

    Columns: idx, prompt, response_before, toxicity_before, response_after, toxicity_after, change
    (after - before: negative is an improvement). A side that is missing is NaN / empty.
    """
    import pandas as pd

    cols = ["idx", "prompt", "response_before", "toxicity_before", "response_after", "toxicity_after", "change"]
    if evaluations is None or evaluations.empty:
        return pd.DataFrame(columns=cols).astype({"idx": "int64", "toxicity_before": "float64",
                                                  "toxicity_after": "float64", "change": "float64"})

    def side(phase: str) -> pd.DataFrame:
        part = evaluations[evaluations["phase"] == phase].drop_duplicates("idx", keep="last")
        return part.set_index("idx")[["prompt", "response", "toxicity"]].rename(
            columns={"response": f"response_{phase}", "toxicity": f"toxicity_{phase}", "prompt": f"prompt_{phase}"})

    table = side("before").join(side("after"), how="outer").sort_index()
    table["prompt"] = table["prompt_before"].fillna(table["prompt_after"])
    table["change"] = table["toxicity_after"] - table["toxicity_before"]
    table = table.reset_index()
    for col in ("response_before", "response_after"):
        table[col] = table[col].fillna("")
    return table[cols].astype({"idx": "int64", "toxicity_before": "float64", "toxicity_after": "float64",
                               "change": "float64"})


def samples_table(samples: pd.DataFrame, signals: bool = False) -> pd.DataFrame:
    """Recent samples for display, newest first: step, prompt, response, reward and each backend's score.

    Backends' sub-signals (raw keys with a "/", e.g. "jigsaw/p_toxic") are included only with `signals=True`.
    """
    import pandas as pd

    if samples is None or samples.empty:
        return pd.DataFrame(columns=["step", "prompt", "response", "reward"])
    scores = pd.DataFrame(list(samples["scores"]), index=samples.index)
    if not signals:
        scores = scores[[c for c in scores.columns if "/" not in str(c)]]
    table = pd.concat([samples[["step", "prompt", "response", "reward"]], scores], axis=1)
    return table.iloc[::-1].reset_index(drop=True)


def alarm_cards(alarms: pd.DataFrame, samples: pd.DataFrame | None) -> list[dict[str, Any]]:
    """One dict per stored alarm (name, step, since_step, value, threshold, message) with `evidence`: its samples
    as a table (step, idx, response, reward), looked up in `samples` (store.samples rows) by (step, idx)."""
    import pandas as pd

    cards = []
    for a in alarms.itertuples():
        keys = {(e["step"], e["idx"]) for e in a.evidence}
        if samples is not None and keys:
            hit = samples[[(s, i) in keys for s, i in zip(samples["step"], samples["idx"], strict=True)]]
            evidence = hit[["step", "idx", "response", "reward"]].reset_index(drop=True)
        else:
            evidence = pd.DataFrame(columns=["step", "idx", "response", "reward"])
        cards.append({"name": a.name, "step": int(a.step), "since_step": int(a.since_step), "value": a.value,
                      "threshold": a.threshold, "message": a.message, "evidence": evidence})
    return cards


def _config_dict(record: RunRecord) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(record.config_yaml)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def describe_rewards(config: dict[str, Any]) -> str:
    """"profanity×1 + jigsaw×0.5" from a config dict."""
    parts = []
    for b in (config.get("reward") or {}).get("backends") or []:
        if isinstance(b, dict):
            weight = b.get("weight", 1.0)
            parts.append(f"{b.get('name') or b.get('kind', '?')}×{weight:g}" if isinstance(weight, (int, float))
                         else str(b.get("kind")))
    return " + ".join(parts)


def runs_table(records: Sequence[RunRecord], alarm_counts: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per run: id, name, status, method, RLHF chain link, model, rewards, progress, alarms fired (from
    `alarm_counts`, store.alarm_counts()) and its key results."""
    import pandas as pd

    rows = []
    for r in records:
        cfg = _config_dict(r)
        s = r.summary or {}
        before, after = s.get("before") or {}, s.get("after") or {}
        rows.append({
            "id": r.id, "name": r.name, "status": r.status, "method": r.method,
            "chain": describe_chain(chain_links(r)),
            "model": (cfg.get("model") or {}).get("name_or_path", ""),
            "rewards": describe_rewards(cfg),
            "step": f"{r.step}/{r.total_steps if r.total_steps is not None else '?'}",
            "alarms": (alarm_counts or {}).get(r.id, 0),
            "created": r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "tox_before": before.get("mean", math.nan), "tox_after": after.get("mean", math.nan),
            "improvement_%": s.get("pct_improvement_mean", math.nan), "mean_kl": s.get("mean_kl", math.nan),
            "error": r.error or "",
            "owner": r.owner_user or "",
        })
    cols = ["id", "name", "status", "method", "chain", "model", "rewards", "step", "alarms", "created", "tox_before",
            "tox_after", "improvement_%", "mean_kl", "error"]
    if any(r.owner_user for r in records):  # with a login: who started each run (a lab without one is unchanged)
        cols.append("owner")
    return pd.DataFrame(rows, columns=cols)


def chain_links(record: RunRecord) -> dict[str, Any]:
    """Where a run sits in an RLHF chain (a reward_model run with reward_model.then_ppo, then PPO rewarded by it).

    parent_run: the reward_model run whose model rewards this PPO run (None for other runs); then_ppo: whether this
    reward_model run queues a PPO run when it completes; ppo_run: the PPO run it queued; ppo_not_queued: why none was.
    """
    cfg, summary = _config_dict(record), record.summary or {}
    return {"parent_run": cfg.get("parent_run"),
            "then_ppo": record.method == "reward_model" and bool((cfg.get("reward_model") or {}).get("then_ppo")),
            "ppo_run": summary.get("ppo_run"), "ppo_not_queued": summary.get("ppo_not_queued")}


def describe_chain(links: dict[str, Any]) -> str:
    """One line for chain_links(): "rewarded by RUN", "then PPO RUN", "then PPO when completed", "no PPO: why"."""
    if links.get("parent_run"):
        return f"rewarded by {links['parent_run']}"
    if not links.get("then_ppo"):
        return ""
    if links.get("ppo_run"):
        return f"then PPO {links['ppo_run']}"
    if links.get("ppo_not_queued"):
        return f"no PPO: {links['ppo_not_queued']}"
    return "then PPO when completed"


# ---- export ----------------------------------------------------------------------------------------


def export_files(store: Store, run_id: str) -> dict[str, bytes]:
    """The files of a run's export, by name: config, record, summary, metrics, samples, evaluations, log."""
    r = store.get_run(run_id)
    record = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in asdict(r).items()
              if k not in ("config_yaml", "summary", "traceback")}
    evaluations = store.evaluations(run_id)
    files = {
        "config.yaml": r.config_yaml.encode(),
        "run.json": json.dumps(record, indent=2).encode(),
        "summary.json": json.dumps(r.summary or {}, indent=2, default=str).encode(),
        "metrics.csv": store.metrics(run_id).to_csv(index=False).encode(),
        "metrics_wide.csv": store.metrics_wide(run_id).to_csv().encode(),
        "samples.csv": store.samples(run_id).to_csv(index=False).encode(),
        "evaluations.csv": evaluations.to_csv(index=False).encode(),
        "before_after.csv": before_after_table(evaluations).to_csv(index=False).encode(),
        "log.csv": store.logs(run_id).drop(columns="id").to_csv(index=False).encode(),
        "checkpoints.json": json.dumps([{"step": c.step, "path": c.path, "created_at": c.created_at.isoformat()}
                                        for c in store.checkpoints(run_id)], indent=2).encode(),
    }
    if r.traceback:
        files["traceback.txt"] = r.traceback.encode()
    return files


def export_run(store: Store, run_id: str, dest: str | Path | None = None) -> bytes | Path:
    """Export a run: zip bytes (dest None) or a directory `dest` holding the files (returned)."""
    files = export_files(store, run_id)
    if dest is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(f"{run_id}/{name}", data)
        return buf.getvalue()
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


# ---- the lab ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """What the live page shows about a run's progress."""

    status: str
    phase: str  # what its owner reported last (load, eval_before, train, ...) while running, else the status
    step: int
    total: int | None
    eta_s: float | None
    message: str
    error: str | None
    traceback: str | None
    owner: str | None = None  # the process executing it (worker or CLI)
    heartbeat_age_s: float | None = None  # seconds since its owner's last heartbeat

    @property
    def fraction(self) -> float:
        return min(self.step / self.total, 1.0) if self.total else 0.0


def watch_signature(store: Store, run_id: str) -> tuple:
    """What a page watching run `run_id` shows, in a few fields: status, phase, message and step of the run's row,
    whether it has an error, the newest metric row id and log line id, and whether its heartbeat is late (half the
    lease). When it has not changed since the last draw there is nothing new to draw. Two small indexed queries;
    the heartbeat itself (written every few seconds) does not change it. KeyError for an unknown run."""
    r = store.get_run(run_id)
    metric_id, log_id = store.watch_marks(run_id)
    running = r.status == "running"
    late = running and (r.heartbeat_age_s or 0.0) > store.lease_s / 2
    return (r.status, (r.phase or "") if running else "", (r.message or "") if running else "", r.step,
            bool(r.error), metric_id, log_id, late)


def signature_token(sig: tuple) -> str:
    """A short token of a watch signature: a browser compares tokens and learns nothing else about the run."""
    import hashlib

    return hashlib.sha256(repr(sig).encode()).hexdigest()[:16]


def workers_table(workers: Sequence[WorkerRecord], lease_s: float) -> pd.DataFrame:
    """One row per worker: id, host, pid, device, state (live / silent), heartbeat age (s), current run, started."""
    import pandas as pd

    rows = [{"worker": w.id, "host": w.host, "pid": w.pid, "device": w.device or "?",
             "state": "live" if w.is_live(lease_s) else "silent", "heartbeat_s": round(w.heartbeat_age_s, 1),
             "run": w.current_run or "", "started": w.started_at.strftime("%Y-%m-%d %H:%M:%S")} for w in workers]
    return pd.DataFrame(rows, columns=["worker", "host", "pid", "device", "state", "heartbeat_s", "run", "started"])


LOCAL_WORKER_ENV_VAR = "RLAIF_LAB_LOCAL_WORKER"  # "0": the lab never starts a local worker process
CLUSTER_MAX_AGE_S = 15.0  # the Launch page reads the Ray cluster's free resources at most this often


class Lab:
    """The UI's entry point: one store, read and written by enqueueing; worker processes execute the runs.

    `start_worker`: keep a local worker process serving the store (started when no live worker heartbeats in the
    store's `workers` table; checked at most every `housekeeping_s` seconds as pages read runs). Every read of the
    run list also marks runs whose owner stopped heartbeating as interrupted (Store.expire_leases).
    """

    def __init__(self, store: Store, start_worker: bool = False, housekeeping_s: float | None = None,
                 executor: Executor | None = None) -> None:
        from engine.ray_cluster import Executor

        self.store = store
        # Where runs execute: local workers, or a Ray cluster ($RAY_ADDRESS; engine.ray_cluster.Executor.from_env).
        self.executor = executor if executor is not None else Executor.from_env()
        self._cluster: tuple[float, ClusterInfo | Exception] | None = None
        self._cluster_lock = threading.Lock()
        self.start_worker = start_worker
        self.housekeeping_s = housekeeping_s if housekeeping_s is not None else min(5.0, store.lease_s / 3)
        self.worker_process: subprocess.Popen | None = None  # the last local worker this lab started
        self.playground_process: subprocess.Popen | None = None  # the last playground server it started
        self._last_housekeeping = -math.inf
        self._housekeeping_lock = threading.Lock()
        self.housekeeping(force=True)

    @classmethod
    def connect(cls, db_url: str | None = None, start_worker: bool | None = None) -> Lab:
        """The lab over a database (None: $RLAIF_LAB_DB or runs/rlaif_lab.db), with a local worker if none serves it.

        `start_worker` None: yes unless $RLAIF_LAB_LOCAL_WORKER is "0" (workers run elsewhere, e.g. on GPU nodes).
        With the Ray executor ($RAY_ADDRESS) the process it starts is a dispatcher (engine.ray_dispatcher).
        RayUnavailable for an unknown $RLAIF_LAB_EXECUTOR."""
        import os

        from engine.store import Store, new_owner_id

        if start_worker is None:
            start_worker = os.environ.get(LOCAL_WORKER_ENV_VAR, "1") != "0"
        return cls(Store(db_url, owner=new_owner_id("ui")), start_worker=start_worker)

    def housekeeping(self, force: bool = False) -> None:
        """Mark runs of dead owners interrupted and, with `start_worker`, start a local worker when none is live."""
        from engine.worker import ensure_local_worker

        with self._housekeeping_lock:
            now = time.monotonic()
            if not force and now - self._last_housekeeping < self.housekeeping_s:
                return
            self._last_housekeeping = now
            try:
                self.store.expire_leases()
                if not self.start_worker:
                    return
                ours = self.worker_process
                if ours is not None and ours.poll() is None:
                    return  # started by us and alive (maybe still importing torch before it registers)
                proc = ensure_local_worker(self.store, env=self.executor_env())
                if proc is not None:
                    self.worker_process = proc
            except Exception:  # a page must still load when the store is read-only or a worker cannot start
                import logging

                logging.getLogger(__name__).exception("lab housekeeping failed")

    def close(self) -> None:
        """Release the store's connections (a worker this lab started keeps running: it serves the store)."""
        self.store.close()

    # where runs execute
    def executor_env(self) -> dict[str, str]:
        """The environment that makes a worker process this lab starts use the lab's executor."""
        from engine.ray_cluster import EXECUTOR_ENV_VAR, RAY_ADDRESS_ENV_VAR

        env = {EXECUTOR_ENV_VAR: self.executor.kind}
        if self.executor.address:
            env[RAY_ADDRESS_ENV_VAR] = self.executor.address
        return env

    def cluster(self, max_age_s: float = CLUSTER_MAX_AGE_S) -> ClusterInfo | None:
        """The Ray cluster's nodes and free resources (None with local workers), read again when older than
        `max_age_s` seconds (reading it starts a probe process: seconds). RayUnavailable, saying why, when the
        cluster cannot be reached (remembered as long, so a page does not wait for it on every rerun)."""
        from engine.ray_cluster import cluster_info

        if not self.executor.is_ray:
            return None
        with self._cluster_lock:
            now = time.monotonic()
            if self._cluster is None or now - self._cluster[0] > max_age_s:
                try:
                    self._cluster = (time.monotonic(), cluster_info(self.executor.address))
                except ValueError as exc:  # RayUnavailable
                    self._cluster = (time.monotonic(), exc)
            got = self._cluster[1]
        if isinstance(got, Exception):
            raise got
        return got

    def resource_problems(self, cfg: RunConfig) -> list[FieldError]:
        """Why the run cannot get the resources it asks for where it would execute, by field (cfg.resources.*):
        more GPUs / CPUs / memory than any node of the Ray cluster has, or, with local workers, more GPUs than
        this machine has. RayUnavailable when the Ray cluster cannot be reached."""
        from engine.resources import cluster_problems, local_problems

        if self.executor.is_ray:
            return cluster_problems(cfg, self.cluster())
        import socket

        if {w.host for w in self.store.live_workers()} - {socket.gethostname()}:
            return []  # workers on other machines: each checks its own GPUs when it claims the run
        return local_problems(cfg)

    # runs
    def start_run(self, cfg: RunConfig | dict[str, Any] | str, policy: BrowserPolicy | None = None,
                  user: User | None = None) -> str:
        """Validate and queue a run; ConfigError (field by field) before anything is stored, including a run
        asking for more GPUs / CPUs / memory than the executor has (`resource_problems`); RayUnavailable when the
        Ray cluster runs are sent to cannot be reached (nothing is queued then either).

        `policy`: the operator's allow-list when the config comes from a browser (None: no limits).
        `user`: the logged-in user, recorded as the run's owner (None: no login, no owner)."""
        cfg = as_config(cfg)
        if problems := policy_problems(cfg, policy):
            raise ConfigError(problems)
        cfg.check()  # the fields first: the resource checks below read them
        if self.executor.is_ray:
            from engine.ray_cluster import check_address

            check_address(self.executor.address)  # a cluster gone since the last look: say so, queue nothing
        if problems := self.resource_problems(cfg):
            raise ConfigError(problems)
        run_id = submit(self.store, cfg, user=user.name if user is not None else None)
        self.housekeeping(force=True)  # a worker to take it (one may have died since the last look)
        return run_id

    def _check_owner(self, run_id: str, user: User | None, action: str) -> None:
        # The check lives here, not only in the pages: a hidden button is not a permission.
        check_may_act(run_id, self.store.get_run(run_id).owner_user, user, action)

    def may_act(self, record: RunRecord, user: User | None) -> bool:
        """Whether `user` may cancel / delete / resume `record` (for showing the buttons; the actions check too)."""
        return may_act(record.owner_user, user)

    def cancel_run(self, run_id: str, user: User | None = None) -> str:
        """Cancel a queued run now or ask a running one to stop; returns the status after the call.

        `user`: the logged-in user (None: no login); NotOwnerError unless it is the run's owner or an admin."""
        self._check_owner(run_id, user, "cancel")
        return cancel(self.store, run_id)

    def resume_plan(self, run_id: str) -> tuple[bool, str]:
        """Whether run `run_id` can be resumed, and what a resume does (or why it cannot), in one sentence for a
        Resume button: e.g. "Resumes from step 14 of 28; the before-evaluation is kept"."""
        from engine.checkpoint import is_resumable
        from engine.runner import resume_problem

        record = self.store.get_run(run_id)
        if record.is_active:
            return False, f"run {run_id} is {record.status}: only a failed, cancelled or interrupted run is resumed"
        if problem := resume_problem(self.store, run_id):
            return False, problem
        step = max(c.step for c in self.store.checkpoints(run_id) if is_resumable(c.path))
        total = f" of {record.total_steps}" if record.total_steps else ""
        redo = record.step - step
        redo_text = f" (the {redo} step{'s' if redo != 1 else ''} after it are redone)" if redo > 0 else ""
        kept = "the before-evaluation is kept" if self.store.evaluations(run_id, "before").shape[0] else \
            "nothing is evaluated twice"
        return True, f"Resumes from step {step}{total}{redo_text}; {kept}. A worker picks it up from the queue."

    def resume_run(self, run_id: str, user: User | None = None) -> str:
        """Queue a failed, cancelled or interrupted run that has a checkpoint again; the worker that claims it
        continues from its newest checkpoint (engine.runner.execute). ValueError saying why when it cannot be
        resumed (nothing changes then); NotOwnerError unless `user` (None: no login) is the run's owner or an admin.
        Returns the status afterwards ("queued")."""
        self._check_owner(run_id, user, "resume")
        ok, why = self.resume_plan(run_id)
        if not ok:
            raise ValueError(why)
        self.store.reopen(run_id, to="queued")
        self.housekeeping(force=True)  # a worker to take it (one may have died since the last look)
        return "queued"

    def delete_run(self, run_id: str, user: User | None = None) -> None:
        """Delete a finished (or queued) run and all its rows; a running run must be cancelled first.

        `user`: the logged-in user (None: no login); NotOwnerError unless it is the run's owner or an admin."""
        self._check_owner(run_id, user, "delete")
        if self.store.get_run(run_id).status == "queued":
            try:
                cancel(self.store, run_id)
            except ValueError:  # claimed meanwhile: delete_run refuses it below
                pass
        self.store.delete_run(run_id)

    # the trained policy: export, merge, continue training (engine.policy_source, engine.policy_export)
    def check_init_from(self, cfg: RunConfig) -> None:
        """ConfigError naming the field when model.init_from names no usable policy for `cfg` (unknown run, no
        policy, checkpoint missing, another base, LoRA settings that do not fit); loads no model."""
        from engine.policy_source import resolve_init_from

        resolve_init_from(self.store, as_config(cfg))

    def init_from_problems(self, cfg: RunConfig | dict[str, Any] | str) -> dict[str, list[str]]:
        """`check_init_from`'s problems as {field: [messages]} (empty: fine), for the Launch form."""
        try:
            self.check_init_from(as_config(cfg))
        except ConfigError as exc:
            return errors_by_field(exc.errors)
        return {}

    def policy_choices(self, run_id: str) -> list[tuple[int | None, str]]:
        """(step or None for the final policy, label) of what a run's policy can be exported or continued from."""
        from engine.policy_source import policy_choices

        return policy_choices(self.store, run_id)

    def policy_is_adapter(self, run_id: str) -> bool:
        """Whether run `run_id` trained a LoRA adapter (the merge action applies)."""
        return bool(self.run_config(run_id).model.lora.enabled)

    def policy_zip(self, run_id: str, step: int | None = None, merge: bool = False) -> Path:
        """Build (or reuse) the zip of a run's policy on disk: full weights or LoRA adapter (`merge`: merged into
        its base), tokenizer, model card. Returns its path (engine.policy_export.policy_zip). PolicySourceError
        (a ValueError) saying why when the run has no such policy."""
        from engine.policy_export import policy_zip

        return policy_zip(self.store, run_id, step=step, merge=merge)

    def continue_config(self, run_id: str, step: int | None = None) -> RunConfig:
        """A new run's config that starts from run `run_id`'s final policy (or its checkpoint after `step`): the
        source's config with model.init_from = run:<id>[@step] (for the Launch form to adjust and start)."""
        from engine.policy_source import continue_config

        return continue_config(self.store, run_id, step)

    def list_runs(self, status: str | Sequence[str] | None = None) -> list[RunRecord]:
        self.housekeeping()
        return self.store.list_runs(status)

    def runs_table(self) -> pd.DataFrame:
        return runs_table(self.list_runs(), self.store.alarm_counts())

    def queue(self) -> list[str]:
        """Ids of the queued runs, in the order workers take them (higher priority, then older, first)."""
        queued = self.store.list_runs("queued")
        return [r.id for r in sorted(queued, key=lambda r: (-r.priority, r.created_at, r.id))]

    def running(self) -> list[str]:
        """Ids of the runs executing now (in any process), oldest first."""
        return [r.id for r in reversed(self.list_runs("running"))]

    def workers(self) -> list[WorkerRecord]:
        """The worker processes registered in the store (live or silent)."""
        return self.store.list_workers()

    def workers_table(self) -> pd.DataFrame:
        return workers_table(self.workers(), self.store.lease_s)

    def get_run(self, run_id: str) -> RunRecord:
        return self.store.get_run(run_id)

    def run_config(self, run_id: str) -> RunConfig:
        """The config a run was started with (to clone it)."""
        return RunConfig.from_yaml(self.store.get_run(run_id).config_yaml)

    def status(self, run_id: str) -> RunStatus:
        """Status, step/total, and while running the owner's phase, message, heartbeat age and an ETA from the
        step times it stored (any process's run: a worker's or the CLI's)."""
        self.housekeeping()
        r = self.store.get_run(run_id)
        phase, message, eta = r.status, "", None
        if r.status == "running":
            phase, message = r.phase or r.status, r.message or ""
            times = list(r.step_times)
            if not times:  # an owner from before stored step times: the metric rows have them
                times = self.store.metrics(run_id, keys=["time/step_s"])["value"].tolist()
            eta = eta_seconds(times, r.step, r.total_steps)
        return RunStatus(r.status, phase, r.step, r.total_steps, eta, message, r.error, r.traceback, r.owner,
                         r.heartbeat_age_s if r.status == "running" else None)

    def watch_signature(self, run_id: str) -> tuple:
        """See `watch_signature` (no housekeeping: cheap enough for a timer)."""
        return watch_signature(self.store, run_id)

    def run_log(self, run_id: str, last_n: int = 200) -> pd.DataFrame:
        """The run's stored log, newest `last_n` lines, oldest first: time, level, phase, message."""
        return self.store.logs(run_id, last_n=last_n).drop(columns="id")

    # data
    def metrics(self, run_id: str, keys: Sequence[str] | None = None, since_id: int | None = None) -> pd.DataFrame:
        """Metric rows (long: id, step, key, value, time); `since_id` for only the new ones."""
        return self.store.metrics(run_id, keys=keys, since_id=since_id)

    def samples(self, run_id: str, last_n: int = 50, signals: bool = False) -> pd.DataFrame:
        """The most recent samples as a display table (see samples_table)."""
        return samples_table(self.store.samples(run_id, last_n=last_n), signals)

    def alarms(self, run_id: str) -> list[dict[str, Any]]:
        """The run's alarms in the order they fired (see alarm_cards)."""
        alarms = self.store.alarms(run_id)
        return alarm_cards(alarms, self.store.samples(run_id) if len(alarms) else None)

    def evaluations(self, run_id: str) -> pd.DataFrame:
        """The before/after side-by-side table (see before_after_table)."""
        return before_after_table(self.store.evaluations(run_id))

    def export_run(self, run_id: str, dest: str | Path | None = None) -> bytes | Path:
        return export_run(self.store, run_id, dest)

    # comparing methods (engine.compare)
    def comparable_runs(self) -> list[RunRecord]:
        """Finished runs of the policy methods (every method but reward_model), newest first."""
        from engine.compare import policy_runs

        return policy_runs(self.store)

    def helpfulness_scorers(self) -> list[RunRecord]:
        """Completed reward_model runs whose reward model can score helpfulness, newest first."""
        from engine.compare import helpfulness_scorers

        return helpfulness_scorers(self.store)

    def missing_helpfulness(self, run_ids: Sequence[str], scorer_run_id: str) -> int:
        """How many hold-out responses of these runs the scorer has not scored yet (0: all cached)."""
        from engine.compare import missing_helpfulness

        return sum(len(t) for t in missing_helpfulness(self.store, run_ids, scorer_run_id).values())

    def compare(self, run_ids: Sequence[str], helpfulness: str | None = None,
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
        """The comparison table of engine.compare.comparison_table; `helpfulness` = a reward_model run id whose
        model scores the responses first (only those not yet scored; `progress(done, total)` follows it)."""
        from engine.compare import comparison_table

        return comparison_table(self.store, run_ids, helpfulness, progress=progress, build=_backend)

    @staticmethod
    def tradeoff(table: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (True, True),
                 x_before: str | None = None, y_before: str | None = None) -> pd.DataFrame:
        """Points of two table columns with their Pareto front (engine.compare.tradeoff)."""
        from engine.compare import tradeoff

        return tradeoff(table, x, y, maximize, x_before, y_before)

    # the policy playground (engine.playground): the UI queues a request and reads it back; a worker process serves it
    def policy_runs(self) -> list[RunRecord]:
        """Runs that train a policy and have a checkpoint of it on disk (completed ones, and running ones that saved
        one), newest first: what the policy playground offers."""
        from engine.playground import policy_checkpoints

        return [r for r in self.list_runs() if policy_checkpoints(self.store, r.id)]

    def policy_checkpoints(self, run_id: str) -> list[int]:
        """Steps of the run's policy checkpoints on disk, newest first (a completed run's first is its final policy)."""
        from engine.playground import policy_checkpoints

        return list(dict.fromkeys(c.step for c in policy_checkpoints(self.store, run_id)))

    def holdout_prompts(self, run_id: str, limit: int = 50) -> list[str]:
        """The hold-out prompts the run evaluated (empty before its evaluation)."""
        from engine.playground import holdout_prompts

        return holdout_prompts(self.store, run_id, limit)

    def request_generation(self, run_id: str, prompt: str, settings: dict[str, Any] | None = None,
                           checkpoint_step: int | None = None, user: User | None = None,
                           policy: BrowserPolicy | None = None) -> str:
        """Queue k samples of `prompt` from the run's base model and its trained policy (checkpoint_step None: the
        newest), scored by the run's reward backends and evaluator; returns the request's id. ConfigError naming each
        bad field (run, checkpoint, prompt, k, temperature, ...) before anything is stored. Settings: k,
        temperature, top_p, top_k, max_new_tokens, seed (engine.playground.PlaygroundSettings). `policy`: the
        operator's allow-list when the request comes from a browser: a run whose judge (or model path) it refuses is
        refused, so the playground never calls that judge."""
        from engine.playground import enqueue

        gen_id = enqueue(self.store, run_id, prompt, settings, checkpoint_step,
                         user=user.name if user is not None else None, policy=policy)
        self._ensure_generation_server()
        return gen_id

    def generation(self, gen_id: str) -> GenerationRecord:
        """A playground request as it stands (status queued / loading / generating / scoring / done / failed, done
        of total samples, message, error, result). A request whose serving process died is marked failed here."""
        self.store.expire_generations()
        record = self.store.get_generation(gen_id)
        if record.status == "queued":
            self._ensure_generation_server()  # the idle worker may have taken a run meanwhile, or died
        return record

    def generation_waiting_for(self) -> str:
        """What a queued request waits for, in words (for the page)."""
        live = self.store.live_workers()
        idle = [w for w in live if not w.current_run]
        if idle:
            return f"an idle worker ({idle[0].id}) takes it within a second or two"
        ours = self.playground_process
        if ours is not None and ours.poll() is None:
            busy = f"the {len(live)} worker(s) are training; " if live else ""
            return f"{busy}the playground process (pid {ours.pid}) takes it once it has loaded"
        if not self.start_worker:
            return "no idle worker serves this store; it waits for one to finish its run"
        return "a playground process is starting"

    def _ensure_generation_server(self) -> None:
        """A process to serve queued requests: an idle live worker does; else this lab starts a playground process
        (unless one it started still lives, or local processes are off: workers elsewhere serve between runs)."""
        from engine.playground import ensure_playground_server

        if not self.start_worker:
            return
        with self._housekeeping_lock:
            if any(not w.current_run for w in self.store.live_workers()):
                return
            ours = self.playground_process
            if ours is not None and ours.poll() is None:
                return
            self.playground_process = ensure_playground_server(self.store)

    # forms and playground (no store needed; methods for the pages' convenience)
    @staticmethod
    def validate_config(cfg: RunConfig | dict[str, Any] | str, check_data: bool = False,
                        policy: BrowserPolicy | None = None) -> dict[str, list[str]]:
        return validate_config(cfg, check_data, policy)

    @staticmethod
    def score_text(backends: Sequence[RewardBackendSettings], text: str, prompt: str = "",
                   policy: BrowserPolicy | None = None) -> list[dict[str, Any]]:
        return score_text(backends, text, prompt, policy)
