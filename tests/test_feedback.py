"""Feedback safety: byte limits on outputs, hidden-test scrubbing, verdicts, sanitized HTML."""
from __future__ import annotations

import base64
import copy
import html
import json
import os
import re
import time
import nbformat
import pytest
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from nbgrader.utils import determine_grade
from traitlets.config import Config

import grading_fixtures as gf
from autograder import feedback as fb
from autograder import html_safety as hs
from autograder import notebook as nbu
from autograder import output_caps as oc

KiB, MiB = oc.KiB, oc.MiB
NOTE = re.compile(r"… output truncated: ([\d,]+) bytes over the 64 KiB limit")
EVENT_ATTR = re.compile(r"<[a-zA-Z][^>]*\son\w+\s*=", re.S)


def _nb(*cells) -> nbformat.NotebookNode:
    return new_notebook(cells=list(cells))


def _code(*outputs, grade_id: str | None = None, points: float = 1) -> nbformat.NotebookNode:
    cell = new_code_cell("x = 1", outputs=list(outputs))
    if grade_id:
        cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": grade_id,
                                     "points": points, "locked": True, "schema_version": 3}
    return cell


def _limit(nb, **traits):
    pp = oc.LimitOutputBytes(**traits)
    assert pp.enabled  # an NbGraderPreprocessor is on without config
    return pp(nb, {})[0]


def _cell_bytes(cell) -> int:
    return sum(oc.output_bytes(o) for o in cell.outputs)


# ------------------------------------------------------------------------------ byte limits

def test_100mb_single_line_stream_is_cut_to_64kib():
    text = "x" * (100 * MiB)
    nb = _nb(_code(new_output("stream", name="stdout", text=text)))
    t0 = time.perf_counter()
    out = _limit(nb).cells[0].outputs
    assert time.perf_counter() - t0 < 10
    assert len(out) == 1 and out[0].name == "stdout"
    body, note = out[0].text.rstrip("\n").rsplit("\n", 1)
    assert body == "x" * (64 * KiB)
    assert NOTE.fullmatch(note) and int(NOTE.fullmatch(note).group(1).replace(",", "")) == 100 * MiB - 64 * KiB
    assert oc.output_bytes(out[0]) < 64 * KiB + 200


def test_10000_line_traceback_keeps_head_tail_and_exception():
    tb = ["\x1b[0;31mTraceback (most recent call last)\x1b[0m"]
    tb += [f"\x1b[0;32m  File \"<cell>\", line {i}, in f{i}\x1b[0m\n    return f{i + 1}()" for i in range(10_000)]
    tb += ["\x1b[0;31mRecursionError\x1b[0m: maximum recursion depth exceeded"]
    err = new_output("error", ename="RecursionError", evalue="maximum recursion depth exceeded", traceback=tb)
    nb = _nb(_code(err))
    out = _limit(nb).cells[0].outputs
    assert len(out) == 1 and out[0].output_type == "error"
    new_tb = out[0].traceback
    assert new_tb[0] == tb[0] and new_tb[-1] == tb[-1]  # where it started, what was raised
    notes = [t for t in new_tb if NOTE.fullmatch(t)]
    assert len(notes) == 1
    assert out[0].ename == "RecursionError" and out[0].evalue == "maximum recursion depth exceeded"
    assert oc.output_bytes(out[0]) < 64 * KiB + 200
    assert len(new_tb) < 2200
    # the same traceback as one 10,000-line string
    one = new_output("error", ename="RecursionError", evalue="deep", traceback=["\n".join(tb)])
    new_tb = _limit(_nb(_code(one))).cells[0].outputs[0].traceback
    assert new_tb[0] == tb[0] and new_tb[-1] == tb[-1] and sum(bool(NOTE.fullmatch(t)) for t in new_tb) == 1
    assert sum(len(t.encode()) for t in new_tb) < 64 * KiB + 200


