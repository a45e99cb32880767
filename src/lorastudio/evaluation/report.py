"""A self-contained HTML report per run: did it work, and which file do I use.

Works offline and from a copied run folder: no scripts, no web fonts, no CDN. Charts are
inline SVG drawn here; images are linked by paths relative to the run dir, and only files
inside it are shown. Everything shown is read from the run's own files:
config.resolved.yaml, metrics.jsonl, samples/, grids*/index.json, evaluation.json and the
datasets' audit.json.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

REPORT = "report.html"
esc = html.escape

CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.best{background:#e8f6e8;font-weight:600}
.verdict{padding:12px 16px;border-radius:6px;margin:12px 0}.ok{background:#e8f6e8;border:1px solid #8c8}
.warn{background:#fff4e0;border:1px solid #db8}.none{background:#f0f0f0;border:1px solid #bbb}
figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:.8em;max-width:420px}
img.grid{max-width:100%;image-rendering:pixelated;min-width:320px}img.sample{width:128px;image-rendering:pixelated}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:.8em;max-height:480px}code{background:#f2f2f2;padding:0 3px}
"""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl (bad lines skipped: a crashed run may end mid-line)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def img_src(run_dir: Path, file: str | Path) -> str | None:
    """A relative URL for an existing file inside the run dir; None for anything else.

    Index files are data, not instructions: a path leading outside the run dir is not followed.
    """
    root = run_dir.resolve()
    path = (root / file).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return quote(path.relative_to(root).as_posix())


def line_chart(points: list[tuple[float, float]], title: str, *, width: int = 520, height: int = 200) -> str:
    """An inline SVG line chart with min/max labels on both axes."""
    pts = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    if not pts:
        return f"<p>{esc(title)}: no data.</p>"
    left, right, top, bottom = 62, 12, 22, 28
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + abs(min(ys)) * 0.1 + 1e-12
    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2' fill='#2a6fdb'/>" for x, y in pts) if len(pts) <= 60 else ""
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' aria-label='{esc(title)}'>"
        f"<rect width='100%' height='100%' fill='white'/>"
        f"<text x='{left}' y='14' font-size='12' font-weight='bold'>{esc(title)}</text>"
        f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#999'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#999'/>"
        f"<text x='{left - 4}' y='{top + 4}' font-size='10' text-anchor='end'>{y1:.3g}</text>"
        f"<text x='{left - 4}' y='{height - bottom}' font-size='10' text-anchor='end'>{y0:.3g}</text>"
        f"<text x='{left}' y='{height - 10}' font-size='10'>step {x0:g}</text>"
        f"<text x='{width - right}' y='{height - 10}' font-size='10' text-anchor='end'>step {x1:g}</text>"
        f"<polyline fill='none' stroke='#2a6fdb' stroke-width='1.5' points='{line}'/>{dots}</svg>"
    )


def verdict_section(run_dir: Path, evaluation: dict | None) -> str:
    """The answer first: did it work, which file at which scale, and why."""
    if not evaluation:
        final = run_dir / "final" / "lora.safetensors"
        hint = f" The final adapter is <code>{esc(str(final))}</code>." if final.is_file() else ""
        return (f"<div class='verdict none'>Not evaluated yet: run <code>lorastudio evaluate {esc(str(run_dir))}</code> "
                f"for a recommendation.{hint}</div>")
    rec = evaluation["recommendation"]
    folder = (run_dir / rec["file"]).parent
    if folder.name == "diffusers":
        folder = folder.parent
    kind = "ok" if rec["learned"] else "warn"
    head = "It learned something." if rec["learned"] else "It did not clearly learn the look."
    return (
        f"<div class='verdict {kind}'><b>{head}</b> Use <code>{esc(str(folder / 'lora.safetensors'))}</code> "
        f"(A1111 / ComfyUI) or <code>{esc(str(folder / 'diffusers'))}</code> (diffusers) at scale "
        f"<b>{rec['scale']:g}</b>.<br>{esc(rec['reason'])}</div>"
    )


def metrics_table(evaluation: dict) -> str:
    """Per checkpoint and scale: closeness, gain, leak, CLIP score, score; best row highlighted."""
    rec = evaluation["recommendation"]
    base = evaluation["base"]
    labels = [c["label"] for c in evaluation["confounders"]]
    head = "".join(f"<th>leak: {esc(lb)}</th>" for lb in labels)
    clip = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731 - a one-line formatter
    pct = lambda v: "-" if v is None else f"{v:+.0%}"  # noqa: E731
    rows = [f"<tr><td class='l'>base model</td><td>0</td><td>{base['closeness']:.3f}</td><td>-</td>"
            + "".join("<td>-</td>" for _ in labels) + f"<td>{clip(base['adherence'])}</td><td>-</td></tr>"]
    for r in evaluation["rows"]:
        best = r["checkpoint"] == rec["checkpoint"] and r["scale"] == rec["scale"]
        rows.append(
            f"<tr{' class=best' if best else ''}><td class='l'>{esc(r['checkpoint'])}</td><td>{r['scale']:g}</td>"
            f"<td>{r['closeness']:.3f}</td><td>{r['closeness_gain']:+.3f}</td>"
            + "".join(f"<td>{pct(r['leak'].get(lb))}</td>" for lb in labels)
            + f"<td>{clip(r['adherence'])}</td><td>{r['score']:+.3f}</td></tr>"
        )
    conf = "".join(f"<li><b>{esc(c['label'])}</b>: {esc(c['why'])}</li>" for c in evaluation["confounders"]) or "<li>none found</li>"
    return (
        f"<p>Similarity: <b>{esc(evaluation['embedding'])}</b> embeddings vs {evaluation['training_images']} training images "
        f"(nearest-neighbour cosine). Prompts: {', '.join(esc(p) for p in evaluation['prompts'])}.</p>"
        f"<table><tr><th class='l'>checkpoint</th><th>scale</th><th>closeness</th><th>gain</th>{head}<th>CLIP score</th>"
        f"<th>score</th></tr>{''.join(rows)}</table><p>Watched confounders:</p><ul>{conf}</ul>"
        f"<p>Toy-world readers: {esc(evaluation.get('toyworld', {}).get('note', '-'))}</p>"
    )


