"""Parsing time grows linearly with the input, hostile inputs included: time at n, 2n and 4n characters.

For each input shape the readers are timed at three sizes; the growth per doubling is ~2 for linear work, ~4
for quadratic and ~8 for cubic. Target: at most 3 for every shape on this code. For comparison the replaced
implementations run on the shapes that broke them (the old Markdown heading and image regular expressions,
and the standard library's ``html.parser``), at smaller sizes and stopped once a run passes ``--budget``
seconds.

    python benchmarks/parsing.py [--n 200000] [--budget 20]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from html.parser import HTMLParser
from pathlib import Path

from mmrag_agent.indexing.readers import FileRejected, read_html, read_markdown
from mmrag_agent.indexing.streams import _decode, _html_text, _segments
from mmrag_agent.schema import DatasetError, iter_jsonl

ROOT = Path("/nonexistent-root")
OLD_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
OLD_MD_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\(\s*<?(?P<src>[^)\s>]+)>?(?:\s+[\"'](?P<title>[^\"']*)[\"'])?\s*\)")

PROSE = "The keeper logged the tide at dawn; gulls circled the pier. "
SHAPES = {
    "markdown: '# Zebra' + spaces + 'x'": ("md", lambda n: "# Zebra" + " " * n + "x\n"),
    "markdown: '![' repeated": ("md", lambda n: "![" * (n // 2)),
    "markdown: '![a](' repeated": ("md", lambda n: "![a](" * (n // 5)),
    "markdown: prose with images": ("md", lambda n: ("# Log\n\n" + (PROSE + "![chart](c.png \"t\") ") * (n // 80))),
    "html: '<!--' repeated": ("html", lambda n: "<p>x</p>" + "<!--" * (n // 4)),
    "html: '<a' repeated": ("html", lambda n: "<p>x</p>" + "<a" * (n // 2)),
    "html: '</' repeated": ("html", lambda n: "<p>x</p>" + "</" * (n // 2)),
    "html: '<![' repeated": ("html", lambda n: "<p>x</p>" + "<![" * (n // 3)),
    "html: unterminated attribute": ("html", lambda n: "<p>x</p><img alt='" + "y" * n),
    "html: ordinary page": ("html", lambda n: "<html><body>" + ("<p>" + PROSE + "<img src=a.png alt=b></p>") * (n // 80)),
    "html streamed: '<!--' repeated": ("html-stream", lambda n: "<p>x</p>" + "<!--" * (n // 4)),
    "jsonl: one line of small integers": ("jsonl", lambda n: '{"qid": "q", "xs": [' + ",".join(["7"] * (n // 2)) + "]}\n"),
    "jsonl: nesting 199 deep, many lines": ("jsonl", lambda n: ('{"a": ' + "[" * 198 + "]" * 198 + "}\n") * (n // 404)),
}
BASELINES = {  # name: (smallest size, action)
    "old heading regex: '# Zebra' + spaces + 'x'": (250, lambda n: OLD_MD_HEADING.search("# Zebra" + " " * n + "x\n")),
    "old image regex: '![' repeated": (20_000, lambda n: list(OLD_MD_IMAGE.finditer("![" * (n // 2)))),
    "html.parser: '<!--' repeated": (20_000, lambda n: _stdlib_html("<p>x</p>" + "<!--" * (n // 4))),
}


def _stdlib_html(text: str) -> None:
    parser = HTMLParser()
    parser.feed(text)
    parser.close()


def _run(kind: str, text: str, tmp: Path) -> None:
    try:
        if kind == "md":
            read_markdown(ROOT / "a.md", text.encode(), ROOT)
        elif kind == "html":
            read_html(ROOT / "a.html", text.encode(), ROOT)
        elif kind == "html-stream":
            blocks = [text.encode()[i:i + 65536] for i in range(0, len(text), 65536)]
            for _ in _segments(_html_text(_decode(blocks, "utf-8"))):
                pass
        else:
            path = tmp / "data.jsonl"
            path.write_text(text)
            for _ in iter_jsonl(path):
                pass
    except (FileRejected, DatasetError):
        pass


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _growth(times: list[float]) -> float:
    ratios = [b / a for a, b in zip(times, times[1:]) if a > 0]
    return math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="smallest input size (characters) for this code")
    parser.add_argument("--budget", type=float, default=20.0, help="stop a baseline once one run takes longer")
    args = parser.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="mmrag-parsing-"))
    rows = []
    for name, (kind, make) in SHAPES.items():
        sizes = [args.n, 2 * args.n, 4 * args.n]
        times = []
        for n in sizes:
            text = make(n)
            times.append(min(_timed(lambda: _run(kind, text, tmp)) for _ in range(2)))
        rows.append((name, "this code", sizes, times))
        print(json.dumps({"case": name, "seconds": [round(t, 4) for t in times]}), flush=True)
    for name, (smallest, action) in BASELINES.items():
        sizes, times = [], []
        for n in (smallest, 2 * smallest, 4 * smallest):
            sizes.append(n)
            times.append(_timed(lambda: action(n)))
            if times[-1] > args.budget:
                break
        rows.append((name, "replaced", sizes, times))
        print(json.dumps({"case": name, "seconds": [round(t, 4) for t in times]}), flush=True)

    print()
    print("| input | code | sizes (chars) | seconds | growth per doubling |")
    print("| --- | --- | --- | --- | ---: |")
    for name, code, sizes, times in rows:
        sizes_text = " / ".join(f"{s:,}" for s in sizes)
        print(f"| {name} | {code} | {sizes_text} | {' / '.join(f'{t:.3f}' for t in times)} | {_growth(times):.1f} |")
    ours = [_growth(times) for _, code, _, times in rows if code == "this code"]
    worst = max(ours)
    print(f"\ntarget: growth per doubling <= 3 for every input on this code: {'met' if worst <= 3 else 'NOT met'} "
          f"(highest {worst:.1f}; linear is 2, quadratic 4, cubic 8)")


if __name__ == "__main__":
    main()
