"""Entry point of the lab, `streamlit run app/main.py`: a router over the pages in ../pages (st.navigation)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only app/ on sys.path; engine/ and app/ import from the root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import forms, state  # noqa: E402

st.set_page_config(page_title="RLAIF Lab", page_icon=":material/science:", layout="wide")
forms.keep_state()  # the launch form keeps its values while other pages show
pages = [st.Page(state.page_path(name), title=title, icon=icon, url_path=name, default=name == "launch")
         for name, (_, title, icon) in state.PAGE_FILES.items()]
st.navigation(pages).run()
