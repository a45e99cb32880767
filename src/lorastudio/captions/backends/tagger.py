"""tagger: WD14-style ONNX taggers (SmilingWolf wd-*-tagger-v3 and compatible) via onnxruntime.

A model is a folder (or hub repo) holding `model.onnx` and `selected_tags.csv`
(`tag_id,name,category,count`; category 0 general, 4 character, 9 rating). Images are
prepared the way these models were trained: alpha flattened on white, padded to a white
square, resized to the model's input size (read from the graph, never assumed), channels in
BGR order, values 0-255 as float32, NHWC. Tags above their category's threshold are mapped
to caption slots through the vocabulary's tagger aliases; general and character tags with no
attribute are kept, as words, in `BackendOutput.text` and in the slots' "unplaced" list (so
`captions.run`, which prefers slots, keeps them flagged); rating tags only appear in `tags`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from lorastudio.captions.backends import BackendError, BackendOutput
from lorastudio.captions.backends.hf_caption import parse_options
from lorastudio.config.loader import Schema

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from lorastudio.captions.vocab import Vocabulary

NAME = "tagger"
DEFAULT_MODEL = "SmilingWolf/wd-eva02-large-tagger-v3"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
CATEGORY_GENERAL, CATEGORY_CHARACTER, CATEGORY_RATING = 0, 4, 9
SLOT_KEYS = {3: "shot", 4: "objective", 5: "style"}
INSTALL_HINT = "the tagger backend needs onnxruntime: pip install 'lorastudio[tagger]'"
# WD tag names that are emoticons: their underscores are part of the face, not word breaks.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
})


class TaggerOptions(Schema):
    """Thresholds and tag handling of the tagger backend."""

    general_threshold: float = Field(default=0.35, ge=0.0, le=1.0, description="min score of a general tag")
    character_threshold: float = Field(default=0.85, ge=0.0, le=1.0, description="min score of a character tag")
    rating_threshold: float = Field(default=0.5, ge=0.0, le=1.0,
                                    description="min score of a rating tag (listed in tags, never captioned)")
    exclude_tags: list[str] = Field(default_factory=list, description="tag names never reported, e.g. ['no_humans']")
    keep_underscores: bool = Field(default=False, description="keep '_' in unmapped tags instead of spaces")
    threads: int = Field(default=0, ge=0, le=256, description="onnxruntime intra-op threads; 0 = its default")


@dataclass(frozen=True)
class TagRow:
    """One row of selected_tags.csv."""

    name: str
    category: int


def read_selected_tags(path: Path) -> list[TagRow]:
    """The tag list, in model output order; errors name the file and the row."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"name", "category"} - set(reader.fieldnames or ())
            if missing:
                raise BackendError(f"{path}: missing column(s) {', '.join(sorted(missing))} (need name,category)")
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    rows.append(TagRow(row["name"].strip(), int(row["category"])))
                except (TypeError, ValueError, AttributeError):
                    raise BackendError(f"{path}: line {line}: bad name/category {row!r}") from None
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows:
        raise BackendError(f"{path} lists no tags")
    return rows


def locate_model_files(model: str, revision: str | None) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) from a local folder or a hub repo."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        paths = (folder / MODEL_FILE, folder / TAGS_FILE)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise BackendError(f"tagger folder {folder} lacks {', '.join(missing)}")
        return paths
    if folder.exists() or model.startswith((".", "/", "~")):
        raise BackendError(f"tagger model '{model}' is not a folder holding {MODEL_FILE} and {TAGS_FILE}")
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(model, name, revision=revision)) for name in (MODEL_FILE, TAGS_FILE))
    except Exception as exc:  # hub errors are many classes; all mean "cannot get the files"
        raise BackendError(f"cannot fetch {MODEL_FILE}/{TAGS_FILE} of '{model}' (offline or a typo?): {exc}") from None