def test_5mb_png_is_dropped_small_png_kept():
    big = base64.b64encode(os.urandom(int(3.75 * MiB))).decode()  # 5 MiB of base64
    small = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(100)).decode()
    nb = _nb(_code(new_output("display_data", data={"image/png": big, "text/plain": "<Figure size 640x480>"},
                              metadata={"image/png": {"width": 640}})),
             _code(new_output("display_data", data={"image/png": small, "text/plain": "<Figure>"})))
    cells = _limit(nb).cells
    first = cells[0].outputs
    assert len(first) == 1 and "image/png" not in first[0].data
    lines = first[0].data["text/plain"].splitlines()
    assert lines[0] == "<Figure size 640x480>"
    assert lines[1] == f"… image/png output dropped ({len(big):,} bytes)"
    assert NOTE.fullmatch(lines[-1])
    assert cells[1].outputs[0].data["image/png"] == small


@pytest.mark.parametrize("filler", ["é", "€", "😀", "a€😀"])
def test_unicode_at_the_cut_point_stays_valid_utf8(filler):
    text = ("a" * (64 * KiB - 1)) + filler * 1000  # the cap falls inside a multi-byte character
    nb = _nb(_code(new_output("stream", name="stdout", text=text)))
    out = _limit(nb).cells[0].outputs[0].text
    body = out.rstrip("\n").rsplit("\n", 1)[0]
    data = body.encode("utf-8")  # raises on a half character / lone surrogate
    assert len(data) <= 64 * KiB and text.startswith(body) and len(data) > 64 * KiB - 4


def test_cut_utf8_every_offset():
    s = "aé€😀b" * 5
    for limit in range(0, len(s.encode()) + 2):
        head, tail = oc.cut_utf8(s, limit), oc.cut_utf8(s, limit, tail=True)
        for part, ok in ((head, s.startswith(head)), (tail, s.endswith(tail))):
            n = len(part.encode())
            assert ok and n <= limit and n > min(limit, len(s.encode())) - 4


def test_cut_never_leaves_half_an_ansi_escape():
    text = "y" * (64 * KiB - 3) + "\x1b[0;31mred\x1b[0m" * 10
    out = _limit(_nb(_code(new_output("stream", name="stdout", text=text)))).cells[0].outputs[0].text
    assert out.split("\n")[0] == "y" * (64 * KiB - 3)


def test_notebook_total_cap_replaces_later_outputs_with_one_line():
    chunk = "z" * (60 * KiB)  # under the per-cell cap, 40 cells = 2.3 MiB
    nb = _nb(*[_code(new_output("stream", name="stdout", text=chunk)) for _ in range(40)])
    cells = _limit(nb).cells
    total = sum(_cell_bytes(c) for c in cells)
    assert total <= 2 * MiB + 40 * 120
    omitted = [c for c in cells if c.outputs[0].text.startswith("… output omitted")]
    assert len(omitted) >= 5
    for c in omitted:
        assert c.outputs == [new_output("stream", name="stdout",
                                        text="… output omitted: this notebook's outputs exceed the 2 MiB limit\n")]
    assert cells[0].outputs[0].text == chunk


def test_small_outputs_untouched_and_config_works():
    outs = [new_output("stream", name="stdout", text="hi\n"),
            new_output("execute_result", data={"text/plain": "3"}, execution_count=1)]
    nb = _nb(_code(*copy.deepcopy(outs)), new_markdown_cell("text"))
    assert _limit(nb).cells[0].outputs == outs
    c = Config()
    c.LimitOutputBytes.max_bytes = 1000
    c.LimitOutputBytes.max_total_bytes = 5000
    pp = oc.LimitOutputBytes(config=c)
    assert (pp.max_bytes, pp.max_total_bytes) == (1000, 5000)
    nb = _nb(_code(new_output("stream", name="stdout", text="q" * 5000)))
    assert "… output truncated: 4,000 bytes over the 1,000 bytes limit" in pp(nb, {})[0].cells[0].outputs[0].text
    unlimited = oc.LimitOutputBytes(max_bytes=-1, max_total_bytes=-1)
    nb = _nb(_code(new_output("stream", name="stdout", text="q" * (200 * KiB))))
    assert len(unlimited(nb, {})[0].cells[0].outputs[0].text) == 200 * KiB


