"""The lab's server: `streamlit run app/serve.py` serves app/main.py (st.App) with two additions: deep links such as
/live?run=ID cause no 404s, and a Live page learns whether its run changed from one tiny HTTP request.

Why: Streamlit's page tells where its server is from the address bar. Loaded at /live it first probes
/live/_stcore/health and /live/_stcore/host-config (404 on every load and every reconnect), then /. The page reads
an optional `window.__streamlit.BACKEND_BASE_URL` before it starts; this middleware writes it into each HTML page
the server sends (the server's root, with server.baseUrlPath), so the page probes the root only.

The watch route, GET /api/live-signature?run=ID: a short token of what the Live page shows about the run (its row's
status / phase / message / step, the newest metric and log ids, a late heartbeat: engine.api.watch_signature) and
whether it ended. A Live page served from here polls it from the browser and reruns only when the token differs
from the one it drew, so an idle Live tab costs one small request a second (two indexed queries) instead of a
Streamlit script run and its websocket messages. The answer also counts the tabs polling the run (app/watchers.py),
so that they share one redraw budget. The route applies the lab's own gates (the network check, the
proxy login when one is configured) and answers 403 when they refuse; it reveals no run data, only the token.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Route

MAIN = Path(__file__).with_name("main.py")
ROOT = MAIN.resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/serve.py` puts only app/ on sys.path
    sys.path.insert(0, str(ROOT))
from app.watchers import Watchers  # noqa: E402  (after the path fix above)

WATCH_PATH = "/api/live-signature"
WATCH_ENV_VAR = "RLAIF_LAB_WATCH_ROUTE"  # set here: pages/live.py polls the route only when this server serves it


def base_url_script(base_path: str) -> bytes:
    """The <script> that names the server's root for the page (base_path: server.baseUrlPath, may be empty)."""
    path = "/" + base_path.strip("/") + ("/" if base_path.strip("/") else "")
    # json-safe: the path is the operator's config, but keep it a string literal whatever it holds
    import json

    return (f"<script>window.__streamlit=Object.assign({{}},window.__streamlit,"
            f"{{BACKEND_BASE_URL:window.location.origin+{json.dumps(path)}}})</script>").encode()


class BaseUrlMiddleware:
    """Pure ASGI middleware: inserts base_url_script() after <head> in text/html responses."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or "/_stcore/" in scope.get("path", "") or "/static/" in scope.get("path", ""):
            await self.app(scope, receive, send)
            return
        # ask for an uncompressed page so it can be edited (the HTML shell is small)
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"])
        start: dict | None = None
        chunks: list[bytes] = []

        async def wrapped(message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(b"text/html"):
                    start = None
                    await send(message)
                    return
                start = message
                return
            if message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                from streamlit import config

                body = b"".join(chunks).replace(b"<head>", b"<head>" + base_url_script(
                    config.get_option("server.baseUrlPath") or ""), 1)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, wrapped)


_stores: dict[str, object] = {}
_stores_lock = threading.Lock()


def _store():
    """This server's own Store for the watch route (reads only; the pages' Lab has another)."""
    from engine.store import DB_ENV_VAR, Store, resolve_url

    url = resolve_url(os.environ.get(DB_ENV_VAR) or None)
    with _stores_lock:
        if url not in _stores:
            _stores[url] = Store(url)
        return _stores[url]


def _refused(headers: dict) -> bool:
    """Whether the lab's gates refuse this request (as app/main.py refuses a page): fail closed on any error."""
    from streamlit import config

    from engine.lab_settings import auth_problem, load_settings, network_problem, proxy_secret
    from engine.owners import user_from_proxy

    try:
        from app.auth import secrets

        settings = load_settings()
        secret = proxy_secret(secrets())
        if auth_problem(settings, secret) or network_problem(config.get_option("server.address"), settings):
            return True
        if settings.auth.login:
            user_from_proxy(headers, settings.auth.user_header, settings.auth.secret_header, secret,
                            admins=settings.auth.admins)
        return False
    except Exception:
        return True


_watchers = Watchers()


def _signature(run_id: str, watcher_id: str | None) -> dict:
    from engine.api import signature_token, watch_signature

    sig = watch_signature(_store(), run_id)  # KeyError for an unknown run: counted nowhere
    return {"sig": signature_token(sig), "ended": sig[0] not in ("queued", "running"),
            "watchers": _watchers.seen(run_id, watcher_id)}


async def live_signature(request):
    """GET /api/live-signature?run=ID&w=TAB → {"sig": token, "ended": bool, "watchers": tabs polling this run};
    404 for an unknown run, 403 when refused."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    headers = {"Cache-Control": "no-store"}
    if await run_in_threadpool(_refused, dict(request.headers)):
        return JSONResponse({"error": "refused"}, status_code=403, headers=headers)
    run_id = request.query_params.get("run", "")
    try:
        body = await run_in_threadpool(_signature, run_id, request.query_params.get("w"))
    except KeyError:
        return JSONResponse({"error": "no such run"}, status_code=404, headers=headers)
    return JSONResponse(body, headers=headers)


def watch_path() -> str:
    """The watch route's path under server.baseUrlPath (user routes are not prefixed by Streamlit)."""
    from streamlit import config

    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return (f"/{base}" if base else "") + WATCH_PATH


os.environ[WATCH_ENV_VAR] = watch_path()  # the Live page's script runs in this process and reads it
app = st.App(MAIN, middleware=[Middleware(BaseUrlMiddleware)], routes=[Route(watch_path(), live_signature)])
