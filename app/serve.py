"""The lab's server: `streamlit run app/serve.py` serves app/main.py (st.App) with one addition, so that deep links
such as /live?run=ID cause no 404s.

Why: Streamlit's page tells where its server is from the address bar. Loaded at /live it first probes
/live/_stcore/health and /live/_stcore/host-config (404 on every load and every reconnect), then /. The page reads
an optional `window.__streamlit.BACKEND_BASE_URL` before it starts; this middleware writes it into each HTML page
the server sends (the server's root, with server.baseUrlPath), so the page probes the root only.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

MAIN = Path(__file__).with_name("main.py")


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


app = st.App(MAIN, middleware=[Middleware(BaseUrlMiddleware)])