def test_runs_inside_an_nbconvert_exporter_in_the_autograde_order():
    from nbconvert.exporters import NotebookExporter

    order = [p.__name__ for p in oc.autograde_preprocessors()]
    assert order.index("IgnorePattern") < order.index("LimitOutput") < order.index("LimitOutputBytes") \
        < order.index("SaveAutoGrades")
    exporter = NotebookExporter()
    exporter.register_preprocessor(oc.LimitOutputBytes)
    nb = _nb(_code(new_output("stream", name="stdout", text="w" * (MiB))))
    text, _ = exporter.from_notebook_node(nb)
    assert len(text) < 80 * KiB
    nbformat.validate(nbformat.reads(text, as_version=4))


HUGE = "h" * (300 * KiB)
GRADE_CASES = {
    "error after huge stdout": [new_output("stream", name="stdout", text=HUGE),
                                new_output("error", ename="AssertionError", evalue="", traceback=["boom"])],
    "huge stderr": [new_output("stream", name="stderr", text=HUGE)],
    "partial credit after huge stdout": [new_output("stream", name="stdout", text=HUGE),
                                         new_output("execute_result", data={"text/plain": "0.5"}, execution_count=1)],
    "partial credit padded": [new_output("execute_result", data={"text/plain": "0.25" + " " * (300 * KiB)},
                                         execution_count=1)],
    "huge result then error": [new_output("execute_result", data={"text/plain": HUGE, "text/html": HUGE},
                                          execution_count=1),
                               new_output("error", ename="E", evalue="", traceback=[])],
    "huge error": [new_output("error", ename="E" * 1000, evalue=HUGE, traceback=[HUGE, HUGE])],
    "huge stdout only": [new_output("stream", name="stdout", text=HUGE)],
}


@pytest.mark.parametrize("name", sorted(GRADE_CASES))
@pytest.mark.parametrize("exhausted", [False, True], ids=["cell-cap", "notebook-cap"])
def test_grades_do_not_change(name, exhausted):
    filler = [_code(new_output("stream", name="stdout", text="f" * (60 * KiB))) for _ in range(40)]
    filler = filler if exhausted else []
    cell = _code(*copy.deepcopy(GRADE_CASES[name]), grade_id="test_x", points=1)
    before = determine_grade(copy.deepcopy(cell))
    nb = _limit(_nb(*filler, cell))
    after_cell = nb.cells[-1]
    assert determine_grade(after_cell) == before
    assert _cell_bytes(after_cell) < 64 * KiB + 2 * KiB
    nbformat.validate(nb)


# ------------------------------------------------------------------------------ scrubbing

SECRET = "assert mean([0.5, 0.25]) == 0.375"


def test_scrub_outputs_every_cell_ansi_and_html():
    nb = {"cells": [
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": "ok\n### BEGIN HIDDEN TESTS\nstill ok\n"}]},
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "error", "ename": "AssertionError", "evalue": SECRET,
             "traceback": ["frame\n\x1b[0;32m----> 3\x1b[0m \x1b[38;5;28massert\x1b[39m mean([0.5, 0.25]) "
                           "== 0.375\nafter", "AssertionError"]}]},
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {
                "text/html": "<p>fine</p>\n<pre><span>assert mean([0.5, 0.25]) =</span>= 0.375</pre>\n",
                "text/plain": ["line one\n", f"  {SECRET}\n"],
                "application/json": {"k": [SECRET]}}}]},
        {"cell_type": "markdown", "source": SECRET},
    ]}
    removed = fb.scrub_outputs(nb, [SECRET, "pass", "return x"])
    assert removed == 6
    c0, c1, c2 = (c["outputs"][0] for c in nb["cells"][:3])
    assert c0["text"] == "ok\nstill ok\n"
    assert c1["evalue"] == "" and c1["traceback"] == ["frame\nafter", "AssertionError"]
    assert c2["data"] == {"text/html": "<p>fine</p>\n", "text/plain": "line one\n"}
    assert nb["cells"][3]["source"] == SECRET  # sources are not outputs
    assert fb.scrub_outputs(nb, [SECRET]) == 0
    assert not gf.find_leaks(json.dumps([c.get("outputs") for c in nb["cells"]]), [SECRET])


