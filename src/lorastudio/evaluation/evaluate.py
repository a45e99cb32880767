"""Score every checkpoint of a run at several LoRA scales and recommend one, with reasons.

The candidates are rendered through the same grid code as `lorastudio sample` (fixed seeds,
scale 0 = base model), then measured with `metrics`. The recommendation maximises

    score = closeness gain over the base model
            - LEAK_WEIGHT * worst confounder leak
            - ADHERENCE_WEIGHT * CLIP-score drop below the base model (CLIP only)

a heuristic with one rule behind it: a LoRA should move outputs toward the training images
without dragging in what the dataset never meant to teach, nor forgetting the prompt.
Ties go to the earlier checkpoint and the lower scale (less over-fitting, more headroom).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lorastudio.evaluation import metrics

EVALUATION_JSON = "evaluation.json"
LEAK_WEIGHT = 0.25
ADHERENCE_WEIGHT = 0.01
# Below this similarity gain the difference from the base model is within seed-to-seed noise.
LEARNED_MIN_GAIN = 0.01
DEFAULT_SCALES = (0.5, 0.75, 1.0)


def _mean(values: Any) -> float | None:
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    return round(float(arr.mean()), 4) if arr.size else None


def score_rows(index: dict, images: dict, embedder: metrics.Embedder, train_emb: Any, confounders: metrics.Confounders) -> tuple[dict, list[dict]]:
    """The base model's figures and one row per (checkpoint, scale)."""
    requests = index["requests"]
    prompts = [r["prompt"] for r in requests]
    base_imgs = [images[("base", 0.0, i)] for i in range(len(requests))]
    base_clip = embedder.clip_scores(base_imgs, prompts)
    base = {
        "closeness": round(metrics.closeness(embedder.images(base_imgs), train_emb), 4),
        "adherence": _mean(base_clip) if base_clip is not None else None,
        "confounder_rates": {k: round(v, 4) for k, v in metrics.base_rates(base_imgs, confounders).items()},
        "toy_following": toy_following(prompts, base_imgs),
    }
    rows = []
    for ck in index["checkpoints"]:
        for scale in (s for s in index["scales"] if s != 0.0):
            imgs = [images[(ck["label"], scale, i)] for i in range(len(requests))]
            clip = embedder.clip_scores(imgs, prompts)
            close = metrics.closeness(embedder.images(imgs), train_emb)
            leaks = metrics.leak(imgs, base["confounder_rates"], confounders)
            rows.append({
                "checkpoint": ck["label"], "step": ck["step"], "file": ck["file"], "scale": scale,
                "closeness": round(close, 4), "closeness_gain": round(close - base["closeness"], 4),
                "adherence": _mean(clip) if clip is not None else None, "leak": leaks,
                "max_leak": round(max([v for v in leaks.values() if math.isfinite(v)] + [0.0]), 4),
                "toy_following": toy_following(prompts, imgs),
            })
    for row in rows:
        drop = (base["adherence"] - row["adherence"]) if row["adherence"] is not None else 0.0
        row["score"] = round(row["closeness_gain"] - LEAK_WEIGHT * row["max_leak"] - ADHERENCE_WEIGHT * max(0.0, drop), 4)
    return base, rows


