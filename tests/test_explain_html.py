"""The explanation page: links resolve, images are embedded safely, nothing is injectable, and it really renders."""

from __future__ import annotations

import base64
import io
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from browser import INSTALL_HINT, find_chromium, screenshot
from files import write_image, write_png_declaring
from mmrag_agent.explain import CandidateEvidence, ExplainedAnswer
from mmrag_agent.explain.html import EXCERPT_CHARS, render_explanation_html, write_explanation_html

MAGENTA = (255, 0, 255)  # the chart's colour: the page's own CSS never uses it, so it proves the image rendered
EVIL_TEXT = "Q3 revenue was $4.1M. <script>alert('pwned')</script> " + "The quarter closed strongly. " * 20
EVIL_SOURCE = 'charts/q3" onmouseover="alert(1).png'
EVIL_ANSWER = ("Revenue grew 12% in Q3 [2], as the bar chart shows [1, 2]. <img src=x onerror=alert(1)> "
               "An unsupported claim [9].")


def _chart(path: Path) -> Path:
    """A 900x600 'bar chart' in magenta on white (downscaled to a thumbnail by the page)."""
    image = Image.new("RGB", (900, 600), "white")
    draw = ImageDraw.Draw(image)
    for i, h in enumerate([200, 320, 450, 380]):
        draw.rectangle([80 + i * 200, 560 - h, 220 + i * 200, 560], fill=MAGENTA)
    draw.line([60, 560, 860, 560], fill="black", width=4)
    image.save(path)
    return path


def _explained(tmp_path: Path) -> ExplainedAnswer:
    """Every kind of candidate the page must handle, given in scrambled order."""
    chart = _chart(tmp_path / "chart.png")
    photo = write_image(tmp_path / "photo.jpg", size=(80, 40), color="navy", exif={0x0112: 6})  # rotate 90°
    bomb = write_png_declaring(tmp_path / "bomb.png", 9000, 9000)  # over the 8192² budget
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    C = CandidateEvidence
    candidates = [
        C("n-other-text", "text", "notes/unrelated.txt", "Minutes of the picnic committee.", retrieval_score=0.41,
          stage1_probability=0.08, kept_by_stage1=False),
        C("n-photo", "image", "photos/team.jpg", "A photo of the team at the offsite.", image_path=str(photo),
          retrieval_score=0.27, stage1_probability=0.55, kept_by_stage1=True, stage2_position=3, stage2_rank=3),
        C("n-text", "text", "reports/q3.pdf p.2", EVIL_TEXT, retrieval_score=0.83, stage1_probability=0.94,
          kept_by_stage1=True, stage2_position=2, stage2_rank=1, cited=True),
        C("n-bomb", "image", "images/huge.png", "", image_path=str(bomb), retrieval_score=0.22,
          stage1_probability=0.12, kept_by_stage1=False),
        C("n-chart", "image", EVIL_SOURCE, "Bar chart of quarterly revenue.", image_path=str(chart),
          retrieval_score=0.31, stage1_probability=0.88, kept_by_stage1=True, stage2_position=1, stage2_rank=2,
          cited=True),
        C("n-unranked", "text", "reports/q2.pdf p.1", "Q2 revenue was $3.6M.", retrieval_score=0.77,
          stage1_probability=0.61, kept_by_stage1=True, stage2_position=4),
        C("n-corrupt", "image", "images/broken.png", "", image_path=str(corrupt), retrieval_score=0.2),
        C("n-missing", "image", "images/gone.png", "", image_path=str(tmp_path / "gone.png"), retrieval_score=0.19),
    ]
    return ExplainedAnswer(
        question="How much did revenue grow in Q3? <b>bold?</b>",
        answer=EVIL_ANSWER,
        reasoning="[2] states the figure and [1] shows it; [3] is unrelated. </p><script>bad()</script>",
        candidates=candidates,
        warnings=["cited id out of range: 9 (valid: 1..4)", "<i>a warning with markup</i>"],
        raw_output="<think>[2] states it</think><rank>[2] > [1] > [3]</rank><answer>" + EVIL_ANSWER + "</answer>",
        timings={"retrieve": 0.12, "stage1": 0.48, "stage2": 3.2},
    )


