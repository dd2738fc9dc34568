"""Render an :class:`~mmrag_agent.explain.ExplainedAnswer` as one self-contained, offline HTML page.

The page is meant to be read by a person who wants to know *which sources an answer used and why*:

* the question, then the answer with every citation ``[n]`` turned into a link to the candidate that was
  shown to the stage-2 model as ``[n]`` (anchor id ``cand-n``), and a strip of the cited sources;
* warnings (malformed model output, fallbacks) in a visible box;
* a one-line funnel (retrieved -> kept by stage 1 -> shown to stage 2 -> ranked -> cited);
* the model's reasoning (its citations are linked too);
* one card per candidate, ranked ones first in rank order, then the others: thumbnail (images), text or
  image surrogate, source, modality, retrieval score, stage-1 probability with a bar, whether stage 1 kept it,
  its ``[n]`` in the stage-2 prompt, its stage-2 rank and a "cited" badge;
* the raw model output (collapsed) and the timings.

Safety: every piece of text (model output, document text, file names) is HTML-escaped; images are decoded
with :func:`mmrag_agent.media.load_image` (decompression-bomb guard, full decode, EXIF orientation),
downscaled and embedded as base64 ``data:`` URIs; the page loads nothing from anywhere and carries a
Content-Security-Policy that forbids scripts and any non-``data:`` resource, as defence in depth.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..format import find_citations
from ..media import ImageRejected, load_image
from .evidence import CandidateEvidence, ExplainedAnswer

__all__ = ["render_explanation_html", "write_explanation_html", "candidate_anchor"]

#: Characters of a candidate's text shown on its card before the rest moves into a <details>.
EXCERPT_CHARS = 320
#: Above this many bytes, a PNG thumbnail is re-encoded as JPEG when that is smaller (photos).
_PNG_BUDGET = 48_000


def candidate_anchor(position: int) -> str:
    """The element id of the candidate shown to stage 2 as ``[position]`` (``cand-3`` for ``[3]``)."""
    return f"cand-{position}"


def _e(text: object) -> str:
    """Escape any value for HTML text *and* attribute context (quotes included)."""
    return html.escape("" if text is None else str(text), quote=True)


# --------------------------------------------------------------------------------------------------- images


@dataclass
class _Thumb:
    """A thumbnail as a data URI, or the reason there is none."""

    uri: Optional[str] = None
    width: int = 0
    height: int = 0
    error: Optional[str] = None


def _thumbnail(image_path: Optional[str], max_side: int) -> _Thumb:
    """Load, orient and downscale an image safely, and encode it as a data URI (or explain why not)."""
    if not image_path:
        return _Thumb(error="no image file is recorded for this candidate")
    path = Path(image_path)
    if not path.is_file():
        return _Thumb(error=f"image file not found: {image_path}")
    try:
        loaded = load_image(path, max_side=max_side)
    except ImageRejected as exc:
        return _Thumb(error=str(exc))
    except (OSError, ValueError) as exc:  # e.g. permission denied
        return _Thumb(error=f"cannot read image ({exc})")
    image = loaded.image
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    data, mime = buf.getvalue(), "image/png"
    if len(data) > _PNG_BUDGET:
        jbuf = io.BytesIO()
        image.save(jbuf, format="JPEG", quality=85, optimize=True)
        if jbuf.tell() < len(data):
            data, mime = jbuf.getvalue(), "image/jpeg"
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return _Thumb(uri=uri, width=image.width, height=image.height)


# ---------------------------------------------------------------------------------------------- citations


def _linkify(text: str, positions: dict[int, CandidateEvidence]) -> str:
    """Escape ``text`` and turn each citation number into a link to its candidate's card.

    A group like ``[1, 3]`` becomes one bracket with two links. A number that no candidate was shown as
    stays plain text, marked and with a ``title`` that says why it is not a link.
    """
    out: list[str] = []
    last = 0
    for citation in find_citations(text):  # the parser's own citation grammar
        out.append(_e(text[last:citation.start]))
        parts: list[str] = []
        for n in citation.ids:
            cand = positions.get(n)
            if cand is None:
                parts.append(
                    f'<span class="cite cite-missing" title="No candidate was shown to the model as [{n}]; '
                    f'this citation points to nothing">{n}</span>'
                )
            else:
                label = f"[{n}] {cand.source}"
                parts.append(f'<a class="cite" href="#{candidate_anchor(n)}" title="{_e(label)}">{n}</a>')
        dead = all(n not in positions for n in citation.ids)
        cls = "cite-group cite-dead" if dead else "cite-group"
        out.append(f'<span class="{cls}">[' + ", ".join(parts) + "]</span>")
        last = citation.end
    out.append(_e(text[last:]))
    return "".join(out)


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> tuple[str, bool]:
    """The first ``limit`` characters of ``text``, cut at a word boundary; and whether anything was cut."""
    text = text.strip()
    if len(text) <= limit:
        return text, False
    cut = text[:limit]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,.;:\n") + " …", True


# ------------------------------------------------------------------------------------------------- pieces


def _fmt_num(value: Optional[float], digits: int = 3) -> str:
    return "—" if value is None else "NaN" if math.isnan(value) else f"{value:.{digits}f}"


def _order(candidates: Iterable[CandidateEvidence]) -> tuple[list[CandidateEvidence], list[CandidateEvidence]]:
    """Ranked candidates in rank order, then the others in their given order."""
    cands = list(candidates)
    ranked = sorted((c for c in cands if c.stage2_rank is not None), key=lambda c: c.stage2_rank)
    others = [c for c in cands if c.stage2_rank is None]
    return ranked, others


def _prob_bar(prob: Optional[float], kept: bool) -> str:
    if prob is None:
        return '<span class="muted">not scored</span>'
    if math.isnan(prob):
        return '<span class="muted" title="the model\'s logits overflowed; ranked last">NaN (no score)</span>'
    pct = max(0.0, min(1.0, prob)) * 100
    cls = "bar kept" if kept else "bar"
    return (
        f'<span class="{cls}" role="img" aria-label="{pct:.0f} percent"><span style="width:{pct:.1f}%"></span></span>'
        f'<span class="num">{prob:.3f}</span>'
    )


def _card(cand: CandidateEvidence, anchor: Optional[str], thumb: Optional[_Thumb]) -> str:
    """One candidate's card."""
    classes = ["card"]
    if cand.cited:
        classes.append("is-cited")
    if cand.stage2_rank is None and not cand.kept_by_stage1:
        classes.append("is-dropped")
    id_attr = f' id="{_e(anchor)}"' if anchor else ""

    badges: list[str] = []
    if cand.stage2_position is not None:
        badges.append(f'<span class="pos" title="Shown to the stage-2 model as [{cand.stage2_position}]">'
                      f"[{cand.stage2_position}]</span>")
    if cand.stage2_rank is not None:
        badges.append(f'<span class="badge rank" title="Stage-2 rank (1 = most relevant)">'
                      f"rank {cand.stage2_rank}</span>")
    if cand.cited:
        badges.append('<span class="badge cited" title="The answer cites this candidate">✓ cited</span>')
    badges.append(f'<span class="badge mod mod-{_e(cand.modality)}">{_e(cand.modality)}</span>')

    media = ""
    if thumb is not None:
        if thumb.uri:
            media = (f'<div class="media"><img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" '
                     f'alt="{_e("Image from " + cand.source)}"></div>')
        else:
            media = (f'<div class="media"><div class="placeholder" role="img" aria-label="image unavailable">'
                     f'<strong>Image unavailable</strong><span>{_e(thumb.error)}</span></div></div>')

    text = cand.text or ""
    label = "Image surrogate" if cand.modality == "image" else "Text"
    if text.strip():
        short, cut = _excerpt(text)
        body = f'<div class="label">{label}</div><p class="text">{_e(short)}</p>'
        if cut:
            body += (f'<details class="full"><summary>Full {label.lower()} ({len(text):,} characters)</summary>'
                     f'<p class="text">{_e(text)}</p></details>')
    else:
        body = f'<div class="label">{label}</div><p class="text muted">(empty)</p>'

    if cand.kept_by_stage1:
        s1_state = '<span class="yes">kept</span>'
    elif cand.stage1_probability is None:
        s1_state = '<span class="muted">not scored</span>'
    else:
        s1_state = '<span class="no">dropped</span>'
    cited_state = '<span class="yes">yes</span>' if cand.cited else "no"
    position = "—" if cand.stage2_position is None else f"[{cand.stage2_position}]"
    rank = "not ranked" if cand.stage2_rank is None else str(cand.stage2_rank)
    facts = (
        '<dl class="facts">'
        f'<dt title="Retriever similarity; text and image scores come from different spaces">Retrieval score</dt>'
        f'<dd class="num">{_fmt_num(cand.retrieval_score)}</dd>'
        f"<dt>Stage 1 P(relevant)</dt><dd>{_prob_bar(cand.stage1_probability, cand.kept_by_stage1)}</dd>"
        + (f'<dt title="What stage 1 ranked by: P(relevant) fused with the normalised retrieval score">Fused score</dt>'
           f'<dd class="num">{_fmt_num(cand.fused_score)}</dd>' if cand.fused_score is not None else "")
        + f"<dt>Stage 1</dt><dd>{s1_state}</dd>"
        f"<dt>Stage-2 prompt</dt><dd>{position}</dd>"
        f"<dt>Stage-2 rank</dt><dd>{rank}</dd>"
        f"<dt>Cited</dt><dd>{cited_state}</dd>"
        "</dl>"
    )
    return (
        f'<article class="{" ".join(classes)}"{id_attr}>'
        f'<header><div class="badges">{"".join(badges)}</div>'
        f'<div class="source" title="{_e(cand.source)}">{_e(cand.source)}</div>'
        f'<div class="node muted" title="LlamaIndex node id">{_e(cand.node_id)}</div></header>'
        f'<div class="body">{media}<div class="content">{body}</div>{facts}</div>'
        "</article>"
    )