def recommend(base: dict, rows: list[dict], confounders: metrics.Confounders) -> dict[str, Any]:
    """The best row by score, and a plain-language reason."""
    # Same weights in step_N and final/: prefer final/, the folder users look for.
    best = max(rows, key=lambda r: (r["score"], -(r["step"] or 0), r["checkpoint"] == "final", -r["scale"]))
    learned = best["closeness_gain"] >= LEARNED_MIN_GAIN
    parts = [f"{best['checkpoint']} at scale {best['scale']:g} scores best ({best['score']:+.3f})."]
    parts.append(f"Similarity to the training images {best['closeness']:.3f} vs {base['closeness']:.3f} for the base model "
                 f"({best['closeness_gain']:+.3f}).")
    leaking = {k: v for k, v in best["leak"].items() if math.isfinite(v) and v > 0}
    if leaking:
        parts.append("Leaks: " + ", ".join(f"{k} in {v:+.0%} more outputs than the base" for k, v in leaking.items()) + ".")
    elif confounders.labels():
        parts.append(f"No watched confounder ({', '.join(confounders.labels())}) appears more often than with the base model.")
    if best["adherence"] is not None:
        parts.append(f"CLIP score {best['adherence']:.1f} vs {base['adherence']:.1f} for the base model.")
    if not learned:
        parts.append(f"No checkpoint moves outputs toward the training images by {LEARNED_MIN_GAIN} or more: the LoRA has not "
                     "clearly learned the look yet (train longer or raise the learning rate).")
    return {"checkpoint": best["checkpoint"], "step": best["step"], "file": best["file"], "scale": best["scale"],
            "learned": learned, "reason": " ".join(parts)}


def toy_following(prompts: list[str], imgs: list) -> dict[str, float | None] | None:
    """Toy-world prompt following (background / dish read back from the pixels), or None
    when no prompt names a toy-world background or dish."""
    from lorastudio.toyworld.readers import prompt_following, requested

    if not any(requested(p) for p in prompts):
        return None
    return {k: (round(v, 4) if v is not None else None) for k, v in prompt_following(prompts, imgs).items()}


def toyworld_note(base: dict) -> dict[str, Any]:
    """What the report says about the toy-world readers for this run."""
    following = base.get("toy_following")
    if following is None:
        return {"available": False, "note": "prompts name no toy-world background or dish; attribute readers not used"}
    shown = ", ".join(f"{k} {v:.0%}" for k, v in following.items() if v is not None)
    return {"available": True, "note": f"toy-world readers: base model prompt following {shown}; per row in 'toy_following'"}


def evaluate_run(run_dir: Path, *, clip_model: str | None, prompts: Path | None, scales: list[float], which: str,
                 seeds: list[int] | None, overrides: dict[str, Any], device: str, show: bool) -> dict[str, Any]:
    """Render, measure and recommend; writes `evaluation.json` in the run dir and returns it."""
    from lorastudio.data.manifest import atomic_write_text
    from lorastudio.evaluation.loading import resolve_device
    from lorastudio.evaluation.sample_grid import sample_run

    scales = [0.0, *[s for s in scales if s != 0.0]]
    index, images, run_cfg = sample_run(run_dir, prompts=prompts, scales=scales, which=which, seeds=seeds,
                                        overrides=overrides, out_dir=None, device=device, show=show)
    embedder = metrics.Embedder(clip_model, device=resolve_device(device))
    train_images, roots = metrics.training_images(run_cfg)
    confounders = metrics.find_confounders(train_images, roots)
    train_emb = embedder.images(train_images)
    base, rows = score_rows(index, images, embedder, train_emb, confounders)
    grids_dir = Path(run_dir) / Path(index["grids"][0]["file"]).parent if index["grids"] else None
    result = {
        "run_dir": str(run_dir), "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "embedding": embedder.kind, "clip_model": clip_model, "training_images": len(train_images),
        "prompts": [r["prompt"] for r in index["requests"]], "scales": scales,
        "grids_index": (grids_dir / "index.json").relative_to(run_dir).as_posix() if grids_dir else None,
        "confounders": [{"label": k, "train_rate": round(confounders.train_rate.get(k, float("nan")), 4), "why": v}
                        for k, v in sorted(confounders.reason.items())],
        "base": base, "rows": rows, "recommendation": recommend(base, rows, confounders), "toyworld": toyworld_note(base),
        "weights": {"leak": LEAK_WEIGHT, "adherence": ADHERENCE_WEIGHT},
    }
    atomic_write_text(Path(run_dir) / EVALUATION_JSON, json.dumps(_json_safe(result), indent=1) + "\n")
    return result


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively: evaluation.json must be strict JSON for browsers and jq."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
