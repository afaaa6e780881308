"""HTML without active content: the feedback page and every fragment nbconvert puts in it.

:func:`sanitize_html` (a page or a fragment), :func:`sanitize_fragment` and
:func:`sanitize_markdown_html` (nbconvert filters, see :func:`autograder.feedback.feedback_config`)
and :func:`sanitize_feedback_file` (the written page, capped in size) parse the HTML, remove
everything that can run or fetch, and re-serialize it; a page also gets :data:`FEEDBACK_CSP`.
"""
from __future__ import annotations

import html as _html
import re
from pathlib import Path
from typing import Any

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from nbconvert.filters import strip_files_prefix

from labkit.files import write_text
from autograder.output_caps import KiB, MiB, human_bytes, utf8_len

# One HTML fragment (a markdown cell, an HTML output, a highlighted code cell) bigger than this
# is not parsed (bs4 needs ~3 s and ~180 MB per MiB of dense tags) but replaced by a note.
MAX_FRAGMENT_BYTES = 4 * MiB
# Content-Security-Policy of every feedback page: no script, no remote fetch, no form, no
# <base>. A second layer under the sanitizer: if markup ever slipped through, it cannot run.
FEEDBACK_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
                "base-uri 'none'; form-action 'none'")

# Removed with everything inside: scripts, embedded documents and plugins, elements whose
# content browsers parse as raw text (a parser differential there is how sanitizers fall),
# document-level redirects, and SVG animation (it can set an href to javascript:).
_DROP = frozenset("""script noscript template iframe frame frameset object embed applet param
    base link xmp noembed noframes plaintext portal fencedframe animate animatemotion
    animatetransform set handler listener""".split())
_UNWRAP = frozenset({"form"})  # the tag goes, its content stays
_URL_ATTRS = frozenset("""href src xlink:href action formaction data codebase background poster
    cite longdesc lowsrc dynsrc ping manifest icon archive classid profile srcset""".split())
_DROP_ATTRS = frozenset({"srcdoc", "xml:base", "http-equiv"})
_BAD_VALUE = ("javascript:", "vbscript:", "livescript:", "mocha:", "data:text/html")
_BAD_CSS = re.compile(r"javascript:|vbscript:|expression\(|-moz-binding|behavior:|@import")
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpe?g|gif|webp|bmp|svg\+xml)[;,]")
_TAG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_ATTR_NAME = re.compile(r"^[a-z_][a-z0-9_.:-]*$")
_SQUASH = re.compile(r"[\x00-\x20\x7f]+")
# Removed from student markup (see _clean_tree): inline CSS, and SVG's presentation attribute that lets a
# drawing spill out of its box over the rest of the page (the browser clips an inline <svg> by default).
_LAYOUT_ATTRS = frozenset({"style", "overflow"})


def _url_ok(tag: str, attr: str, value: str) -> bool:
    """A squashed, lower-case URL: relative, http(s), mailto; data:image only as an image source."""
    parts = value.split(",") if attr == "srcset" else [value]
    for part in parts:
        scheme = re.match(r"([a-z][a-z0-9+.\-]*):", part)
        if scheme is None or scheme.group(1) in ("http", "https", "mailto"):
            continue
        if scheme.group(1) == "data" and tag in ("img", "image", "source") and _DATA_IMAGE.match(part):
            continue
        return False
    return True


def _clean_attrs(tag: Tag) -> None:
    for name in list(tag.attrs):
        value = tag.attrs[name]
        value = " ".join(value) if isinstance(value, list) else str(value)
        lname = name.lower()
        squashed = _SQUASH.sub("", value).lower()
        if (not _ATTR_NAME.match(lname) or lname.startswith("on") or lname in _DROP_ATTRS
                or any(bad in squashed for bad in _BAD_VALUE)
                or (lname in _URL_ATTRS and not _url_ok(tag.name.lower(), lname, squashed))
                or (lname == "style" and _BAD_CSS.search(squashed))):
            del tag.attrs[name]


def clean_css(css: str) -> str:
    """A stylesheet that cannot end its ``<style>`` element or run script (``<`` becomes ``\\3c``)."""
    css = css.replace("<", "\\3c ")
    css = re.sub(r"(?i)(java|vb)script\s*:", "blocked:", css)
    css = re.sub(r"(?i)expression\s*\(", "blocked(", css)
    return re.sub(r"(?i)-moz-binding|behavior\s*:|@import", "blocked", css)


def _clean_tree(root: Tag, styles: bool = True) -> None:
    """Remove active content below ``root`` (in place, iteratively: student HTML may nest deeply).

    ``styles=False`` (student fragments) also removes ``<style>`` elements and ``style`` attributes: CSS
    runs nothing, but a student stylesheet applies to the whole page, so it could hide the judge's
    verdict lines and show a forged one (red-team pass, 2026-12-07), and an inline ``position: fixed``
    box can cover the page the same way; so can an SVG drawing with ``overflow="visible"``."""
    stack: list[Tag] = [root]
    unwrap: list[Tag] = []
    while stack:
        node = stack.pop()
        for child in list(node.children):
            if isinstance(child, PreformattedString):  # comments, CDATA, <!...>, <?...?>: parsed unlike browsers
                child.extract()
            elif isinstance(child, NavigableString):
                if node.name == "style":
                    child.replace_with(NavigableString(clean_css(str(child))))
            elif isinstance(child, Tag):
                name = child.name.lower()
                if (name in _DROP or not _TAG_NAME.match(name) or (name == "meta" and child.has_attr("http-equiv"))
                        or (not styles and name == "style")):
                    child.decompose()
                    continue
                _clean_attrs(child)
                if not styles:
                    for attr in [a for a in child.attrs if a.lower() in _LAYOUT_ATTRS]:
                        del child.attrs[attr]
                if name in _UNWRAP:
                    unwrap.append(child)
                stack.append(child)
    for tag in unwrap:
        tag.unwrap()


