"""The demo's one-page HTML report: photos, audit findings, training, base vs LoRA samples.

Self-contained (images inlined as data URIs) so it opens anywhere, straight from disk.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from lorastudio.data.manifest import atomic_write_text

if TYPE_CHECKING:
    from lorastudio.toyworld.demo import DemoOptions, DemoResult

THUMB = 128
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:4px 8px;font-size:14px;vertical-align:top}
th{background:#f4f4f4} .ok{color:#17702f} .skip{color:#946200} .err{color:#b00020} .warning{color:#946200}
img.px{image-rendering:pixelated;width:128px;height:128px} .grid{display:flex;flex-wrap:wrap;gap:8px}
.card{width:160px;font-size:12px} .card img{width:160px} .note{background:#f7f7f2;padding:.6em 1em;border-left:4px solid #c9a227}"""


def _data_uri(path: Path, side: int = THUMB) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side * 2, side * 2))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _esc(text: object) -> str:
    return html.escape(str(text))


def _stages(result: DemoResult) -> str:
    rows = []
    for name, status in result.stages.items():
        cls = "ok" if status == "ok" else "skip" if status.startswith("skipped") else "err"
        secs = result.seconds.get(name)
        rows.append(f"<tr><td>{_esc(name)}</td><td class='{cls}'>{_esc(status)}</td>"
                    f"<td>{'' if secs is None else f'{secs:.1f} s'}</td></tr>")
    return "<table><tr><th>stage</th><th>status</th><th>time</th></tr>" + "".join(rows) + "</table>"


def _photos(out: Path) -> str:
    """Processed images with their captions as they are now (after the fix)."""
    manifest = out / "dataset" / "manifest.jsonl"
    if not manifest.exists():
        return "<p>No dataset (prepare was skipped).</p>"
    cards = []
    for line in manifest.read_text(encoding="utf-8").splitlines()[:8]:
        rec = json.loads(line)
        history = rec.get("caption_history") or []
        before = history[-1].get("caption_text") if history else None
        text = f"<b>now:</b> {_esc(rec.get('caption_text') or '')}"
        if before and before != rec.get("caption_text"):
            text = f"<b>before:</b> {_esc(before)}<br>" + text
        cards.append(f"<div class='card'><img class='px' src='{_data_uri(out / 'dataset' / rec['file'])}'><br>{text}</div>")
    return "<div class='grid'>" + "".join(cards) + "</div>"


def _audit(audit: dict | None, title: str) -> str:
    if audit is None:
        return f"<p>{_esc(title)}: audit skipped.</p>"
    contaminants = [r for r in audit.get("contamination", []) if r.get("verdict") not in (None, "ok", "named")]
    rows = "".join(f"<tr><td>{_esc(r['phrase'])}</td><td>{r['present_rate']:.0%}</td><td>{r['mention_rate']:.0%}</td>"
                   f"<td>{_esc(r['verdict'])}</td></tr>" for r in contaminants)
    findings = [f for f in audit.get("findings", []) if f.get("image") is None][:12]
    frows = "".join(f"<tr><td class='{_esc(f['severity'])}'>{_esc(f['severity'])}</td><td>{_esc(f['rule'])}</td>"
                    f"<td>{_esc(f['message'])}</td><td>{_esc(f.get('fix', ''))}</td></tr>" for f in findings)
    return (f"<h3>{_esc(title)}</h3><p>counts: {_esc(audit.get('counts', {}))}</p>"
            "<table><tr><th>attribute</th><th>present in</th><th>named in</th><th>verdict</th></tr>"
            f"{rows or '<tr><td colspan=4>no contaminant</td></tr>'}</table>"
            "<table><tr><th>severity</th><th>rule</th><th>dataset-level finding</th><th>fix</th></tr>"
            f"{frows or '<tr><td colspan=4>none</td></tr>'}</table>")


def _training(out: Path) -> str:
    metrics = out / "run" / "metrics.jsonl"
    if not metrics.exists():
        return "<p>No training run.</p>"
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and "step" in r]
    if not losses:
        return "<p>The run wrote no loss rows.</p>"
    first, last = losses[0], losses[-1]
    return (f"<p>{len(losses)} logged points; loss {first[1]:.4f} at step {first[0]} &rarr; {last[1]:.4f} at step "
            f"{last[0]}. Adapter: <code>run/final/lora.safetensors</code> (A1111/ComfyUI) and "
            "<code>run/final/diffusers/</code>.</p>"
            + ("<p>Full run report (curves, config): <a href='run/report.html'>run/report.html</a></p>"
               if (out / "run" / "report.html").exists() else ""))