class _Page(HTMLParser):
    """Collects what the assertions need: tags with attributes, ids, links, images, cards, text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.imgs: list[dict[str, str | None]] = []
        self.cards: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.append(a["id"])
        if a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "article":
            self.cards.append(a.get("id") or "")

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _decode(uri: str) -> Image.Image:
    header, data = uri.split(",", 1)
    assert re.fullmatch(r"data:image/(png|jpeg);base64", header), header
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_links_resolve_and_cited_candidates_are_anchored(tmp_path):
    result = _explained(tmp_path)
    page = _parse(render_explanation_html(result))

    assert len(page.ids) == len(set(page.ids)), "element ids must be unique"
    ids = set(page.ids)
    internal = [h for h in page.hrefs if h.startswith("#")]
    assert internal and internal == page.hrefs, f"only in-page links expected, got {page.hrefs}"
    for href in internal:
        assert href[1:] in ids, f"{href} points to no element"
    for cand in result.candidates:
        if cand.cited:
            assert f"cand-{cand.stage2_position}" in ids
            assert f"#cand-{cand.stage2_position}" in page.hrefs
    # every candidate shown to stage 2 can be linked to, and [n] in the answer means stage2_position == n
    for cand in result.candidates:
        if cand.stage2_position is not None:
            assert f"cand-{cand.stage2_position}" in ids
    cite_links = [(a.get("href"), a.get("title")) for t, a in page.tags if t == "a" and a.get("class") == "cite"]
    assert ("#cand-2", "[2] reports/q3.pdf p.2") in cite_links
    assert ("#cand-1", f"[1] {EVIL_SOURCE}") in cite_links
    # [9] matches no candidate: plain text with an explanation, no link
    assert "#cand-9" not in page.hrefs and "cand-9" not in ids
    missing = [a for t, a in page.tags if "cite-missing" in (a.get("class") or "")]
    assert missing and "[9]" in missing[0]["title"]


def test_cards_ranked_first_in_rank_order_then_the_others(tmp_path):
    page = _parse(render_explanation_html(_explained(tmp_path)))
    # ranks: [2] -> 1, [1] -> 2, [3] -> 3; then the unranked in their given order
    assert page.cards[:3] == ["cand-2", "cand-1", "cand-3"]
    assert page.cards[3:] == ["cand-other-0", "cand-other-3", "cand-4", "cand-other-6", "cand-other-7"]
    html = render_explanation_html(_explained(tmp_path))
    assert html.count("✓ cited") == 2 and "rank 1" in html and "not ranked" in html
    assert "Not ranked by stage 2 (5)" in html


def test_images_are_embedded_downscaled_and_oriented(tmp_path):
    result = _explained(tmp_path)
    html = render_explanation_html(result, max_thumbnail_side=128)
    page = _parse(html)

    assert page.imgs
    for img in page.imgs:
        assert img["src"].startswith("data:image/"), img["src"][:40]
    assert not re.search(r'\b(?:src|href)\s*=\s*"(?!data:image/|#)', html), "external resource referenced"
    assert "http://" not in html and "https://" not in html and "url(" not in html

    by_alt = {img.get("alt"): _decode(img["src"]) for img in page.imgs if img.get("alt")}
    chart = by_alt[f"Image from {EVIL_SOURCE}"]
    assert chart.size == (128, 85), "900x600 scaled to a longest side of 128"
    assert chart.convert("RGB").getpixel((45, 70))[1] < 80, "the magenta bars survive"
    photo = by_alt["Image from photos/team.jpg"]
    assert photo.size == (40, 80), "EXIF orientation 6 applied: 80x40 becomes upright 40x80"

    # unreadable images get a placeholder with the reason
    text = " ".join(page.text)
    assert text.count("Image unavailable") == 3
    assert "decompression-bomb guard" in text and "declares 9000x9000" in text
    assert "not a readable image" in text or "corrupt or truncated" in text
    assert f"image file not found: {tmp_path / 'gone.png'}" in text


def test_model_output_and_documents_cannot_inject_markup(tmp_path):
    html = render_explanation_html(_explained(tmp_path))
    page = _parse(html)

    assert not any(tag == "script" for tag, _ in page.tags), "a <script> element was injected"
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), f"event handler on <{tag}>: {attrs}"
        assert tag != "img" or attrs["src"].startswith("data:image/"), "the answer's <img> became an element"
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "&lt;i&gt;a warning with markup&lt;/i&gt;" in html
    assert "&lt;rank&gt;[2] &gt; [1] &gt; [3]&lt;/rank&gt;" in html, "raw output is shown verbatim"
    assert 'q3&quot; onmouseover=&quot;alert(1).png' in html
    text = " ".join(page.text)
    assert "<img src=x onerror=alert(1)>" in text, "the answer's markup is shown as text"
    # defence in depth: a CSP that forbids scripts and any non-data resource
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]


def test_long_text_is_cut_with_the_full_text_in_details(tmp_path):
    html = render_explanation_html(_explained(tmp_path))
    assert len(EVIL_TEXT) > EXCERPT_CHARS
    assert f"Full text ({len(EVIL_TEXT):,} characters)" in html
    assert "<details class=\"full\">" in html
    assert html.count("The quarter closed strongly.") > 20, "full text present once, excerpt adds a few more"


def test_warnings_reasoning_raw_output_and_timings_are_shown(tmp_path):
    html = render_explanation_html(_explained(tmp_path))
    assert 'class="warnings"' in html and "2 warnings" in html
    assert "cited id out of range: 9" in html
    assert "[2] states the figure" not in html  # citations in the reasoning are linked...
    assert 'href="#cand-3"' in html  # ...including [3], cited only by the reasoning
    assert '<details class="raw">' in html
    for label in ("retrieve", "stage1", "stage2"):
        assert f"<b>{label}</b>" in html
    assert "<b>total</b> 3.80 s" in html
    assert "<b>8</b><span>retrieved</span>" in html and "<b>2</b><span>cited</span>" in html


def test_empty_result_and_bad_thumbnail_size(tmp_path):
    html = render_explanation_html(ExplainedAnswer(question="", answer="", reasoning=""))
    assert "No candidates were retrieved." in html and "(no answer)" in html and "No timings recorded." in html
    assert "The answer cites no source." in html and 'class="warnings"' not in html
    _parse(html)
    with pytest.raises(ValueError, match="max_thumbnail_side"):
        render_explanation_html(ExplainedAnswer(question="q", answer="a", reasoning=""), max_thumbnail_side=0)


def test_write_explanation_html(tmp_path):
    out = write_explanation_html(_explained(tmp_path), tmp_path / "deep" / "dir" / "explain.html")
    assert isinstance(out, Path) and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "✓ cited" in text


def _non_white_fraction(image: Image.Image) -> float:
    return float((np.asarray(image.convert("L")) < 245).mean())


@pytest.mark.skipif(find_chromium() is None, reason=f"no chromium binary on PATH; {INSTALL_HINT}")
def test_page_renders_in_headless_chromium(tmp_path):
    page = write_explanation_html(_explained(tmp_path), tmp_path / "explain.html")

    start = time.perf_counter()
    top = Image.open(screenshot(page, tmp_path / "top.png", size=(1200, 1600))).convert("RGB")
    print(f"chromium screenshot took {time.perf_counter() - start:.1f} s")

    assert top.size == (1200, 1600)
    assert len(top.getcolors(maxcolors=1 << 20) or []) > 64, "too few colours: blank or unstyled page"
    assert _non_white_fraction(top) > 0.05, "the page is (nearly) blank"
    px = np.asarray(top).astype(int)
    magenta = int(((px[..., 0] > 200) & (px[..., 1] < 80) & (px[..., 2] > 200)).sum())
    assert magenta > 300, f"the embedded chart thumbnail did not render ({magenta} magenta pixels)"


@pytest.mark.skipif(find_chromium() is None, reason=f"no chromium binary on PATH; {INSTALL_HINT}")
def test_citation_fragment_resolves_in_chromium(tmp_path):
    """Opening ``#cand-3`` (what clicking ``[3]`` does) outlines exactly that card, via CSS ``:target``.

    The window is taller than the page so that nothing scrolls: headless Chromium's ``--screenshot`` does not
    capture a scrolled viewport reliably. The two screenshots must then differ only by the blue outline.
    """
    page = write_explanation_html(_explained(tmp_path), tmp_path / "explain.html")
    plain = np.asarray(Image.open(screenshot(page, tmp_path / "plain.png", size=(1200, 4000))).convert("RGB"))
    target = np.asarray(Image.open(screenshot(page, tmp_path / "target.png", size=(1200, 4000),
                                              fragment="cand-3")).convert("RGB"))
    changed = np.abs(plain.astype(int) - target.astype(int)).max(axis=2) > 30
    assert changed.any(), "#cand-3 matched no element (no :target outline drawn)"
    ys, xs = np.nonzero(changed)
    assert xs.max() - xs.min() > 800, "the outline should frame a full-width card"
    assert 100 < ys.max() - ys.min() < 800, "the outline should frame one card"
    r, g, b = target[changed].astype(int).T
    blue = ((b > 180) & (r < 90) & (g < 130)).mean()
    assert blue > 0.8, f"what changed is not the accent outline ({blue:.0%} blue)"
    # the ranked cards come in rank order: [2], [1], then [3]; [3]'s outline lies below [1]'s
    first = np.asarray(Image.open(screenshot(page, tmp_path / "first.png", size=(1200, 4000),
                                             fragment="cand-1")).convert("RGB"))
    first_changed = np.abs(plain.astype(int) - first.astype(int)).max(axis=2) > 30
    assert first_changed.any() and np.nonzero(first_changed)[0].min() < ys.min()


def test_the_page_says_in_plain_words_when_there_is_no_usable_answer_and_shows_the_fused_score():
    from mmrag_agent.explain import NO_ANSWER

    cand = CandidateEvidence(node_id="n", modality="text", source="a.txt", text="t", retrieval_score=0.4, stage1_probability=float("nan"),
                             fused_score=0.71, kept_by_stage1=True)
    page = render_explanation_html(ExplainedAnswer("q?", NO_ANSWER, "", [cand], answered=False))
    assert "The model produced no usable answer" in page and "Fused score" in page and "0.710" in page
    assert "NaN (no score)" in page  # an overflowed P(relevant) is said, not drawn as a full bar
    answered = render_explanation_html(ExplainedAnswer("q?", "Paris [1]", "r", [cand]))
    assert "The model produced no usable answer" not in answered
