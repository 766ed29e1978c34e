"""Process and session state of the lab: the shared Lab (the store, and a worker process it keeps), page paths,
the selected run.

Responsible for: the one `Lab` per process and database (`st.cache_resource`, shared by every browser session;
it starts a local worker process when none serves the store), where the pages live, which run a page shows (query parameter
`?run=` first, then the session's last choice), and the run-metrics cache each session keeps so
live charts read only new rows.

Not responsible for: drawing, or anything about training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from app.safe_text import md, plain
from engine.api import Lab
from engine.store import DB_ENV_VAR, resolve_url

ROOT = Path(__file__).resolve().parents[1]
PAGES_DIR = ROOT / "pages"
PAGE_FILES = {  # name -> (file, title, icon); emoji, not :material/…: those make the browser fetch a font
    "launch": ("launch.py", "Launch", "🚀"),
    "live": ("live.py", "Live run", "📈"),
    "before_after": ("before_after.py", "Before / after", "⚖️"),
    "policy_playground": ("policy_playground.py", "Policy playground", "💬"),
    "runs": ("runs.py", "Runs", "🗂️"),
    "compare": ("compare.py", "Compare methods", "📊"),
    "playground": ("playground.py", "Reward playground", "🧪"),
}


def page_path(name: str) -> Path:
    """Absolute path of a page script (what st.Page / st.switch_page / st.page_link take)."""
    return PAGES_DIR / PAGE_FILES[name][0]


def _release(lab: Lab) -> None:
    lab.close()  # a worker process it started keeps running: runs survive the UI


@st.cache_resource(show_spinner=False, on_release=_release)
def _lab(url: str) -> Lab:
    return Lab.connect(url)


def lab() -> Lab:
    """The process's Lab for $RLAIF_LAB_DB (default runs/rlaif_lab.db); on first use it starts a local worker
    process when no live worker serves that store (the UI itself never trains)."""
    return _lab(resolve_url(os.environ.get(DB_ENV_VAR) or None))


def _picked(key: str) -> None:
    run_id = st.session_state[key]
    st.session_state["run_id"] = run_id
    st.query_params["run"] = run_id


def select_run(label: str = "Run", key: str = "run-select", prefer_active: bool = False) -> str | None:
    """A run picker; the choice is shared by every page and kept in the URL as ?run=<id>."""
    runs = lab().list_runs()
    if not runs:
        return None
    ids = [r.id for r in runs]
    wanted = st.query_params.get("run") or st.session_state.get("run_id")
    if wanted not in ids:
        active = [r.id for r in runs if r.is_active] if prefer_active else []
        wanted = active[-1] if active else ids[0]  # newest first: the last active one is executing
    st.session_state[key] = wanted  # before the widget exists: allowed, and keeps every page in step
    st.session_state["run_id"] = wanted
    if st.query_params.get("run") != wanted:
        st.query_params["run"] = wanted
    names = {r.id: plain(f"{r.name} · {r.id} · {r.status}") for r in runs}  # a name may hold anything
    return st.selectbox(label, ids, key=key, format_func=lambda i: names.get(i, i), on_change=_picked, args=(key,))


@dataclass
class MetricCache:
    """A run's metric rows read so far; `refresh()` reads only rows newer than the last one seen."""

    run_id: str
    long: pd.DataFrame = field(default_factory=pd.DataFrame)
    last_id: int = 0
    version: int = 0  # bumps when new rows arrive (keys derived figures)
    _wide: tuple[int, pd.DataFrame] | None = None

    def refresh(self, lab: Lab) -> bool:
        """Append new rows; True when there were any."""
        new = lab.metrics(self.run_id, since_id=self.last_id or None)
        if new.empty:
            return False
        self.last_id = int(new["id"].iloc[-1])
        new = new.drop(columns="id")
        long = new if self.long.empty else pd.concat([self.long.astype({"key": object}), new], ignore_index=True)
        # keys as a category: 400,000 rows take ~10 MB a session instead of ~40 MB of repeated strings
        self.long = long.astype({"key": "category"})
        self.version += 1
        return True

    def wide(self) -> pd.DataFrame:
        """The rows as one column per key (charts.to_wide), recomputed only after new rows."""
        from app.charts import to_wide

        if self._wide is None or self._wide[0] != self.version:
            self._wide = (self.version, to_wide(self.long))
        return self._wide[1]


def metric_cache(run_id: str) -> MetricCache:
    """This session's cache of one run's metrics (a fresh one when the run changes)."""
    cache = st.session_state.get("_metric_cache")
    if not isinstance(cache, MetricCache) or cache.run_id != run_id:
        cache = st.session_state["_metric_cache"] = MetricCache(run_id)
    return cache


def running_indicator() -> None:
    """In the sidebar of every page: "1 run training: NAME step 5/28", linked to its Live page (nothing when idle)."""
    running = lab().list_runs("running")
    if not running:
        return
    with st.sidebar.container(key="running-indicator"):
        n = len(running)
        st.markdown(f"**{n} run{'s' if n > 1 else ''} training**")
        for r in running[:5]:
            st.page_link(page_path("live"), label=md(f"{r.name} step {r.step}/{r.total_steps or '?'}"),  # labels render Markdown
                         query_params={"run": r.id}, icon=":material/monitoring:")