def wd_preprocess(image: "Image.Image", size: int) -> "np.ndarray":
    """One image as the WD taggers expect it: [size, size, 3] float32, BGR, 0-255, white padded."""
    import numpy as np
    from PIL import Image

    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    width, height = flat.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(flat.convert("RGB"), ((side - width) // 2, (side - height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


def display_tag(tag: str, keep_underscores: bool = False) -> str:
    """Tag as caption words: 'black_background' -> 'black background' (emoticons untouched)."""
    return tag if keep_underscores or tag in KAOMOJI else tag.replace("_", " ")


class WDTagger:
    """An onnxruntime session over a WD-style tagger, plus the tag-to-slot mapping."""

    name = NAME

    def __init__(self, model: str, revision: str | None, device: str, dtype: str,
                 vocab: "Vocabulary", options: TaggerOptions) -> None:
        if dtype != "float32":
            raise BackendError(f"the tagger runs the ONNX graph in its own precision; use dtype float32 (got {dtype})")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(INSTALL_HINT) from None
        self.model_id, self.revision, self.vocab, self.options = model, revision, vocab, options
        self.device = device
        model_path, tags_path = locate_model_files(model, revision)
        self.tags = read_selected_tags(tags_path)
        self.excluded = {t.strip() for t in options.exclude_tags}
        providers = self._providers(ort, device)
        try:
            self.session = ort.InferenceSession(str(model_path), self._session_options(ort), providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes for bad or unsupported graphs
            raise BackendError(f"onnxruntime cannot load {model_path}: {exc}") from None
        self._read_signature(model_path)

    def _session_options(self, ort):
        opts = ort.SessionOptions()
        if self.options.threads:
            opts.intra_op_num_threads = self.options.threads
        return opts

    @staticmethod
    def _providers(ort, device: str) -> list:
        """onnxruntime providers for 'cpu', 'cuda' or 'cuda:N'."""
        available = ort.get_available_providers()
        if device == "cpu":
            return ["CPUExecutionProvider"]
        kind, _, index = device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise BackendError(f"the tagger runs on cpu, cuda or cuda:N, not '{device}'")
        if "CUDAExecutionProvider" not in available:
            raise BackendError(f"device '{device}' needs onnxruntime-gpu (providers here: {', '.join(available)})")
        # CPU stays listed so nodes without a CUDA kernel still run.
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]

    def _read_signature(self, model_path: Path) -> None:
        """Input name, square size and batch limit from the graph; output width vs the tag list."""
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise BackendError(f"{model_path}: input {inp.name} has shape {shape}; expected NHWC [N, S, S, 3]")
        self.input_name, self.size = inp.name, int(shape[1])
        # Old WD v2 exports fix the batch at 1 (sd-scripts PR #864); those run one image at a time.
        self.max_batch = shape[0] if isinstance(shape[0], int) else None
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.tags):
            raise BackendError(f"{model_path} outputs {width} scores but {TAGS_FILE} lists {len(self.tags)} tags")

    def predict(self, images: list["Image.Image"]) -> "np.ndarray":
        """Sigmoid scores [len(images), n_tags], in selected_tags.csv order."""
        import numpy as np

        batch = np.stack([wd_preprocess(im, self.size) for im in images])
        step = self.max_batch or len(batch)
        parts = [self.session.run(None, {self.input_name: batch[i:i + step]})[0] for i in range(0, len(batch), step)]
        scores = np.concatenate(parts, axis=0)
        if scores.shape != (len(images), len(self.tags)):
            raise BackendError(f"tagger output shape {scores.shape} does not match {len(self.tags)} tags")
        return scores

    def _threshold(self, category: int) -> float:
        if category == CATEGORY_RATING:
            return self.options.rating_threshold
        if category == CATEGORY_CHARACTER:
            return self.options.character_threshold
        return self.options.general_threshold  # general and any other category

    def to_output(self, scores: "np.ndarray") -> BackendOutput:
        """Tags above threshold, mapped into slots; unmapped words kept as text.

        Unmapped general/character tags are both the `text` and the slots' "unplaced" list,
        so the caption keeps them (flagged) next to the mapped phrases. An image whose only
        tags are ratings gives an empty output: a rating is no caption.
        """
        kept = [(row, float(s)) for row, s in zip(self.tags, scores)
                if s >= self._threshold(row.category) and row.name not in self.excluded]
        kept.sort(key=lambda item: -item[1])
        slots: dict[str, list[str]] = {}
        taken_groups: set[str] = set()
        unmapped: list[str] = []
        for row, _ in kept:
            if row.category == CATEGORY_RATING:
                continue
            attr = self.vocab.by_tag(row.name)
            if attr is None:
                unmapped.append(display_tag(row.name, self.options.keep_underscores))
                continue
            if attr.exclusive:
                # Tags are in score order, so the first one of an exclusive group wins it.
                if attr.group in taken_groups:
                    continue
                taken_groups.add(attr.group)
            phrases = slots.setdefault(SLOT_KEYS[attr.slot], [])
            if attr.phrase not in phrases:
                phrases.append(attr.phrase)
        if unmapped:
            slots["unplaced"] = unmapped
        if not slots:
            return BackendOutput()
        return BackendOutput(text=", ".join(unmapped) or None, slots=slots,
                             tags=[(row.name, round(score, 4)) for row, score in kept])

    def caption_batch(self, images: list["Image.Image"]) -> list[BackendOutput]:
        """One BackendOutput per image: slots from aliased tags, other tags as text."""
        if not images:
            return []
        return [self.to_output(row) for row in self.predict(images)]

    def provenance(self) -> dict:
        """{"backend", "model", "revision", "params"} for the manifest."""
        folder = Path(self.model_id).expanduser()
        model = str(folder.resolve()) if folder.is_dir() else self.model_id
        params = {"input_size": self.size, "device": self.device, "packs": list(getattr(self.vocab, "packs", ())),
                  **self.options.model_dump()}
        return {"backend": NAME, "model": model, "revision": self.revision, "params": params}


def create(
    *,
    model: str | None,
    revision: str | None,
    device: str,
    dtype: str,
    vocab: "Vocabulary",
    options: dict | None,
) -> WDTagger:
    """Build the tagger backend."""
    opts = parse_options(TaggerOptions, options, NAME)
    return WDTagger(model or DEFAULT_MODEL, revision, device, dtype, vocab, opts)
