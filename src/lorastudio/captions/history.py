"""Caption versions in the manifest: every change keeps the previous version, so it can be undone.

A record's `caption_history` is a list of earlier {caption, caption_text, caption_source}
entries, oldest first. Each change (a captioning run or a bulk edit) carries an `op` id in
its `caption_source`; `undo_last` reverts every record the most recent op touched.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from lorastudio.captions.slots import Caption, compose, parse

if TYPE_CHECKING:
    from lorastudio.captions.vocab import Vocabulary


def new_source(backend: str, *, model: str | None = None, revision: str | None = None,
               params: dict | None = None, op: str | None = None) -> dict[str, Any]:
    """A `caption_source` dict; `op` groups all records changed by one command."""
    return {
        "backend": backend,
        "model": model,
        "revision": revision,
        "params": dict(params or {}),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "op": op or new_op_id(),
    }


def new_op_id() -> str:
    """A sortable id for one command's change: time first, then a random suffix."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def set_caption(record: dict[str, Any], caption: Caption, source: dict[str, Any]) -> bool:
    """Store a new caption version on `record`, pushing the old one onto its history.

    Returns False (and changes nothing) when the composed text and slots are unchanged.
    """
    text = compose(caption)
    new = caption.to_dict()
    if record.get("caption") == new and record.get("caption_text") == text:
        return False
    if record.get("caption") is not None or record.get("caption_text"):
        history = list(record.get("caption_history") or [])
        history.append({
            "caption": record.get("caption"),
            "caption_text": record.get("caption_text"),
            "caption_source": record.get("caption_source"),
        })
        record["caption_history"] = history
    record["caption"] = new
    record["caption_text"] = text
    record["caption_source"] = source
    return True


def last_op(records: list[dict[str, Any]]) -> str | None:
    """The id of the most recent change in the dataset, or None."""
    ops = [(r.get("caption_source") or {}).get("op") for r in records]
    ops = [op for op in ops if op]
    return max(ops) if ops else None


def undo_last(records: list[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """Revert every record changed by the most recent op; returns (op, ids reverted).

    A record with no history goes back to uncaptioned (its first caption came from that op).
    """
    op = last_op(records)
    if op is None:
        return None, []
    reverted = []
    for record in records:
        if (record.get("caption_source") or {}).get("op") != op:
            continue
        history = list(record.get("caption_history") or [])
        previous = history.pop() if history else {"caption": None, "caption_text": None, "caption_source": None}
        record["caption"] = previous.get("caption")
        record["caption_text"] = previous.get("caption_text")
        record["caption_source"] = previous.get("caption_source")
        if history:
            record["caption_history"] = history
        else:
            record.pop("caption_history", None)
        reverted.append(record["id"])
    return op, reverted


def caption_of(record: dict[str, Any], vocab: "Vocabulary | None" = None) -> Caption:
    """The record's Caption: its slots, else its parsed `caption_text`, else empty."""
    if record.get("caption"):
        return Caption.from_dict(record["caption"])
    if record.get("caption_text"):
        return parse(record["caption_text"], vocab)
    return Caption()
