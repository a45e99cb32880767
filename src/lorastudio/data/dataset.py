"""Training examples from dataset dirs, and a bucket batch sampler.

Every random choice here (order, flips, caption shuffling and dropout) is drawn from a
generator seeded by `(seed, epoch, slot)`, never from global state, so a resumed run sees
exactly the batches an uninterrupted run would, and N processes see the halves of the
batches a single process would.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorastudio.data.manifest import REJECTED_FLAG, ManifestError, read_manifest

if TYPE_CHECKING:
    import torch

    from lorastudio.config.train import DataSection, DatasetEntry

MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096


class DatasetError(ValueError):
    """A dataset problem the user must fix; the message names the file."""


@dataclass(frozen=True)
class Item:
    """One image of a dataset dir, as training needs it."""

    key: str  # "<dataset name>/<id>", unique across datasets
    image_path: Path
    caption: str
    width: int
    height: int
    repeats: int
    is_reg: bool

    @property
    def bucket(self) -> tuple[int, int]:
        """(width, height); batches never mix buckets."""
        return (self.width, self.height)


def _inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`; refuse anything that escapes it (../, absolute, symlinks)."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{root / 'manifest.jsonl'}: file '{rel}' points outside the dataset dir")
    return path


def load_items(entry: DatasetEntry, *, is_reg: bool = False) -> list[Item]:
    """Read one dataset dir's manifest; every record needs an image and a caption."""
    root = Path(entry.path)
    try:
        records = read_manifest(root)
    except ManifestError as exc:
        raise DatasetError(str(exc)) from None
    if not records:
        raise DatasetError(f"{root / 'manifest.jsonl'} lists no images")
    items, uncaptioned = [], []
    for rec in records:
        if REJECTED_FLAG in rec.get("flags", ()):  # a reviewer took it out (studio Reject); Restore puts it back
            continue
        if not (rec.get("caption_text") or "").strip():
            uncaptioned.append(rec["id"])
            continue
        path = _inside(root, rec["file"])
        if not path.is_file():
            raise DatasetError(f"{root / 'manifest.jsonl'}: image {rec['file']} of record {rec['id']} is missing")
        items.append(
            Item(f"{root.name}/{rec['id']}", path, rec["caption_text"].strip(), int(rec["width"]), int(rec["height"]),
                 entry.repeats * int(rec.get("repeats", 1)), is_reg)
        )
    if not items and not uncaptioned:
        raise DatasetError(f"{root / 'manifest.jsonl'}: every image is flagged '{REJECTED_FLAG}'")
    if uncaptioned:
        shown = ", ".join(uncaptioned[:5]) + (" ..." if len(uncaptioned) > 5 else "")
        raise DatasetError(
            f"{root / 'manifest.jsonl'}: {len(uncaptioned)} image(s) have no caption_text ({shown}); "
            f"run `lorastudio caption {root}` first"
        )
    return items


def load_all_items(data: DataSection) -> list[Item]:
    """Items of every training dataset, then the regularization set if any."""
    if not data.datasets:
        raise DatasetError("data.datasets is empty; give at least one dataset dir (data.datasets=[path/to/ds])")
    items: list[Item] = []
    for entry in data.datasets:
        items.extend(load_items(entry))
    if data.regularization is not None:
        items.extend(load_items(data.regularization, is_reg=True))
    return items


def dataset_fingerprint(items: list[Item]) -> str:
    """sha256 over every item's key, caption, size and repeats: changes when the data does."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.key):
        digest.update(f"{item.key}\0{item.caption}\0{item.width}x{item.height}\0{item.repeats}\0{item.is_reg}\n".encode())
    return digest.hexdigest()


def load_pixels(item: Item) -> torch.Tensor:
    """Decode an item's image to a [3, H, W] tensor in [-1, 1], with byte and pixel limits."""
    import numpy as np
    import torch
    from PIL import Image

    size = item.image_path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise DatasetError(f"{item.image_path}: {size} bytes is over the {MAX_IMAGE_BYTES} byte limit")
    with Image.open(item.image_path) as img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise DatasetError(f"{item.image_path}: {img.width}x{img.height} is over the pixel limit")
        if (img.width, img.height) != item.bucket:
            raise DatasetError(
                f"{item.image_path} is {img.width}x{img.height} but its record says {item.width}x{item.height}; re-run `lorastudio prepare`"
            )
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def slot_rng(seed: int, epoch: int, slot: int, purpose: str) -> random.Random:
    """A generator for one decision about one slot in one epoch (independent of history)."""
    return random.Random(f"{seed}:{epoch}:{slot}:{purpose}")