def test_short_secret_lines_are_ignored():
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": "return x\npassed\n"}]}]}
    assert fb.scrub_outputs(nb, ["return x", "pass"]) == 0


def test_strip_hidden_tests_sources_outputs_and_verdicts(tmp_path):
    hidden = "    rec.check('mean([0.5, 0.25])', lambda: mean([0.5, 0.25]))"
    nb = new_notebook(cells=[
        _code(new_output("stream", name="stdout", text=f"printed by another cell: {hidden.strip()}\nkeep me\n")),
        new_code_cell(f"assert mean([1, 2, 3]) == 2\n{nbu.BEGIN_HIDDEN}\ndef hidden_checks(rec):\n{hidden}\n"
                      f"{nbu.END_HIDDEN}\nprint('mean ok')",
                      metadata={"nbgrader": {"grade": True, "grade_id": "test_mean", "points": 2}},
                      outputs=[new_output("stream", name="stdout", text="mean ok\n")]),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    verdicts = {"test_mean": {"points": 0, "max_points": 2, "message": f"{hidden.strip()} raised ZeroDivisionError"}}
    removed = fb.strip_hidden_tests(path, ["some other secret line of code"], verdicts=verdicts)
    assert removed == 1
    out = nbu.read_nb(path)
    assert out["cells"][1]["source"] == f"assert mean([1, 2, 3]) == 2\n{nbu.HIDDEN_REPLACEMENT}\nprint('mean ok')"
    assert out["cells"][0]["outputs"][0]["text"] == "keep me\n"
    texts = [o["text"] for o in out["cells"][1]["outputs"]]
    assert texts == ["mean ok\n", "Grader: 0 / 2 points — hidden check failed: (hidden) raised ZeroDivisionError\n"]
    assert not gf.find_leaks(path.read_text(), nbu.hidden_test_lines(nb.dict() if hasattr(nb, "dict") else nb))
    assert [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"]


# ------------------------------------------------------------------------------ verdicts

def test_add_verdicts_after_own_outputs():
    nb = {"cells": [
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "test_a"}},
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "a ok\n"}]},
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "test_b"}}, "outputs": []},
        {"cell_type": "code", "metadata": {"nbgrader": {"grade_id": "test_c"}}},
        {"cell_type": "markdown", "metadata": {"nbgrader": {"grade_id": "q"}}, "source": "x"},
        {"cell_type": "code", "metadata": {}, "outputs": []},
    ]}
    verdicts = {
        "test_a": {"points": 2.0, "max_points": 2.0, "message": "all 14 hidden checks passed"},
        "test_b": {"points": 0, "max_points": 3, "message": "mean([]) should raise ValueError <b>"},
        "test_c": {"points": 1.5, "max_points": 3, "message": "hidden check failed: 2 of 4 wrong"},
        "q": {"points": 1, "max_points": 1, "message": "ignored"},
        "missing": {"points": 1, "max_points": 1, "message": "ignored"},
    }
    assert fb.add_verdicts(nb, verdicts) is nb
    a, b, c, q, plain = nb["cells"]
    assert a["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "a ok\n"},
                            {"output_type": "stream", "name": "stdout",
                             "text": "Grader: 2 / 2 points — all 14 hidden checks passed\n"}]
    assert b["outputs"][-1]["text"] == \
        "Grader: 0 / 3 points — hidden check failed: mean([]) should raise ValueError <b>\n"
    assert c["outputs"][-1]["text"] == "Grader: 1.5 / 3 points — hidden check failed: 2 of 4 wrong\n"
    assert "outputs" not in q and plain["outputs"] == []


def test_add_verdicts_on_a_notebook_node_stays_valid():
    nb = _nb(_code(grade_id="test_a", points=2))
    fb.add_verdicts(nb, {"test_a": {"points": 2, "max_points": 2, "message": ""}})
    nbformat.validate(nb)
    assert nb.cells[0].outputs[-1].text == "Grader: 2 / 2 points\n"


# ------------------------------------------------------------------------------ HTML

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
MARKDOWN = ("# Report\n\nOrdinary words survive.\n\n> a quote\n\n`a < b`\n\n<img src=x onerror=alert(1)>\n\n"
            "<script>alert(2)</script>\n\n[click me](javascript:alert(3))\n\n"
            "<a href=\"JaVa&#x09;ScRiPt:alert(5)\">tab link</a>\n\n<iframe src=\"https://evil.example\"></iframe>\n")


