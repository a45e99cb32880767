"""Audit output: a text summary (worst first), `audit.json`, and an HTML section.

The HTML goes into the dataset's `report.html` between `<!-- audit -->` and
`<!-- /audit -->` markers (replaced on every run), or into a standalone `audit.html` when
the dataset has no report yet.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from lorastudio.audit.run import AuditResult
from lorastudio.data.manifest import REPORT, atomic_write_text

AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
START, END = "<!-- audit -->", "<!-- /audit -->"
_SECTION = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
_MARK = {"error": "ERROR", "warning": "WARN ", "info": "info "}


def format_text(result: AuditResult, limit: int = 40) -> str:
    """A human summary: counts, then findings worst first, then the contamination table."""
    c = result.counts()
    lines = [f"audit of {result.dataset_dir}: {result.facts.get('images', 0)} images, "
             f"{c['error']} error(s), {c['warning']} warning(s), {c['info']} note(s)"]
    if result.facts.get("detectors"):
        lines.append(f"detectors: {', '.join(result.facts['detectors'])}; packs: {', '.join(result.facts.get('packs', []))}")
    for f in result.findings[:limit]:
        where = f"[{f.image}] " if f.image else ""
        lines.append(f"{_MARK[f.severity]} {f.rule:28s} {where}{f.message}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    if len(result.findings) > limit:
        lines.append(f"... {len(result.findings) - limit} more finding(s) in {AUDIT_JSON}")
    shown = [r for r in result.contamination if r.verdict != "ok" or r.present_rate > 0]
    if shown:
        lines.append("")
        lines.append(f"{'attribute':24s} {'present':>7s} {'named':>6s}  verdict")
        for r in shown:
            lines.append(f"{r.id:24s} {r.present_rate:7.0%} {r.mention_rate:6.0%}  {r.verdict}"
                         + (f" (unnamed in {len(r.present_unnamed)})" if r.present_unnamed else ""))
    return "\n".join(lines)


def write_audit_json(result: AuditResult) -> Path:
    """Write `audit.json` into the dataset dir (atomically) and return its path."""
    path = result.dataset_dir / AUDIT_JSON
    atomic_write_text(path, result.to_json())
    return path


def render_section(result: AuditResult) -> str:
    """The marked HTML section: summary counts, findings table, contamination table."""
    esc = html.escape
    c = result.counts()
    rows = "".join(
        f"<tr class='{esc(f.severity)}'><td>{esc(f.severity)}</td><td>{esc(f.rule)}</td><td>{esc(f.image or 'dataset')}</td>"
        f"<td>{esc(f.message)}</td><td>{esc(f.fix)}</td></tr>" for f in result.findings)
    attrs = "".join(
        f"<tr><td>{esc(r.id)}</td><td>{esc(r.phrase)}</td><td>{r.present_rate:.0%}</td><td>{r.mention_rate:.0%}</td>"
        f"<td>{esc(r.verdict)}</td><td>{esc(', '.join(r.present_unnamed[:20]))}</td></tr>" for r in result.contamination)
    return (
        f"{START}\n<section id='audit'><h2>Audit</h2>"
        f"<p>{c['error']} error(s), {c['warning']} warning(s), {c['info']} note(s).</p>"
        "<table><tr><th>severity</th><th>rule</th><th>image</th><th>finding</th><th>fix</th></tr>"
        f"{rows}</table><h3>Contamination</h3>"
        "<table><tr><th>attribute</th><th>phrase</th><th>present</th><th>named</th><th>verdict</th>"
        f"<th>present but unnamed</th></tr>{attrs}</table></section>\n{END}"
    )


def standalone_html(result: AuditResult) -> str:
    """A complete HTML page holding only the audit section."""
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
             "tr.error td{background:#fdd}tr.warning td{background:#ffd}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>lorastudio audit</title>"
            f"<style>{style}</style></head><body>\n{render_section(result)}\n</body></html>\n")


def write_html(result: AuditResult) -> Path:
    """Put the section into `report.html` (replacing an earlier one) or write `audit.html`."""
    report = result.dataset_dir / REPORT
    if not report.is_file():
        path = result.dataset_dir / AUDIT_HTML
        atomic_write_text(path, standalone_html(result))
        return path
    text = report.read_text(encoding="utf-8")
    section = render_section(result)
    if _SECTION.search(text):
        text = _SECTION.sub(lambda _m: section, text, count=1)
    elif "</body>" in text:
        head, tail = text.rsplit("</body>", 1)
        text = f"{head}{section}\n</body>{tail}"
    else:
        text = f"{text}\n{section}\n"
    atomic_write_text(report, text)
    return report