def _sources_strip(cited: list[CandidateEvidence], anchors: dict[int, str], thumbs: dict[int, _Thumb]) -> str:
    """The cited sources as compact chips under the answer, each linking to its card."""
    if not cited:
        return '<p class="muted sources-none">The answer cites no source.</p>'
    chips = []
    for cand in cited:
        pic = ""
        thumb = thumbs.get(id(cand))
        if thumb is not None and thumb.uri:
            pic = f'<img src="{thumb.uri}" alt="">'
        elif cand.modality == "image":
            pic = '<span class="chip-icon" title="image unavailable">▨</span>'
        else:
            pic = '<span class="chip-icon">¶</span>'
        num = f"[{cand.stage2_position}]" if cand.stage2_position is not None else ""
        inner = f'{pic}<span class="chip-num">{num}</span><span class="chip-src">{_e(cand.source)}</span>'
        anchor = anchors.get(id(cand))
        if anchor:
            chips.append(f'<a class="chip" href="#{_e(anchor)}" title="{_e(cand.source)}">{inner}</a>')
        else:
            chips.append(f'<span class="chip" title="{_e(cand.source)}">{inner}</span>')
    return '<div class="sources"><span class="sources-label">Sources used</span>' + "".join(chips) + "</div>"


def _funnel(cands: list[CandidateEvidence]) -> str:
    steps = [
        (len(cands), "retrieved"),
        (sum(1 for c in cands if c.kept_by_stage1), "kept by stage 1"),
        (sum(1 for c in cands if c.stage2_position is not None), "shown to stage 2"),
        (sum(1 for c in cands if c.stage2_rank is not None), "ranked"),
        (sum(1 for c in cands if c.cited), "cited"),
    ]
    cells = [f'<div class="step"><b>{n}</b><span>{_e(label)}</span></div>' for n, label in steps]
    return '<div class="funnel">' + '<span class="arrow">→</span>'.join(cells) + "</div>"


