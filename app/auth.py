"""The logged-in user of this browser session, when the lab serves a team behind an authenticating proxy.

Responsible for: reading the operator's `[auth]` settings, the proxy's shared secret ($RLAIF_LAB_PROXY_SECRET or
`lab_proxy_secret` in .streamlit/secrets.toml) and this session's request headers (st.context.headers: those of
the browser's WebSocket request, which the proxy authenticated and stamped), and turning them into an
engine.owners.User. Not responsible for: who may do what (engine.owners, checked in engine.api).
"""

from __future__ import annotations

import streamlit as st

from engine.lab_settings import load_settings, proxy_secret
from engine.owners import User, user_from_proxy


def secrets() -> dict:
    """.streamlit/secrets.toml as a dict ({} when there is none: st.secrets raises on a missing file)."""
    try:
        return dict(st.secrets)
    except Exception:  # no secrets file, or one Streamlit cannot parse: no secret from there
        return {}


def user() -> User | None:
    """This session's user (None: no login configured). engine.owners.LoginError when the request did not come
    through the operator's proxy; app/main.py catches it before any page runs."""
    auth = load_settings().auth
    if not auth.login:
        return None
    return user_from_proxy(dict(st.context.headers), auth.user_header, auth.secret_header, proxy_secret(secrets()),
                           admins=auth.admins)