def sample_rates(samples: list[dict], model: str) -> dict[str, float]:
    """Style (gloss), leak (black background or sesame seeds) and prompt following rates."""
    from lorastudio.toyworld.demo import HELD_OUT_BACKGROUNDS

    wanted = {"blue background": "blue backdrop", "on a wooden table": "wooden table", "white background": "white"}
    reads = [(s, s[f"{model}_read"]) for s in samples if f"{model}_read" in s]
    if not reads:
        return {}
    n = len(reads)

    def asked(prompt: str) -> str | None:
        return next((wanted[bg] for bg in HELD_OUT_BACKGROUNDS if prompt.endswith(bg)), None)

    return {
        "style (gloss)": sum(r["gloss"] for _, r in reads) / n,
        "leak (black bg or sesame)": sum(r["background"] == "black" or r["garnish"] == "sesame seeds" for _, r in reads) / n,
        "asked background": sum(r["background"] == asked(s["prompt"]) for s, r in reads) / n,
    }


def _samples(result: DemoResult) -> str:
    if not result.samples:
        return "<p>No samples (generation was skipped).</p>"
    models = [m for m in ("base", "lora") if m in result.samples[0]]
    head = "".join(f"<th>{m}</th>" for m in models)
    rows = []
    for s in result.samples:
        cells = "".join(f"<td><img class='px' src='{_data_uri(result.out / s[m])}'><br>"
                        f"{_esc(', '.join(f'{k}={v}' for k, v in s[m + '_read'].items() if k in ('background', 'garnish', 'gloss')))}</td>"
                        for m in models)
        rows.append(f"<tr><td>{_esc(s['prompt'])}<br>seed {s['seed']}</td>{cells}</tr>")
    rates = {m: sample_rates(result.samples, m) for m in models}
    keys = list(next(iter(rates.values())).keys())
    rate_rows = "".join(f"<tr><td>{_esc(k)}</td>" + "".join(f"<td>{rates[m][k]:.0%}</td>" for m in models) + "</tr>"
                        for k in keys)
    return (f"<table><tr><th>measured by the toy-world readers ({len(result.samples)} images each)</th>{head}</tr>"
            f"{rate_rows}</table><table><tr><th>prompt</th>{head}</tr>{''.join(rows)}</table>")


def write_report(result: DemoResult, opts: DemoOptions) -> Path:
    """Write `out/report.html` and return its path."""
    body = f"""<h1>lorastudio demo</h1>
<p class='note'>Twenty "phone photos" of one style (glossy Korean dishes). Every photo also shows a <b>black
background</b> and <b>sesame seeds</b>, and the captions never say so: a LoRA trained on them would learn
both as part of the trigger <code>ohwx_kfood_style</code> (style contamination). The audit finds what the
captions leave out, <code>--fix</code> names it, and the samples compare the base model with the LoRA on
prompts that ask for other backgrounds.</p>
<h2>1. Stages</h2>{_stages(result)}
<h2>2. The training images and their captions</h2>{_photos(result.out)}
<h2>3. Audit</h2>{_audit(result.audit_before, "Before --fix")}{_audit(result.audit_after, "After audit --fix --yes")}
<h2>4. Training</h2><p>{opts.steps} steps, batch {opts.batch_size}, LoRA rank {opts.rank}, lr {opts.lr}.</p>{_training(result.out)}
<h2>5. Base model vs LoRA (same prompts, same seeds)</h2>{_samples(result)}
<h2>Where things are</h2><ul><li><code>photos/</code> the inputs (never modified)</li>
<li><code>dataset/</code> manifest.jsonl, images/, report.html, audit.json</li>
<li><code>run/</code> config.resolved.yaml, metrics.jsonl, final/ (the LoRA)</li><li><code>samples/</code> PNGs with their generation settings in the metadata</li></ul>"""
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>lorastudio demo</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    path = result.out / "report.html"
    atomic_write_text(path, page)
    return path