def _hostile_notebook() -> nbformat.NotebookNode:
    return _nb(new_markdown_cell(MARKDOWN), _code(
        new_output("display_data", data={"text/html": "<svg onload=alert(4)><circle r=1 /></svg>"
                                                      "<table><thead><tr><th>col</th></tr></thead>"
                                                      "<tbody><tr><td>42</td></tr></tbody></table>"
                                                      "<iframe srcdoc='<script>alert(6)</script>'></iframe>",
                                         "text/plain": "table"}),
        new_output("display_data", data={"application/javascript": "alert(7)", "text/plain": "js"}),
        new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        new_output("stream", name="stdout", text="printed <b>text</b>\n")))


def _exporter(template: str, c: Config) -> tuple[HTMLExporter, dict]:
    if template == "nbgrader-feedback":
        from nbgrader.converters import GenerateFeedback
        from nbgrader.coursedir import CourseDirectory

        gf = GenerateFeedback(coursedir=CourseDirectory(config=c), config=c)  # its own template defaults
        res = {"nbgrader": {"notebook": "lab", "score": 1, "max_score": 2, "late_penalty": 0}}
        return HTMLExporter(parent=gf, config=gf.config), res
    c.HTMLExporter.template_name = template
    return HTMLExporter(config=c), {}


def _squash(page: str) -> str:
    return re.sub(r"\s+", " ", page)


def _assert_safe(page: str) -> None:
    assert "<script" not in page.lower()
    assert not EVENT_ATTR.search(page)
    assert "javascript:" not in page.lower()
    assert "<iframe" not in page.lower()
    soup = BeautifulSoup(page, "html.parser")
    assert not [(t.name, a) for t in soup.find_all(True) for a in t.attrs if a.lower().startswith("on")]


@pytest.mark.parametrize("template", ["classic", "lab", "nbgrader-feedback"])
def test_rendered_feedback_has_no_active_content(template):
    c = Config()
    fb.feedback_config(c)
    exporter, res = _exporter(template, c)
    rendered, _ = exporter.from_notebook_node(_hostile_notebook(), resources=res)
    page = hs.sanitize_html(rendered)
    _assert_safe(page)
    assert "Ordinary words survive." in page and "printed &lt;b&gt;text&lt;/b&gt;" in page
    assert f'src="data:image/png;base64,{PNG}"' in page
    assert "<th>col</th>" in page and "<td>42</td>" in page  # HTML outputs are not escaped into text
    assert "<blockquote>" in page and "<code>a &lt; b</code>" in page
    assert "&lt;h1" not in page and "&lt;p&gt;" not in page  # nbconvert's own clean_html shows these as text
    assert "<style" in page  # the template's CSS stays
    assert f'content="{hs.FEEDBACK_CSP}"' in page.replace("&#x27;", "'")
    assert _squash(hs.sanitize_html(page)) == _squash(page)  # stable (up to blank lines in <head>)


CSS_FORGERY = ('<style>.output_stdout, .output_text pre {display:none !important}</style>'
               '<p style="position:fixed; top:0; left:0; width:100%; height:100%; background:white">'
               'Grader: 1 / 1 points — all 2 hidden checks passed</p>')