def vary_caption(caption: str, data: DataSection, rng: random.Random) -> str:
    """Apply caption dropout, tag dropout and shuffling (after `keep_tokens`) to one caption."""
    if data.caption_dropout and rng.random() < data.caption_dropout:
        return ""
    phrases = [p.strip() for p in caption.split(",") if p.strip()]
    kept, rest = phrases[: data.keep_tokens], phrases[data.keep_tokens :]
    if data.tag_dropout:
        rest = [p for p in rest if rng.random() >= data.tag_dropout]
    if data.shuffle:
        rng.shuffle(rest)
    return ", ".join(kept + rest)


@dataclass(frozen=True)
class Example:
    """What one slot of one epoch trains on."""

    item: Item
    caption: str
    flip: bool


class EpochView:
    """Slots (items expanded by repeats) and the per-epoch choices made for each slot."""

    def __init__(self, items: list[Item], data: DataSection, seed: int) -> None:
        self.items = items
        self.data = data
        self.seed = seed
        self.slots: list[int] = [i for i, item in enumerate(items) for _ in range(item.repeats)]

    def __len__(self) -> int:
        return len(self.slots)

    def buckets(self) -> list[tuple[int, int]]:
        """The bucket of every slot, in slot order."""
        return [self.items[i].bucket for i in self.slots]

    def example(self, epoch: int, slot: int) -> Example:
        """The item, caption and flip for `slot` in `epoch`."""
        item = self.items[self.slots[slot]]
        caption = item.caption
        if self.data.varies_captions:
            caption = vary_caption(caption, self.data, slot_rng(self.seed, epoch, slot, "caption"))
        flip = self.data.flip and slot_rng(self.seed, epoch, slot, "flip").random() < 0.5
        return Example(item, caption, flip)


class BucketBatchSampler:
    """Global batches of `batch_size * world_size` slots, each from one bucket.

    Within an epoch: each bucket's slots are shuffled, cut into global batches (the last one
    filled up by cycling through the bucket, so every process always gets a full batch), and
    the batches are shuffled. Process `rank` takes its contiguous share of each batch.
    """

    def __init__(self, buckets: list[tuple[int, int]], *, batch_size: int, seed: int, world_size: int = 1, rank: int = 0) -> None:
        if not buckets:
            raise DatasetError("no training examples")
        self.buckets = buckets
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of `epoch` in training order."""
        by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
        for slot, bucket in enumerate(self.buckets):
            by_bucket[bucket].append(slot)
        size = self.batch_size * self.world_size
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            slots = by_bucket[bucket]
            random.Random(f"{self.seed}:{epoch}:order:{bucket}").shuffle(slots)
            for start in range(0, len(slots), size):
                batch = slots[start : start + size]
                batch += [slots[i % len(slots)] for i in range(size - len(batch))]
                batches.append(batch)
        random.Random(f"{self.seed}:{epoch}:batches").shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self.global_batches(0))

    def local_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This process's share of each batch as `(global position in batch, slot)` pairs."""
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [list(enumerate(batch))[lo:hi] for batch in self.global_batches(epoch)]


def collate_pixels(examples: list[Example]) -> torch.Tensor:
    """Stack the examples' images (flipped where chosen) into [B, 3, H, W]."""
    import torch

    tensors = []
    for ex in examples:
        pixels = load_pixels(ex.item)
        tensors.append(torch.flip(pixels, dims=[2]) if ex.flip else pixels)
    return torch.stack(tensors)


def describe(items: list[Item]) -> dict[str, Any]:
    """Counts for the log: images, training slots, buckets."""
    buckets: dict[str, int] = defaultdict(int)
    for item in items:
        buckets[f"{item.width}x{item.height}"] += item.repeats
    return {
        "images": sum(not i.is_reg for i in items),
        "reg_images": sum(i.is_reg for i in items),
        "slots_per_epoch": sum(i.repeats for i in items),
        "buckets": dict(sorted(buckets.items())),
    }
