"""`report.html` for a dataset dir: one self-contained page that works offline.

Thumbnails are the processed images themselves, referenced by relative path (the page sits
next to `images/`), so the report stays small for big datasets and needs no network.
Everything taken from file names or captions is HTML-escaped.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from lorastudio.data.manifest import REPORT, atomic_write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.bar{background:#4a7bd0;height:.9em;display:inline-block;vertical-align:middle}
.grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:168px;background:#fff;border:1px solid #ddd;padding:4px;font-size:.75em;overflow-wrap:anywhere}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;display:block}
.flag{display:inline-block;background:#f4d03f;border-radius:3px;padding:0 .3em;margin:1px}
.muted{color:#777}
"""


def _bucket_table(records: list[dict[str, Any]]) -> str:
    counts = Counter(f"{r['width']}x{r['height']}" for r in records)
    if not counts:
        return "<p class=muted>no accepted images</p>"
    peak = max(counts.values())
    rows = []
    for bucket, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        width = max(2, int(300 * n / peak))
        rows.append(f"<tr><td>{escape(bucket)}</td><td>{n}</td><td><span class=bar style='width:{width}px'></span></td></tr>")
    return "<table><tr><th>bucket (w x h)</th><th>images</th><th></th></tr>" + "".join(rows) + "</table>"


def _flag_table(records: list[dict[str, Any]]) -> str:
    counts = Counter(f.split(":")[0] for r in records for f in r.get("flags", []))
    if not counts:
        return "<p class=muted>no flags</p>"
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in counts.most_common())
    return "<table><tr><th>flag</th><th>images</th></tr>" + rows + "</table>"


def _card(record: dict[str, Any]) -> str:
    flags = "".join(f"<span class=flag>{escape(f)}</span>" for f in record.get("flags", []))
    caption = record.get("caption_text")
    caption_html = escape(caption) if caption else "<span class=muted>(no caption)</span>"
    crop = record.get("crop_loss")
    crop_text = f", crop {crop:.0%}" if isinstance(crop, (int, float)) else ""
    return (
        f"<div class=card><img loading=lazy src='{escape(record['file'], quote=True)}' alt=''>"
        f"<b>{escape(record['id'])}</b> {record['width']}x{record['height']}"
        f" <span class=muted>from {record['orig_width']}x{record['orig_height']}{crop_text}, x{record.get('repeats', 1)}"
        f" {escape(record.get('role', 'train'))}</span><br>{escape(str(record.get('source', '')))}<br>{flags}<br>{caption_html}</div>"
    )


def _rejected_table(rejected: list[dict[str, Any]]) -> str:
    if not rejected:
        return "<p class=muted>nothing rejected</p>"
    rows = []
    for row in rejected:
        dup = f" (duplicate of {escape(row['duplicate_of'])})" if row.get("duplicate_of") else ""
        rows.append(
            f"<tr><td>{escape(str(row.get('source', '')))}</td><td>{escape(row.get('reason', ''))}</td>"
            f"<td>{escape(str(row.get('detail', '')))}{dup}</td></tr>"
        )
    return "<table><tr><th>source</th><th>reason</th><th>detail</th></tr>" + "".join(rows) + "</table>"


def render_report(records: list[dict[str, Any]], rejected: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    """The report page as a string."""
    captioned = sum(1 for r in records if r.get("caption_text"))
    coverage = f"{captioned}/{len(records)}" if records else "0/0"
    cards = "".join(_card(r) for r in records)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lorastudio dataset report</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Dataset report</h1><p>{len(records)} accepted, {len(rejected)} rejected; resolution "
        f"{escape(str(facts.get('resolution', '?')))}; captions {coverage}; updated {escape(str(facts.get('updated', '')))}</p>"
        f"<h2>Buckets</h2>{_bucket_table(records)}"
        f"<h2>Flags</h2>{_flag_table(records)}"
        f"<h2>Rejected</h2>{_rejected_table(rejected)}"
        f"<h2>Images</h2><div class=grid>{cards}</div>"
        "</body></html>\n"
    )


def write_report(out_dir: Path | str, records: list[dict[str, Any]], rejected: list[dict[str, Any]], facts: dict[str, Any]) -> Path:
    """Write `report.html` into the dataset dir and return its path."""
    path = Path(out_dir) / REPORT
    atomic_write_text(path, render_report(records, rejected, facts))
    return path