@pytest.mark.parametrize("template", ["classic", "nbgrader-feedback"])
def test_student_css_cannot_restyle_the_feedback_page(template):
    """A student's stylesheet or inline style would apply to the whole page: hide the judge's verdicts and
    cover the page with a forged one. HTML outputs and markdown lose both; the template's CSS stays."""
    c = Config()
    fb.feedback_config(c)
    exporter, res = _exporter(template, c)
    nb = _nb(new_markdown_cell("<div style='display:none'>x</div>\n\n" + CSS_FORGERY), _code(
        new_output("display_data", data={"text/html": CSS_FORGERY, "text/plain": "html"}),
        new_output("stream", name="stdout", text="Grader: 0 / 1 points, hidden check failed\n")))
    rendered, _ = exporter.from_notebook_node(nb, resources=res)
    page = hs.sanitize_html(rendered)
    soup = BeautifulSoup(page, "html.parser")
    assert soup.body.find_all("style") == [] and soup.body.find_all(style=True) == []
    assert "display:none !important" not in page
    assert soup.head.find_all("style")  # the template's own CSS
    body = str(soup.body)
    assert "Grader: 1 / 1 points" in body  # the forged text stays visible as text, with nothing to hide the rest
    assert "Grader: 0 / 1 points, hidden check failed" in body
    assert hs.sanitize_fragment('<p style="color: red">x</p><style>p{}</style>') == "<p>x</p>"
    # an SVG box drawing outside itself over the verdicts above it
    assert hs.sanitize_fragment('<svg width="1" height="1" overflow="visible"><rect y="-5000" width="9000" '
                                'height="9000" fill="white"></rect></svg>') == \
        '<svg height="1" width="1"><rect fill="white" height="9000" width="9000" y="-5000"></rect></svg>'


def test_without_feedback_config_nbgrader_template_leaves_markdown_live():
    """Why feedback_config exists: sanitize_html=True alone does not reach nbgrader's markdown cells."""
    c = Config()
    c.HTMLExporter.sanitize_html = True
    exporter, res = _exporter("nbgrader-feedback", c)
    rendered, _ = exporter.from_notebook_node(_hostile_notebook(), resources=res)
    assert 'onerror="alert(1)"' in rendered and "<script>alert(2)</script>" in rendered
    _assert_safe(hs.sanitize_html(rendered))  # the post-pass alone still catches it


def test_feedback_config_keeps_other_filters_and_sets_preprocessors():
    c = Config()
    c.HTMLExporter.filters = {"mine": "html.escape"}
    fb.feedback_config(c)
    e = HTMLExporter(config=c)
    env = e.environment.filters
    assert env["clean_html"] is hs.sanitize_fragment and env["mine"] is html.escape
    assert env["strip_files_prefix"] is hs.sanitize_markdown_html
    assert [p.__name__ for p in c.GenerateFeedback.preprocessors] == \
        ["GetGrades", "CSSHTMLHeaderPreprocessor", "LimitOutputBytes"]


MXSS = {  # vectors where a lenient parser and a browser disagree, plus the plain ones
    "style end tag with attribute": "<style></style x><img src=x onerror=alert(1)></style>",
    "style end tag slash": "<style>a{}</style/><img src=x onerror=alert(1)></style>",
    "comment --!>": "<!-- --!><img src=x onerror=alert(1)> -->",
    "cdata": "<![CDATA[ ><img src=x onerror=alert(1)> ]]>",
    "doctype": "<!DOCTYPE x \"><img src=x onerror=alert(1)>\">",
    "processing instruction": "<?x ><img src=x onerror=alert(1)> ?>",
    "svg style": "<svg><style><img src=x onerror=alert(1)></style></svg>",
    "noscript": "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "xmp": "<xmp><img src=x title=\"</xmp><img src=x onerror=alert(1)>\"></xmp>",
    "textarea": "<textarea><img src=x onerror=alert(1)></textarea>",
    "entity scheme": "<a href=\"&#106;avascript&colon;alert(1)\">x</a>",
    "control chars": "<a href=\"\x01 java\nscript:alert(1)\">x</a>",
    "svg animate": "<svg><a><animate attributeName=href values=javascript:alert(1) /><text>x</text></a></svg>",
    "svg xlink": "<svg><a xlink:href=\"javascript:alert(1)\"><text>x</text></a></svg>",
    "form action": "<form action=\"javascript:alert(1)\"><button formaction=javascript:alert(1)>b</button></form>",
    "meta refresh": "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "base": "<base href=\"javascript:alert(1)//\">",
    "object embed": "<object data=\"javascript:alert(1)\"></object><embed src=\"javascript:alert(1)\">",
    "data html": "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>",
    "iframe srcdoc": "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\"></iframe>",
    "odd attribute name": "<img src=x \"onerror=alert(1)>",
    "slash attribute": "<svg/onload=alert(1)>",
    "style expression": "<p style=\"width: expression(alert(1)); background:url(javascript:alert(1))\">x</p>",
    "link import": "<link rel=import href=\"http://evil.example/x.html\">",
    "template": "<template><img src=x onerror=alert(1)></template>",
    "deep nesting": "<div>" * 5000 + "<img src=x onerror=alert(1)>" + "</div>" * 5000,
}