def grids_section(run_dir: Path, evaluation: dict | None) -> str:
    """The sample grids (rows = checkpoints, columns = scales) of the evaluation or the newest `sample`."""
    index_path = run_dir / evaluation["grids_index"] if evaluation and evaluation.get("grids_index") else None
    if index_path is None or not index_path.is_file():
        found = sorted(run_dir.glob("grids*/index.json"), key=lambda p: p.stat().st_mtime)
        index_path = found[-1] if found else None
    index = _read_json(index_path) if index_path else None
    if not index:
        return "<p>No grids yet: run <code>lorastudio sample</code> or <code>lorastudio evaluate</code>.</p>"
    figs = "".join(
        f"<figure><img class='grid' src='{esc(src)}' alt='grid {esc(g['prompt'])}'>"
        f"<figcaption>{esc(g['prompt'])} (seed {g['seed']}); rows: {esc(', '.join(g['rows']))}; "
        f"columns: scales {esc(', '.join(f'{s:g}' for s in g['columns']))}</figcaption></figure>"
        for g in index["grids"] if (src := img_src(run_dir, g["file"]))
    )
    return figs or "<p>The grid images listed in the index are missing.</p>"


def samples_section(run_dir: Path) -> str:
    """Images rendered during training, one row per step."""
    root = run_dir / "samples"
    steps = sorted((p for p in root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1) if root.is_dir() else []
    if not steps:
        return "<p>No training samples (set sample.prompts and sample.every_n_steps in the config).</p>"
    rows = []
    for step in steps:
        srcs = [(p.name, img_src(run_dir, p.relative_to(run_dir))) for p in sorted(step.glob("*.png"))]
        imgs = "".join(f"<img class='sample' src='{esc(src)}' alt='{esc(name)}'>" for name, src in srcs if src)
        rows.append(f"<div><b>{esc(step.name)}</b><br>{imgs}</div>")
    return "".join(rows)


def audit_section(run_cfg: dict) -> str:
    """Each training dataset's audit summary (audit.json), or a hint to run the audit."""
    parts = []
    for entry in (run_cfg.get("data") or {}).get("datasets") or []:
        root = Path(entry["path"] if isinstance(entry, dict) else entry)
        audit = _read_json(root / "audit.json")
        if not audit:
            parts.append(f"<p><code>{esc(str(root))}</code>: no audit.json (run <code>lorastudio audit {esc(str(root))}</code>).</p>")
            continue
        counts = audit.get("counts", {})
        flagged = [r for r in audit.get("contamination", []) if r.get("verdict") != "ok"]
        items = "".join(f"<li>{esc(str(r.get('phrase')))}: {esc(str(r.get('verdict')))} (present {float(r.get('present_rate', 0)):.0%}, "
                        f"named {float(r.get('mention_rate', 0)):.0%})</li>" for r in flagged)
        parts.append(f"<p><code>{esc(str(root))}</code>: {counts.get('error', 0)} errors, {counts.get('warning', 0)} warnings, "
                     f"{counts.get('info', 0)} notes.</p><ul>{items or '<li>no contamination flagged</li>'}</ul>")
    return "".join(parts) or "<p>No datasets listed in the config.</p>"


def render_report(run_dir: Path) -> str:
    """The whole report as an HTML string."""
    run_dir = Path(run_dir)
    config_text = (run_dir / "config.resolved.yaml").read_text(encoding="utf-8") if (run_dir / "config.resolved.yaml").is_file() else ""
    run_cfg = yaml.safe_load(config_text) or {} if config_text else {}
    evaluation = _read_json(run_dir / "evaluation.json")
    rows = read_metrics(run_dir)
    charts = "".join(line_chart([(r["step"], r.get(key)) for r in rows if "step" in r], title)
                     for key, title in (("loss", "training loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm")))
    body = [
        f"<h1>LoRA run: {esc(run_dir.name)}</h1>",
        f"<p>Base model <code>{esc(str((run_cfg.get('model') or {}).get('path', '?')))}</code>, "
        f"family {esc(str((run_cfg.get('model') or {}).get('family', '?')))}, {len(rows)} logged steps.</p>",
        verdict_section(run_dir, evaluation),
        "<h2>Training curves</h2>", charts,
        "<h2>Scores per checkpoint and scale</h2>", metrics_table(evaluation) if evaluation else "<p>Not evaluated.</p>",
        "<h2>Sample grids</h2>", grids_section(run_dir, evaluation),
        "<h2>Samples during training</h2>", samples_section(run_dir),
        "<h2>Dataset audit</h2>", audit_section(run_cfg),
        "<h2>Resolved config</h2>", f"<pre>{esc(config_text) or 'missing'}</pre>",
    ]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(run_dir.name)} - lorastudio report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html (replaced atomically) and return its path."""
    from lorastudio.data.manifest import atomic_write_text

    path = Path(run_dir) / REPORT
    atomic_write_text(path, render_report(Path(run_dir)))
    return path
