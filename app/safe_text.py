"""Text from users (run names, file names) made safe to show: control characters escaped, Markdown neutralised.

Responsible for: `plain` (printable, one line, truncated: for selectboxes, captions, tables and terminals) and `md`
(plain, with every character Markdown or Streamlit would interpret backslash-escaped: a run named
`![x](http://host/y)` must not make each viewer's browser fetch that URL). Pure functions; no Streamlit.
"""

from __future__ import annotations

import re
import unicodedata

# CommonMark's escapable ASCII punctuation, plus what Streamlit's Markdown adds ($ for LaTeX, : for emoji and
# colour directives, ~ for strikethrough). Escaping all of them keeps the text literal.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&\"'=^])")


def plain(text: object, limit: int = 200) -> str:
    """`text` on one printable line: control, format (bidi, zero-width) and separator characters shown as
    \\uXXXX escapes, cut to `limit` characters with an ellipsis."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def md(text: object, limit: int = 200) -> str:
    """`plain(text)` with Markdown's special characters escaped, for st.markdown / st.write / titles / captions."""
    return _MD_SPECIAL.sub(r"\\\1", plain(text, limit))
