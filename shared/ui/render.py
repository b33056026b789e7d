"""Pages from Jinja2 templates (``shared/ui/templates/*.html``) with autoescaping on,
and Markdown to HTML for the release notes.

Every value a template prints is escaped unless it is ``Markup``; the only Markup
made here is the notes' HTML, produced by markdown-it-py with raw HTML turned off
(``<script>`` in a commit message comes out as text) and its link check, which drops
``javascript:``/``data:`` links.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2  # here, not at the top: the dispatcher never renders a page (cold start)

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["code_spans"] = code_spans
    return env


def code_spans(text: str):
    """Plain text whose `backticked` commands become <code> (everything escaped first), so a
    banner shows ``relctl unfreeze`` as a command and not with literal backticks."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def page(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)


def markdown_html(text: str):
    """The notes' Markdown as safe HTML (Markup): tables on, raw HTML off."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return Markup(renderer.render(text))