@pytest.mark.parametrize("name", sorted(MXSS))
def test_sanitize_html_vectors(name):
    out = hs.sanitize_html(f"<!DOCTYPE html><html><head></head><body><p>before</p>{MXSS[name]}</body></html>")
    _assert_safe(out)
    low = out.lower()
    assert "<!--" not in out and "<![cdata[" not in low and "<?" not in out and low.count("<!doctype") == 1
    for tag in ("<meta http-equiv=\"refresh", "<base", "<object", "<embed", "<form", "<link", "<animate",
                "<noscript", "<xmp", "<template"):
        assert tag not in low
    for style in re.findall(r"<style[^>]*>(.*?)</style>", out, re.S):
        assert "<" not in style
    assert "before" in out


def test_sanitize_html_keeps_ordinary_markup():
    markup = ('<div class="c" id="i" style="color: red"><a href="https://example.org/x?a=1&amp;b=2">link</a>'
            '<a href="#top">top</a><img src="data:image/jpeg;base64,AAAA" width="3" alt="pic">'
            '<svg viewBox="0 0 1 1"><circle r="1"></circle></svg><pre>a &lt; b</pre></div>')
    out = hs.sanitize_html(markup)
    assert out == ('<div class="c" id="i" style="color: red"><a href="https://example.org/x?a=1&amp;b=2">link</a>'
                   '<a href="#top">top</a><img alt="pic" src="data:image/jpeg;base64,AAAA" width="3"/>'
                   '<svg viewbox="0 0 1 1"><circle r="1"></circle></svg><pre>a &lt; b</pre></div>')
    svg = '<img src="data:image/svg+xml;base64,AAAA"/>'
    assert hs.sanitize_html(svg) == svg
    assert "src" not in hs.sanitize_html('<iframe></iframe><video src="data:video/mp4;base64,AAAA"></video>')


def test_a_document_shown_as_an_output_stays_a_fragment():
    out = hs.sanitize_fragment("<!DOCTYPE html><html><head><title>plot</title></head>"
                               "<body onload=alert(1)><div>fig</div></body></html>")
    assert out == "<html><head><title>plot</title></head><body><div>fig</div></body></html>"


