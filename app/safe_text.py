"""Text from users (run names, file names, values echoed in errors) made safe to show.

Responsible for: `plain` (printable, one line, truncated: for selectboxes, legends and terminals) and `md` (for
anything Streamlit renders as Markdown: st.markdown, st.error, captions). A run named `![x](http://host/y)` must
not make each viewer's browser fetch that URL, so `md` escapes what can link, fetch or typeset: brackets (links,
images, reference definitions), backticks (code spans that would swallow our own formatting), dollar signs
(LaTeX) and the backslash itself. HTML needs nothing: Streamlit shows it as text without unsafe_allow_html.
Pure functions; no Streamlit.
"""

from __future__ import annotations

import re
import unicodedata

_MD_SPECIAL = re.compile(r"([\\`\[\]$])")
_UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def plain(text: object, limit: int = 200, keep_newlines: bool = False) -> str:
    """`text` as printable text: control, format (bidi, zero-width) and separator characters shown as \\xNN /
    \\uNNNN escapes (newlines kept with keep_newlines), cut to `limit` characters with an ellipsis."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in _UNPRINTABLE and not (keep_newlines and ch == "\n"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def md(text: object, limit: int = 200, keep_newlines: bool = False) -> str:
    """`plain(text)` with the Markdown that could link, fetch or typeset escaped (see the module docstring)."""
    return _MD_SPECIAL.sub(r"\\\1", plain(text, limit, keep_newlines))
