"""Stored messages as safe HTML: Markdown (markdown-it-py), code highlighted (Pygments), sanitised (nh3)."""
from __future__ import annotations

from functools import cache

import nh3
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
# From its own module: `pygments.lexers` makes lexer names on first access, and a worker's first
# request can reach that while the litellm warm-up thread is importing pygments (seen as an
# ImportError and a 500 on a cold worker).
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "span": {"class"}, "div": {"class"}, "code": {"class"},
                      "th": {"class"}, "td": {"class"}}
# A table column's alignment: markdown-it writes `style="text-align:right"`, which the page's
# Content-Security-Policy (style-src 'self') refuses; a class of static/chatrooms/app.css instead.
ALIGNMENT_CLASSES = {"text-align:left": "align-left", "text-align:center": "align-center",
                     "text-align:right": "align-right"}


def _highlight(code: str, language: str, _attributes: str) -> str:
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    # Spans only: markdown-it wraps them in <pre><code class="language-...">.
    return highlight(code, lexer, HtmlFormatter(nowrap=True))


@cache
def _parser() -> MarkdownIt:
    # Raw HTML in a message is text, never markup.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight}).enable("table").enable("strikethrough")


def _render(text: str) -> str:
    parser, env = _parser(), {}
    tokens = parser.parse(text, env)
    for token in tokens:
        if token.type in ("th_open", "td_open") and token.attrs.get("style") is not None:
            alignment = ALIGNMENT_CLASSES.get(str(token.attrs.pop("style")))
            if alignment:
                token.attrSet("class", alignment)
    return parser.renderer.render(tokens, parser.options, env)


def markdown_to_html(text: str) -> str:
    """Safe HTML for a message's Markdown: whatever the text holds, no script, no handler and no style
    attribute survives."""
    return nh3.clean(
        _render(text),
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def highlight_css() -> str:
    """The Pygments colours for code in messages (static/chatrooms/highlight.css is made from this)."""
    return HtmlFormatter(style="friendly").get_style_defs(".message-body pre code")