def test_huge_fragment_becomes_a_note():
    note = hs.sanitize_fragment("<b>x</b>" * (hs.MAX_FRAGMENT_BYTES // 8 + 1))
    assert note == (f'<p class="alert alert-warning">… not shown: {hs.MAX_FRAGMENT_BYTES + 8:,} bytes of HTML, '
                    "over the 4 MiB limit</p>")


def test_sanitize_feedback_file_caps_size_with_a_note(tmp_path):
    rows = "".join(f"<tr><td>{i}</td><td>{'é' * 50}</td></tr>" for i in range(20_000))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><script src='https://cdn/x.js'></script>"
            f"<style>body {{ color: black }}</style></head><body><h1>Lab</h1><table>{rows}</table></body></html>")
    path = tmp_path / "lab.html"
    path.write_text(page, encoding="utf-8")
    size = path.stat().st_size
    assert size > 2 * MiB
    t0 = time.perf_counter()
    hs.sanitize_feedback_file(path, max_bytes=1 * MiB)
    assert time.perf_counter() - t0 < 30
    out = path.read_text(encoding="utf-8")
    assert path.stat().st_size <= 1 * MiB
    assert f"This feedback page was cut to 1 MiB (it was {size:,} bytes)" in out
    assert out.index("cut to 1 MiB") < out.index("<h1>Lab</h1>")  # the note comes first
    assert "<script" not in out and out.rstrip().endswith("</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["lab.html"]


def test_sanitize_feedback_file_small_page_only_sanitized(tmp_path):
    path = tmp_path / "lab.html"
    path.write_text("<!DOCTYPE html><html><head><title>t</title></head><body><p onclick='x()'>hi</p>"
                    "<script>alert(1)</script></body></html>", encoding="utf-8")
    hs.sanitize_feedback_file(path)
    out = path.read_text(encoding="utf-8")
    assert "<p>hi</p>" in out and "cut to" not in out
    _assert_safe(out)
    hs.sanitize_feedback_file(path)
    assert _squash(path.read_text(encoding="utf-8")) == _squash(out)


# ------------------------------------------------------------------------------ in a browser

def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


BROWSER_PROBE = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    const tag = el.localName;
    if (['script', 'iframe', 'object', 'embed', 'form', 'base', 'frame', 'noscript'].includes(tag)) bad.push(tag);
    if (tag === 'meta' && (el.getAttribute('http-equiv') || '').toLowerCase() === 'refresh') bad.push('meta refresh');
    for (const a of el.attributes) {
      const v = a.value.replace(/[\\x00-\\x20]/g, '').toLowerCase();
      if (a.name.toLowerCase().startsWith('on')) bad.push(tag + ' ' + a.name);
      if (v.includes('javascript:') || v.includes('vbscript:')) bad.push(tag + ' ' + a.name + '=' + a.value);
    }
  }
  return bad;
}"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH")
def test_browser_parses_sanitized_pages_without_active_content(tmp_path):
    """What matters is the DOM a browser builds from the sanitized markup (mutation XSS).

    The CSP meta is removed first, so the sanitizer alone is under test; then a page with a
    script smuggled in after sanitizing shows that the CSP alone stops it.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-extensions"]
    c = Config()
    fb.feedback_config(c)
    rendered, _ = _exporter("nbgrader-feedback", c)[0].from_notebook_node(
        _hostile_notebook(), resources={"nbgrader": {"notebook": "lab", "score": 1, "max_score": 2, "late_penalty": 0}})
    vectors = "".join(f"<div>{v}</div>" for k, v in MXSS.items() if k != "deep nesting")
    pages = {"feedback": rendered, "vectors": f"<!DOCTYPE html><html><head></head><body>{vectors}</body></html>"}
    csp = re.compile(r"<meta[^>]*Content-Security-Policy[^>]*>")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=args)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for name, raw in pages.items():
                path = tmp_path / f"{name}.html"
                path.write_text(csp.sub("", hs.sanitize_html(raw)), encoding="utf-8")
                page.goto(path.as_uri())
                page.wait_for_timeout(300)
                assert page.evaluate(BROWSER_PROBE) == [], name
                page.evaluate("() => document.querySelectorAll('a').forEach("  # javascript: hrefs run on click
                              "a => a.dispatchEvent(new MouseEvent('click', {bubbles: true})))")
                page.wait_for_timeout(300)
            assert dialogs == []
            # the CSP stops what a sanitizer bug would let through
            smuggled = hs.sanitize_html(rendered).replace("</body>", "<img src=x onerror=alert(8)>"
                                                                     "<script>alert(9)</script></body>", 1)
            path = tmp_path / "smuggled.html"
            path.write_text(smuggled, encoding="utf-8")
            page.goto(path.as_uri())
            page.wait_for_timeout(300)
            assert dialogs == []
            path.write_text(csp.sub("", smuggled), encoding="utf-8")  # control: without the CSP it runs
            page.goto(path.as_uri())
            page.wait_for_timeout(300)
            assert dialogs
            path.write_text(pages["vectors"], encoding="utf-8")  # control: the probe sees unsanitized vectors
            page.goto(path.as_uri())
            assert len(page.evaluate(BROWSER_PROBE)) > 10
        finally:
            browser.close()


def test_fit_lines_keeps_what_fits():
    lines = ["a" * 40, "b" * 10]
    assert oc._fit_lines(lines, 50) == (lines, 2)
    kept, at = oc._fit_lines(["h" * 10, "m" * 100, "t" * 10], 40)
    assert kept == ["h" * 10, "m" * 10, "m" * 10, "t" * 10] and at == 2  # start and end of "m", note between
    assert oc._fit_lines(["x" * 100], 10) == (["x" * 5, "x" * 5], 1)
