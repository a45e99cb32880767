"""Batch captioning: slot mapping, resume after interruption, history and undo, sidecars."""

from __future__ import annotations

import json

import pytest

from lorastudio.captions.backends import BackendOutput, CaptionBackend
from lorastudio.captions.history import undo_last
from lorastudio.captions.run import PROGRESS_FILE, CaptionOptions, build_caption, caption_dataset
from lorastudio.data.manifest import read_dataset_json, read_manifest, sidecar_path


class ColourBackend:
    """A real (if simple) pixel captioner: names the background from the mean colour.

    `fail_after` makes it raise once that many images have been captioned, like a crash
    or Ctrl-C halfway through a run.
    """

    name = "colour-test"

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.seen = 0

    def caption_batch(self, images):
        out = []
        for img in images:
            if self.fail_after is not None and self.seen >= self.fail_after:
                raise RuntimeError("simulated crash")
            self.seen += 1
            r, g, b = img.resize((1, 1)).getpixel((0, 0))
            colour = "black" if max(r, g, b) < 60 else "white" if min(r, g, b) > 200 else "red" if r > 150 else "blue"
            out.append(BackendOutput(text=f"{colour} background, close-up", tags=[("sesame_seeds", 0.9), ("plate", 0.7)]))
        return out

    def provenance(self):
        return {"backend": self.name, "model": "mean-colour", "revision": "1", "params": {"fail_after": None}}


def test_backend_satisfies_protocol():
    assert isinstance(ColourBackend(), CaptionBackend)


def test_build_caption_precedence(vocab):
    rec = {"id": "a", "file": "images/a.png", "source": "/raw/10_떡볶이/IMG_1.jpg"}
    out = BackendOutput(text="ignored text", slots={"subject": "rice cakes", "objective": ["black background"]},
                        tags=[("sesame_seeds", 1.0)])
    cap, missing = build_caption(out, rec, CaptionOptions(trigger="ohwx"), vocab)
    assert (cap.trigger, cap.subject, cap.objective) == ("ohwx", "a photo of rice cakes", ["black background"])
    assert missing == []
    out = BackendOutput(text="a bowl of noodles, glossy", tags=[("black_background", 0.8), ("no_humans", 0.9)])
    cap, _ = build_caption(out, rec, CaptionOptions(trigger="ohwx", subject_from="folder"), vocab)
    assert cap.subject == "a photo of tteokbokki (spicy rice cakes)"
    assert cap.objective == ["black background"] and cap.style == ["glossy"]
    # the sentence the parser could not place and the unknown tag are kept, flagged
    assert cap.unplaced == ["a bowl of noodles", "no humans"]
    cap, missing = build_caption(BackendOutput(text="닭발, close-up"), rec,
                                 CaptionOptions(subject="양념치킨"), vocab)
    assert cap.subject.startswith("a photo of yangnyeom chicken")
    assert missing == ["닭발"]


def test_caption_run_writes_manifest_sidecars_and_dataset_trigger(dataset, vocab):
    summary = caption_dataset(dataset, ColourBackend(), vocab, CaptionOptions(trigger="ohwx", subject="김치찌개",
                              batch_size=4), progress=False)
    assert len(summary.captioned) == 6 and summary.skipped == 0
    records = read_manifest(dataset)
    first = records[0]
    assert first["caption_text"] == ("ohwx, a photo of kimchi jjigae (kimchi stew), close-up, black background, "
                                     "sprinkled with sesame seeds, plate")
    assert first["caption"]["unplaced"] == ["plate"]
    assert first["caption_source"]["backend"] == "colour-test" and first["caption_source"]["model"] == "mean-colour"
    assert sidecar_path(dataset, first).read_text(encoding="utf-8").strip() == first["caption_text"]
    assert read_dataset_json(dataset)["trigger"] == "ohwx"
    assert not (dataset / PROGRESS_FILE).exists()
    # only-missing: a second run touches nothing
    again = caption_dataset(dataset, ColourBackend(), vocab, CaptionOptions(), progress=False)
    assert again.captioned == [] and again.skipped == 6


@pytest.mark.parametrize("overwrite", [False, True])
def test_resume_after_interruption(dataset, vocab, overwrite):
    if overwrite:
        caption_dataset(dataset, ColourBackend(), vocab, CaptionOptions(trigger="old"), progress=False)
    opts = CaptionOptions(trigger="ohwx", batch_size=2, overwrite=overwrite)
    with pytest.raises(RuntimeError, match="simulated crash"):
        caption_dataset(dataset, ColourBackend(fail_after=3), vocab, opts, progress=False)
    records = read_manifest(dataset)
    new = [r["id"] for r in records if (r.get("caption_text") or "").startswith("ohwx")]
    assert new == ["img000", "img001"]  # the finished batch was saved, the broken one was not
    rerun = ColourBackend()
    summary = caption_dataset(dataset, rerun, vocab, CaptionOptions(trigger="ohwx", batch_size=2, overwrite=overwrite),
                              progress=False)
    assert rerun.seen == 4 and summary.resumed == 2
    records = read_manifest(dataset)
    assert all(r["caption_text"].startswith("ohwx, ") for r in records)
    ops = {r["caption_source"]["op"] for r in records}
    assert len(ops) == 1  # one logical run across the interruption, undone as one
    assert not (dataset / PROGRESS_FILE).exists()


def test_overwrite_keeps_history_and_undo_restores(dataset, vocab):
    caption_dataset(dataset, ColourBackend(), vocab, CaptionOptions(trigger="first"), progress=False)
    before = {r["id"]: r["caption_text"] for r in read_manifest(dataset)}
    caption_dataset(dataset, ColourBackend(), vocab, CaptionOptions(trigger="second", overwrite=True), progress=False)
    records = read_manifest(dataset)
    assert all(r["caption_text"].startswith("second, ") for r in records)
    assert records[0]["caption_history"][-1]["caption_text"] == before["img000"]
    op, reverted = undo_last(records)
    assert len(reverted) == 6
    assert {r["id"]: r["caption_text"] for r in records} == before
    assert all("caption_history" not in r for r in records)
    op2, reverted2 = undo_last(records)
    assert op2 != op and len(reverted2) == 6 and all(r["caption_text"] is None for r in records)
    assert undo_last(records) == (None, [])


def test_progress_file_is_json_while_interrupted(dataset, vocab):
    with pytest.raises(RuntimeError):
        caption_dataset(dataset, ColourBackend(fail_after=2), vocab, CaptionOptions(batch_size=1, overwrite=True),
                        progress=False)
    state = json.loads((dataset / PROGRESS_FILE).read_text())
    assert state["done"] == ["img000", "img001"] and state["op"]
