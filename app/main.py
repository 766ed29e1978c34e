"""Entry point of the lab, `streamlit run app/main.py`: a router over the pages in ../pages (st.navigation).

Before any page it checks where the server listens: on anything but loopback, without the operator's explicit
opt-out, every request gets an error page instead of the lab (engine.lab_settings.network_problem).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only app/ on sys.path; engine/ and app/ import from the root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import forms, state  # noqa: E402
from engine.lab_settings import SettingsError, load_settings, network_problem  # noqa: E402

st.set_page_config(page_title="RLAIF Lab", page_icon=":material/science:", layout="wide")
try:
    problem = shown = network_problem(st.get_option("server.address"), load_settings())
except SettingsError as exc:  # fail closed: a broken settings file must not widen what the browser may do
    problem, shown = str(exc), "The lab's settings file has a problem; the operator finds it in the server log."
if problem:
    print(f"RLAIF Lab refuses to serve: {problem}", file=sys.stderr, flush=True)
    st.error(f"**The lab refuses to serve.** {shown}", icon=":material/lock:")
    st.stop()
forms.keep_state()  # the launch form keeps its values while other pages show
pages = [st.Page(state.page_path(name), title=title, icon=icon, url_path=name, default=name == "launch")
         for name, (_, title, icon) in state.PAGE_FILES.items()]
navigation = st.navigation(pages)
state.running_indicator()  # "1 run training: NAME step 5/28" in the sidebar of every page (links need the pages)
navigation.run()