def _is_page(html: str) -> bool:
    return re.match(r"\s*(?:<!doctype|<html)", html[:1000], re.I) is not None


def _sanitize(html: str, note: str | None = None, page: bool | None = None, styles: bool = True) -> str:
    """:func:`sanitize_html`, with ``note`` (plain text) put at the top of the body.

    ``page``: a whole document (doctype, CSP) or a fragment; None: decided from the start of ``html``.
    ``styles``: keep ``<style>`` and ``style=`` (see :func:`_clean_tree`).
    """
    soup = BeautifulSoup(html, "html.parser")
    _clean_tree(soup, styles)
    if note:
        div = soup.new_tag("div", attrs={"class": "alert alert-warning", "role": "alert"})
        div.string = note
        (soup.body or soup).insert(0, div)
    if not (_is_page(html) if page is None else page):
        return str(soup)
    csp = soup.new_tag("meta", attrs={"http-equiv": "Content-Security-Policy", "content": FEEDBACK_CSP})
    if soup.head is None and soup.html is not None:
        soup.html.insert(0, soup.new_tag("head"))
    (soup.head or soup).insert(0, csp)
    return "<!DOCTYPE html>\n" + str(soup).lstrip()


def sanitize_html(html: str | bytes) -> str:
    """``html`` (a whole page or a fragment) without active content.

    Removed: ``<script>`` (nbconvert's MathJax, require.js, jQuery and mermaid loaders too:
    feedback must work offline), ``on*=`` handlers, ``javascript:``/``vbscript:`` and
    non-image ``data:`` URLs, ``<iframe>``/``<object>``/``<embed>``/``<applet>``, ``<form>``
    (its content stays), ``<meta http-equiv>``, ``<base>``, ``<link>``, SVG animation,
    comments/CDATA/processing instructions, raw-text elements (``<xmp>``, ``<noscript>``…).
    ``<style>`` stays (nbconvert's CSS) with ``<`` escaped. A page also gets a
    ``Content-Security-Policy`` meta (:data:`FEEDBACK_CSP`) and a plain ``<!DOCTYPE html>``.
    The tree is re-serialized, so what the browser parses is this module's markup, not the
    student's.
    """
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    return _sanitize(str(html))


def sanitize_fragment(html: Any) -> str:
    """Jinja filter replacing nbconvert's ``clean_html`` (HTML outputs, markdown, SVG, code): the student's
    markup, so also without ``<style>`` or ``style=`` (see :func:`_clean_tree`).

    A fragment over :data:`MAX_FRAGMENT_BYTES` becomes a one-line note instead.
    """
    text = html.decode("utf-8", "replace") if isinstance(html, bytes) else str(html)
    size = utf8_len(text)
    if size > MAX_FRAGMENT_BYTES:
        return (f'<p class="alert alert-warning">… not shown: {size:,} bytes of HTML, over the '
                f"{human_bytes(MAX_FRAGMENT_BYTES)} limit</p>")
    return _sanitize(text, page=False, styles=False)  # a whole document shown as an output stays a fragment


def sanitize_markdown_html(html: Any) -> str:
    """Jinja filter replacing ``strip_files_prefix``: nbgrader's feedback template renders
    markdown cells and comments as ``markdown2html | strip_files_prefix`` with no ``clean_html``."""
    return sanitize_fragment(strip_files_prefix(str(html)))


def sanitize_feedback_file(path: Path, max_bytes: int = 8 * MiB) -> None:
    """Sanitize the feedback page ``path`` in place (atomically) and cap it at ``max_bytes``.

    A longer page is cut (then re-parsed, so no tag is left half open) and gets a note at
    the top saying how long it was.
    """
    path = Path(path)
    raw = path.read_bytes()
    limit = max_bytes
    for _ in range(4):
        note = None
        if len(raw) > limit:
            note = (f"This feedback page was cut to {human_bytes(max_bytes)} (it was {len(raw):,} bytes): "
                    "the end of the notebook is missing. Keep printed output short.")
        out = _sanitize(raw[:limit].decode("utf-8", "replace"), note)
        size = utf8_len(out)
        if size <= max_bytes:
            write_text(path, out)
            return
        limit = max(0, min(limit, len(raw)) * max_bytes // size - 4 * KiB)
    note = f"This feedback page was {len(raw):,} bytes, over the {human_bytes(max_bytes)} limit, and is not shown."
    write_text(path, _sanitize(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head>"
                                          f"<body><p>{_html.escape(note)}</p></body></html>"))