def _timings(timings: dict[str, float]) -> str:
    if not timings:
        return '<p class="muted">No timings recorded.</p>'
    items = [f'<span class="timing"><b>{_e(k)}</b> {v:.2f} s</span>' for k, v in timings.items()]
    if "total" not in timings and len(timings) > 1:
        items.append(f'<span class="timing total"><b>total</b> {sum(timings.values()):.2f} s</span>')
    return '<div class="timings">' + "".join(items) + "</div>"


_CSS = (Path(__file__).with_name("page.css")).read_text(encoding="utf-8")  # package data

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# --------------------------------------------------------------------------------------------------- public


def render_explanation_html(result: ExplainedAnswer, max_thumbnail_side: int = 256) -> str:
    """Render an explained answer as one self-contained HTML page (a string; nothing is written).

    The page needs nothing outside itself: the CSS is inline, image candidates are decoded with
    :func:`~mmrag_agent.media.load_image` (so decompression bombs are refused before decoding,
    truncated files fail cleanly and EXIF orientation is applied), downscaled so their longer side is at most
    ``max_thumbnail_side`` pixels and embedded as base64 ``data:`` URIs (PNG, or JPEG when that is smaller
    for large photos). An image that cannot be shown (no path, missing file, refused or corrupt) gets a
    visible placeholder that states the reason; rendering never fails because of one image. A
    Content-Security-Policy ``<meta>`` forbids scripts and any resource that is not a ``data:`` image.

    Every piece of text -- question, answer, reasoning, warnings, raw output, candidate texts, sources and
    node ids -- is HTML-escaped (quotes too), so model output and document text cannot inject markup.

    Citations ``[n]`` (and groups ``[n, m]``) in the answer and the reasoning become links to ``#cand-n``, the
    card of the candidate whose ``stage2_position == n``; a number that no candidate carries stays plain
    text with a ``title`` saying so. Candidates with a stage-2 position get ``id="cand-<position>"`` (the first
    one only, should two ever share a position); the others get ``id="cand-other-<i>"``.

    Candidates are shown ranked ones first, in ``stage2_rank`` order, then the rest in their given order;
    each card shows the thumbnail or text (a long text is cut at a word boundary after about
    :data:`EXCERPT_CHARS` characters, the full text in a ``<details>``), source, node id, modality, retrieval
    score, stage-1 probability (number and bar), whether stage 1 kept it, its ``[n]``, its stage-2 rank and a
    "cited" badge. Cited candidates also appear as chips under the answer.

    Args:
        result: The explained answer (see :mod:`mmrag_agent.explain`).
        max_thumbnail_side: Longest side, in pixels, of the embedded thumbnails; must be positive.

    Returns:
        The HTML document, as a string.

    Raises:
        ValueError: If ``max_thumbnail_side`` is not positive.
    """
    if max_thumbnail_side < 1:
        raise ValueError(f"max_thumbnail_side must be positive, got {max_thumbnail_side}")
    cands = list(result.candidates)

    positions: dict[int, CandidateEvidence] = {}
    anchors: dict[int, str] = {}  # id(candidate) -> element id
    for i, cand in enumerate(cands):
        if cand.stage2_position is not None and cand.stage2_position not in positions:
            positions[cand.stage2_position] = cand
            anchors[id(cand)] = candidate_anchor(cand.stage2_position)
        else:
            anchors[id(cand)] = f"cand-other-{i}"

    thumbs: dict[int, _Thumb] = {
        id(c): _thumbnail(c.image_path, max_thumbnail_side) for c in cands if c.modality == "image" or c.image_path
    }

    cited = sorted((c for c in cands if c.cited), key=lambda c: (c.stage2_position is None, c.stage2_position or 0))
    ranked, others = _order(cands)

    parts: list[str] = []
    question = _e(result.question) if result.question.strip() else '<span class="muted">(no question)</span>'
    parts.append('<header><div class="kicker">Explained answer</div>'
                 f"<h1>{question}</h1></header>")

    answer_html = _linkify(result.answer, positions) if result.answer.strip() else '<span class="muted">(no answer)</span>'
    if not result.answered:  # said in plain words: the text above is a note, not the model's answer
        answer_html = (f'<span class="muted">{answer_html}</span><br><span class="no-answer">The model produced no usable answer '
                       "for this question. The candidates below show what was retrieved and how each stage judged it.</span>")
    parts.append(f'<section class="panel answer" aria-label="Answer"><p class="text">{answer_html}</p>'
                 f"{_sources_strip(cited, anchors, thumbs)}</section>")

    if result.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in result.warnings)
        noun = "warning" if len(result.warnings) == 1 else "warnings"
        parts.append(f'<section class="warnings" role="alert"><strong>⚠ {len(result.warnings)} {noun}</strong>'
                     f"<ul>{items}</ul></section>")


    parts.append("<h2>Reasoning</h2>")
    if result.reasoning.strip():
        parts.append(f'<div class="panel"><p class="reasoning">{_linkify(result.reasoning.strip(), positions)}</p></div>')
    else:
        parts.append('<div class="panel"><p class="reasoning muted">(no reasoning given)</p></div>')

    parts.append(f"<h2>Candidates <small>({len(cands)})</small></h2>")
    parts.append(_funnel(cands))
    if not cands:
        parts.append('<p class="muted">No candidates were retrieved.</p>')
    else:
        parts.append('<p class="legend">Ranked by the stage-2 model first (rank 1 = most relevant), then the '
                     "candidates it did not rank. <b>[n]</b> is the number the model saw and cites; the bar is the "
                     "stage-1 probability of relevance (blue = kept for stage 2).</p>")
        if ranked:
            parts.append('<div class="cards">' + "".join(_card(c, anchors[id(c)], thumbs.get(id(c))) for c in ranked)
                         + "</div>")
        if others:
            if ranked:
                parts.append(f'<p class="group-note">Not ranked by stage 2 ({len(others)})</p>')
            parts.append('<div class="cards">' + "".join(_card(c, anchors[id(c)], thumbs.get(id(c))) for c in others)
                         + "</div>")

    parts.append("<h2>Raw model output</h2>")
    raw = result.raw_output
    parts.append(f'<details class="raw"><summary>Stage-2 completion ({len(raw):,} characters)</summary>'
                 f"<pre>{_e(raw) if raw else '(empty)'}</pre></details>")

    parts.append("<h2>Timings</h2>")
    parts.append(_timings(result.timings))

    title = _e(f"Explained answer: {result.question}"[:200])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="mmrag_agent.explain_html"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><main>" + "\n".join(parts) + "</main></body></html>\n"
    )


def write_explanation_html(result: ExplainedAnswer, path: str | Path, max_thumbnail_side: int = 256) -> Path:
    """Render ``result`` with :func:`render_explanation_html` and write it to ``path`` as UTF-8.

    Parent folders are created. The file is self-contained: it can be opened offline, mailed or archived.

    Args:
        result: The explained answer.
        path: Where to write the page (conventionally ``*.html``); an existing file is overwritten.
        max_thumbnail_side: Longest side, in pixels, of the embedded thumbnails.

    Returns:
        The path written, as a :class:`~pathlib.Path`.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_explanation_html(result, max_thumbnail_side=max_thumbnail_side), encoding="utf-8")
    return out
