"""The report's Markdown as one self-contained HTML page: every image embedded as a data URI (a mail attachment or
a copied file shows everything; nothing is fetched), every text escaped.

It converts the subset of Markdown that analysis/report.py writes: headings, lists, tables, images on their own
line, paragraphs, **bold**, *italic*, `code` and the backslash escapes of common.md_text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_IMAGE_BYTES = 20 * 2**20  # a larger file is linked by name, not embedded
STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.2em .5em}"
         "img{max-width:100%}figure{margin:1em 0}.grids{display:flex;flex-wrap:wrap;gap:1em}"
         ".grids figure{flex:0 1 14em}")
_ESCAPED = re.compile(r"\\([\\|*\[\]<>`])")


def data_uri(path: Path) -> str | None:
    """The file as a data: URI, or None when it is missing, too large or not an image type listed in MIME."""
    mime = MIME.get(path.suffix.lower())
    if mime is None or not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def inline(text: str) -> str:
    """One line of Markdown as escaped HTML: escapes (\\| ...) kept literal, **bold**, *italic* and `code` marked
    up."""
    kept: list[str] = []

    def keep(m: re.Match) -> str:
        kept.append(m[1])
        return f"\x00{len(kept) - 1}\x00"

    text = html.escape(_ESCAPED.sub(keep, text), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![*\w])\*([^*]+)\*(?![*\w])", r"<em>\1</em>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: html.escape(kept[int(m[1])], quote=False), text)


def _cells(row: str) -> list[str]:
    """A table row split on the '|' that are not escaped."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def to_html(markdown: str, *, title: str, folder: Path) -> str:
    """The page; images are read from `folder` (the report's) and embedded."""
    body: list[str] = []
    rows: list[str] = []
    items: list[str] = []
    grids: list[str] = []

    def flush() -> None:
        if rows:
            head, *rest = [_cells(r) for r in rows if not re.fullmatch(r"\|(-+\|)+", r.strip())]
            body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            rows.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if grids:
            body.append('<div class="grids">' + "".join(grids) + "</div>")
            grids.clear()

    for line in markdown.splitlines():
        image = re.fullmatch(r"!\[(.*)\]\(([^()\s]+)\)", line.strip())
        if line.startswith("|"):
            rows.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        if image and image[2].startswith("samples_"):  # sample grids side by side
            grids.append(_figure(folder, image[2], image[1], caption=True))
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            body.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif image:
            body.append(_figure(folder, image[2], image[1]))
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush()
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _figure(folder: Path, name: str, alt: str, caption: bool = False) -> str:
    """An embedded image (with its alt text as caption for a sample grid: the report writes the captions of figures
    under them); a file that cannot be embedded is named, not linked."""
    alt_text = _ESCAPED.sub(r"\1", alt)
    uri = data_uri(folder / Path(name).name) if not re.match(r"^[a-z][\w+.-]*:", name, re.I) else None
    if uri is None:
        return f"<p><em>(image {html.escape(Path(name).name)} not embedded)</em></p>"
    below = f"<figcaption>{inline(alt)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{html.escape(alt_text)}">{below}</figure>'
