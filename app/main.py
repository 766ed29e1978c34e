"""Entry point of the lab, `streamlit run app/main.py`: a router over the pages in ../pages (st.navigation).

Before any page it checks where the server listens: on anything but loopback, without a login ([auth]) or the
operator's explicit opt-out, every request gets an error page instead of the lab (engine.lab_settings.
network_problem); with the proxy login, a request that did not come through the proxy gets one too (app/auth.py).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only app/ on sys.path; engine/ and app/ import from the root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import auth, forms, state  # noqa: E402
from app.safe_text import md  # noqa: E402
from engine.lab_settings import SettingsError, auth_problem, load_settings, network_problem, proxy_secret  # noqa: E402
from engine.owners import LoginError  # noqa: E402
from engine.ray_cluster import RayUnavailable  # noqa: E402
from engine.store import StoreUnavailable  # noqa: E402

st.set_page_config(page_title="RLAIF Lab", page_icon="🧪", layout="wide")
try:
    settings = load_settings()
    problem = shown = (auth_problem(settings, proxy_secret(auth.secrets()))
                       or network_problem(st.get_option("server.address"), settings))
except SettingsError as exc:  # fail closed: a broken settings file must not widen what the browser may do
    problem, shown = str(exc), "The lab's settings file has a problem; the operator finds it in the server log."
if problem:
    print(f"RLAIF Lab refuses to serve: {problem}", file=sys.stderr, flush=True)
    st.error(f"**The lab refuses to serve.** {shown}", icon="🔒")
    st.stop()
try:
    user = auth.user()
except LoginError as exc:  # reached around the login proxy (or it named nobody): no page at all
    st.error(f"**Sign in through the lab's login address.** {exc}.", icon="🔒")
    st.stop()
if user is not None:
    st.sidebar.caption(f"Signed in as **{md(user.name)}**" + (" · admin" if user.admin else ""))
try:
    state.lab()  # the store: a misspelt, unreachable or refused database URL stops here, before any page or run
except StoreUnavailable as exc:
    print(f"RLAIF Lab cannot open its store: {exc}", file=sys.stderr, flush=True)
    st.error(f"**The lab cannot open its store.** {exc}. Set `$RLAIF_LAB_DB` to a reachable database and restart "
             "the lab; nothing stored was changed.", icon="🗄️")
    st.stop()
except RayUnavailable as exc:  # $RLAIF_LAB_EXECUTOR names no executor, or ray without $RAY_ADDRESS
    print(f"RLAIF Lab cannot choose where runs execute: {exc}", file=sys.stderr, flush=True)
    st.error(f"**The lab cannot choose where runs execute.** {exc}. Fix it and restart the lab; nothing stored was "
             "changed.", icon="🛰️")
    st.stop()
forms.keep_state()  # the launch form keeps its values while other pages show
pages = [st.Page(state.page_path(name), title=title, icon=icon, url_path=name, default=name == "launch")
         for name, (_, title, icon) in state.PAGE_FILES.items()]
navigation = st.navigation(pages)
state.running_indicator()  # "1 run training: NAME step 5/28" in the sidebar of every page (links need the pages)
navigation.run()
