"""Regenerate the images of the demo folder ``mmrag_agent/data/demo_docs/`` (the notes beside them are written by hand).

Photos come from scikit-image's bundled sample data (public domain / CC0, see examples/README.md);
charts are drawn with matplotlib. Needs ``pip install scikit-image`` (not a dependency of mmrag-agent).

    python examples/make_example_docs.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "mmrag_agent" / "data" / "demo_docs"


def save_photo(name: str, array, path: Path, size: int = 384, exif_description: str | None = None) -> None:
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((size, size))
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": 82}
    if exif_description:
        exif = Image.Exif()
        exif[0x010E] = exif_description
        kwargs["exif"] = exif
    image.save(path, **kwargs)
    print(f"{name:>10} -> {path.relative_to(DOCS)} ({path.stat().st_size // 1024} KiB)")


def revenue_chart(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    quarters, revenue = ["Q1", "Q2", "Q3", "Q4"], [1.2, 1.5, 1.4, 2.1]
    ax.bar(quarters, revenue, color=["#7aa6c2", "#7aa6c2", "#c27a7a", "#4f8f5f"])
    for x, y in zip(quarters, revenue):
        ax.text(x, y + 0.04, f"${y:.1f}M", ha="center")
    ax.set_title("Revenue by quarter, 2025")
    ax.set_ylabel("Revenue (million USD)")
    ax.set_ylim(0, 2.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def extraction_chart(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    grind = [200, 400, 600, 800, 1000, 1200]
    ax.plot(grind, [24.1, 22.3, 20.6, 19.2, 17.8, 16.5], marker="o", label="4 min steep")
    ax.plot(grind, [21.0, 19.4, 17.9, 16.6, 15.2, 14.1], marker="s", label="2 min steep")
    ax.axhspan(18, 22, color="#e8e3c8", label="ideal extraction")
    ax.set_xlabel("Grind size (microns)")
    ax.set_ylabel("Extraction yield (%)")
    ax.set_title("Coffee extraction vs grind size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def minutes_pdf(path: Path) -> None:
    """A two-page PDF with a real text layer (TrueType fonts keep the text extractable)."""
    from matplotlib.backends.backend_pdf import PdfPages

    matplotlib.rcParams["pdf.fonttype"] = 42
    pages = [
        ["Board meeting minutes, 14 January 2026", "",
         "1. The board approved the 2026 budget of 9.5 million USD.",
         "2. Q4 2025 revenue was 2.1 million USD, the best quarter of the year.",
         "3. The Lisbon office opens in March 2026 with twelve engineers."],
        ["Action items", "",
         "- Finance: publish the annual report by 28 February.",
         "- Engineering: ship the multimodal search beta in Q2.",
         "- Next meeting: 15 April 2026."],
    ]
    with PdfPages(path) as pdf:
        for lines in pages:
            fig = plt.figure(figsize=(8.27, 11.69))
            for i, line in enumerate(lines):
                fig.text(0.1, 0.9 - 0.03 * i, line, fontsize=12)
            pdf.savefig(fig)
            plt.close(fig)


def main() -> None:
    from skimage import data

    save_photo("astronaut", data.astronaut(), DOCS / "space" / "astronaut.jpg")
    save_photo("rocket", data.rocket(), DOCS / "space" / "launch-pad.jpg")
    save_photo("hubble", data.hubble_deep_field(), DOCS / "space" / "deep-field.jpg",
               exif_description="Hubble Deep Field: thousands of distant galaxies in a tiny patch of sky")
    save_photo("coffee", data.coffee(), DOCS / "coffee" / "cup.jpg")
    save_photo("chelsea", data.chelsea(), DOCS / "pets" / "IMG_0412.jpg")
    save_photo("page", data.page(), DOCS / "scans" / "scanned-page.png", size=512)
    (DOCS / "company" / "charts").mkdir(parents=True, exist_ok=True)
    revenue_chart(DOCS / "company" / "charts" / "revenue-by-quarter.png")
    extraction_chart(DOCS / "coffee" / "extraction-vs-grind.png")
    minutes_pdf(DOCS / "company" / "board-minutes.pdf")


if __name__ == "__main__":
    main()
