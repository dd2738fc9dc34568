"""Parsing is linear-time: no super-linear regular expression, and the hand-written scanners do linear work.

Nothing here is timed (timing targets live in ``benchmarks/parsing.py``): regular expressions are checked by
their shape, and the scanners' work is counted deterministically while the input doubles.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from regex_shapes import module_patterns, risky_shapes

import mmrag_agent.indexing
from mmrag_agent.indexing.html_text import MAX_PENDING_CHARS, HTMLText
from mmrag_agent.indexing.readers import FileRejected, markdown_heading, markdown_images, read_html

OWN_MODULES = ["mmrag_agent.schema", "mmrag_agent.jsonl", "mmrag_agent.media"] + [
    f"mmrag_agent.indexing.{m.name}" for m in pkgutil.iter_modules(mmrag_agent.indexing.__path__)]


@pytest.mark.parametrize("pattern", [
    r"^#{1,6}\s+(.+?)\s*#*\s*$",  # the old Markdown heading pattern (cubic on '# Zebra' + spaces + 'x')
    r"(a+)+$", r"(\s*)*x", r"(?:\w+\s?)+$", r"\d+\d+x", r"(.*?)\s*$", r"x\s*(?:y?)\s*z",
])
def test_the_shape_check_flags_super_linear_patterns(pattern):
    assert risky_shapes(pattern)


@pytest.mark.parametrize("pattern", [r"[^\s/>]*", r"[\s_\-.]+", r"([a-z])([A-Z])", r"\s*=\s*\w+", r"a+b+", r"(?:ab)+"])
def test_the_shape_check_accepts_linear_patterns(pattern):
    assert not risky_shapes(pattern)


@pytest.mark.parametrize("module_name", OWN_MODULES)
def test_no_super_linear_regular_expression_in_indexing_and_data_readers(module_name):
    module = importlib.import_module(module_name)
    for pattern, flags in module_patterns(module):
        assert not risky_shapes(pattern, flags), (module_name, pattern)


class CountingStr(str):
    """A string that counts the characters its ``find`` and ``startswith`` calls look at."""

    work = 0

    def find(self, sub, start=0, end=None):
        found = str.find(self, sub, start, end)
        CountingStr.work += (found + len(sub) if found >= 0 else len(self)) - start
        return found

    def startswith(self, prefix, start=0, end=None):
        CountingStr.work += len(prefix) if isinstance(prefix, str) else max(map(len, prefix))
        return str.startswith(self, prefix, start, end)


HOSTILE_MARKDOWN = {
    "bang-brackets": lambda n: "![" * n,
    "unclosed-destinations": lambda n: "![a](" * n,
    "spaces-in-destination": lambda n: "![a](b " + " " * n + "x",
    "no-closing-bracket": lambda n: "![" + "a" * n,
    "many-images": lambda n: '![alt](img.png "t") ' * (n // 20),
    "brackets-and-parens": lambda n: "](" * n,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_MARKDOWN))
def test_markdown_image_scan_does_linear_work(shape):
    work = []
    for n in (20_000, 40_000, 80_000):
        CountingStr.work = 0
        list(markdown_images(CountingStr(HOSTILE_MARKDOWN[shape](n))))
        work.append(CountingStr.work)
    assert work[2] <= 2.2 * work[1] and work[1] <= 2.2 * work[0], work
    assert work[2] <= 12 * 80_000


def test_markdown_heading_rules():
    assert markdown_heading("# Zebra" + " " * 6000 + "x") == "Zebra x"
    assert markdown_heading("## Title ##") == "Title"
    assert markdown_heading("# C#") == "C#"  # a closing run needs a space before it
    assert markdown_heading("#hashtag") is None and markdown_heading("####### seven") is None
    assert markdown_heading("# " + "word " * 500).endswith("word") and len(markdown_heading("# " + "word " * 500)) <= 200


PAGE = ("<!DOCTYPE html><html><head><title>Caf&eacute; &amp; bar</title><style>p { color: red }</style>"
        "<script>if (a < b && '</p>') { document.write('<p>hidden</p>') } </scr + ipt></script></head><body>"
        "<!-- a comment with <p>markup</p> --><h1>Menu</h1><p>Espresso &lt;strong&gt; &amp; milk.</p>"
        "<svg/><p>After a self-closing svg.</p><svg><text>drawn text</text></svg>"
        "<figure><img src=\"img/cup.png\" alt='a cup' title=t><figcaption>Our <b>house</b> blend</figcaption></figure>"
        "<p>Unclosed <img src=x.png alt=\"broken")


@pytest.mark.parametrize("piece", [1, 7, 64, len(PAGE)])
def test_html_fed_in_pieces_gives_the_same_result_as_at_once(piece):
    page = HTMLText()
    for start in range(0, len(PAGE), piece):
        page.feed(PAGE[start:start + piece])
    page.close()
    text = page.take_text()
    assert "Espresso &lt;strong&gt; &amp; milk." in text and "After a self-closing svg." in text
    assert "hidden" not in text and "markup" not in text and "drawn text" not in text and "color" not in text
    assert page.title == "Café & bar"
    assert page.images == [{"src": "img/cup.png", "alt": "a cup", "title": "t", "caption": "Our house blend"}]


def test_read_html_decodes_entities_once_and_keeps_text_before_an_unterminated_comment(tmp_path):
    parsed = read_html(tmp_path / "a.html", b"<p>5 &amp;lt; 6</p><p>kept</p><!-- never closed <p>gone</p>", tmp_path)
    assert parsed.sections[0][0] == "5 &lt; 6\nkept"


def test_html_waits_for_an_unterminated_construct_only_so_long(monkeypatch):
    monkeypatch.setattr("mmrag_agent.indexing.html_text.MAX_PENDING_CHARS", 1000)
    page = HTMLText()
    page.feed("<p>fine</p><!-- ")
    with pytest.raises(FileRejected, match="unterminated tag or comment"):
        for _ in range(20):
            page.feed("x" * 100)
    assert MAX_PENDING_CHARS >= 1 << 20


def test_numeric_character_references_of_thousands_of_digits_are_not_converted(tmp_path):
    huge = "&#" + "9" * 5000 + ";"
    parsed = read_html(tmp_path / "a.html", f"<title>T{huge}</title><p>a{huge}b &#x41; &#65;</p><img src=x.png alt='{huge}'>".encode(), tmp_path)
    assert parsed.sections[0][0] == "a\ufffdb A A" and parsed.title == "T\ufffd"
    assert parsed.image_references[0].alt == "\ufffd"
