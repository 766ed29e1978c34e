"""The Streamlit lab: entry point (main.py), page helpers (charts, forms, state, tables). Pages live in ../pages/."""
