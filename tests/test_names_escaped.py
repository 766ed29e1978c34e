"""Run names and stored errors are shown escaped: a name holding a Markdown image must not make each viewer's
browser fetch a URL, and control characters must not forge lines (app.safe_text; the pages through AppTest)."""

from __future__ import annotations

import pytest

from app.safe_text import md, plain
from tests.test_pages_apptest import add_finished_run, app, by_key, db  # noqa: F401 - db is a fixture

EVIL = "![x](http://evil.example/pixel.png)"


@pytest.mark.parametrize("text, expected", [
    ("run\nforged", "run\\x0aforged"),
    ("a\x00b", "a\\x00b"),
    ("evil\u202etxt", "evil\\u202etxt"),
    ("\x1b[2J", "\\x1b[2J"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("plain name", "plain name"),
])
def test_plain_escapes_control_and_direction_characters(text, expected):
    assert plain(text) == expected


def test_plain_cuts_long_text():
    assert len(plain("x" * 10_000)) == 200 and plain("x" * 10_000).endswith("…")


@pytest.mark.parametrize("text", [EVIL, "[link](http://x)", "![a][ref]", "`code` $x^2$", "\\[already\\]"])
def test_md_leaves_no_link_image_code_or_math(text):
    escaped = md(text)
    # every bracket, backtick and dollar is preceded by an odd number of backslashes
    i = 0
    while i < len(escaped):
        if escaped[i] == "\\":
            i += 2
            continue
        assert escaped[i] not in "[]`$", (text, escaped, i)
        i += 1


def _markdown_bodies(at) -> list[str]:
    out = []
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "subheader"):
        out += [str(e.value) for e in at.get(kind)]
    return out


def test_runs_live_and_compare_pages_escape_names_and_errors(db):  # noqa: F811 - the fixture
    finished = add_finished_run(db, name=EVIL)
    failed = db.create_run("name: x\n", name=EVIL + " failed")
    db.set_status(failed, "running")
    db.set_status(failed, "failed", error=f"RuntimeError: {EVIL}")

    at = app("runs")
    order = list(by_key(at.dataframe, "runs-table").value["id"])
    at.session_state["runs-table"] = {"selection": {"rows": [order.index(finished)], "columns": []}}
    at.run()
    bodies = _markdown_bodies(at)
    assert any("!\\[x\\](http://evil.example/pixel.png)" in b for b in bodies), bodies  # shown, escaped
    assert not any(EVIL in b for b in bodies), bodies

    at = app("live", run_id=failed)
    bodies = _markdown_bodies(at)
    assert any("RuntimeError: !\\[x\\]" in b for b in bodies), bodies
    assert not any(EVIL in b for b in bodies), bodies
    assert all("\n" not in o for s in at.selectbox for o in s.options)

    at = app(None)
    at.query_params["runs"] = f"{finished},{failed}"
    at.switch_page("../pages/compare.py").run()
    bodies = _markdown_bodies(at)
    assert any("No hold-out evaluation for !\\[x\\]" in b for b in bodies), bodies  # the failed run, escaped
    assert not any(EVIL in b for b in bodies), bodies
