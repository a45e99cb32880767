"""An offline CLIP-style byte-level BPE tokenizer for the tiny models.

Real CLIP tokenizers come from a model hub, which the test and demo machines cannot reach.
This module trains a small tokenizer with the same text pipeline as CLIP (NFC, whitespace
collapse, lowercase, CLIP's split regex, byte-level symbols, ``</w>`` word endings) on a
built-in English/food corpus (``assets/corpus.txt``). Because every one of the 256 byte
symbols is in the vocabulary, any text can be encoded (unknown words fall back to bytes).

The generated files are shipped in ``assets/clip_tokenizer/`` so building a tiny model is
deterministic and needs no training; regenerate them with::

    python -m lorastudio.models.tokenizer OUT_DIR
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CORPUS_PATH = ASSETS_DIR / "corpus.txt"
SHIPPED_DIR = ASSETS_DIR / "clip_tokenizer"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
# Upper bound on learned BPE merges. The built-in corpus runs out of pairs seen twice after
# about 500, so the vocabulary (512 byte symbols + merges + 2 specials) stays near 1,000
# tokens: small enough for tiny text encoders, large enough that common words are one token.
DEFAULT_MERGES = 1500

# CLIP's pre-tokenizer regex (special tokens, English contractions, letter runs, single
# digits, punctuation runs).
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def tokenizer_files_dir() -> Path:
    """Return the folder of the shipped tokenizer (loadable with ``CLIPTokenizer.from_pretrained``)."""
    return SHIPPED_DIR


def byte_symbols() -> list[str]:
    """The 256 byte symbols in GPT-2 ``bytes_to_unicode`` order.

    Printable bytes come first and stand for themselves (so ``"!"`` is id 0, as in CLIP's
    vocabulary); the remaining bytes follow, mapped to code points from 256 up.
    """
    order = list(range(ord("!"), ord("~") + 1))
    order += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols = [chr(b) for b in order]
    shifted = 0
    for byte in range(256):
        if byte not in order:
            order.append(byte)
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _clip_pipeline():
    """A ``tokenizers`` normalizer and pre-tokenizer matching CLIP's text pipeline."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return normalizer, pre_tokenizer


def _word_counts(corpus_lines: list[str]) -> Counter:
    """Count pre-tokenized words (already mapped to byte symbols) over the corpus."""
    normalizer, pre_tokenizer = _clip_pipeline()
    counts: Counter = Counter()
    for line in corpus_lines:
        pieces = pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
        counts.update(word for word, _ in pieces)
    return counts


def _train_merges(corpus_lines: list[str], num_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` BPE merges over byte symbols, ``</w>`` marking word ends.

    A plain greedy BPE written here rather than ``tokenizers.trainers.BpeTrainer`` because
    that trainer breaks frequency ties in hash order, so its output changes run to run; here
    ties go to the lexicographically smallest pair and the result is reproducible.
    """
    words = {tuple(w[:-1]) + (w[-1] + END_OF_WORD,): n for w, n in _word_counts(corpus_lines).items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best, count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_frequency:
            break
        merges.append(best)
        words = {_apply_merge(symbols, best): n for symbols, n in words.items()}
    return merges


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``symbols`` with the merged symbol."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Build a vocabulary in CLIP's order: bytes, bytes + ``</w>``, merges, then specials.

    The end-of-text token gets the highest id because CLIP text encoders pool at the
    highest-id token in older code paths.
    """
    symbols = byte_symbols()
    tokens = symbols + [s + END_OF_WORD for s in symbols]
    seen = set(tokens)
    for a, b in merges:
        merged = a + b
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer(out_dir: Path | str, *, num_merges: int = DEFAULT_MERGES) -> Path:
    """Train on the built-in corpus and write a complete CLIP tokenizer folder.

    The folder holds ``vocab.json`` + ``merges.txt`` (read by transformers 4.x and other
    tools) and ``tokenizer.json`` + ``tokenizer_config.json`` (what transformers 5 writes).
    """
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if ln.strip()]
    merges = _train_merges(lines, num_merges)
    vocab = build_vocab(merges)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file/merges_file keyword arguments; from_pretrained on the
    # folder is the supported way to build the fast tokenizer from these two files.
    tokenizer = CLIPTokenizer.from_pretrained(str(out), model_max_length=MODEL_MAX_LENGTH)
    tokenizer.save_pretrained(str(out))
    return out


def load_tokenizer(path: Path | str | None = None):
    """Load a CLIP tokenizer from ``path`` (default: the shipped folder)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path or tokenizer_files_dir()))


def main(argv: list[str] | None = None) -> int:
    """Regenerate tokenizer files: ``python -m lorastudio.models.tokenizer OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lorastudio.models.tokenizer OUT_DIR", file=sys.stderr)
        return 2
    out = write_tokenizer(args[0])
    size = len(json.loads((out / "vocab.json").read_text(encoding="utf-8")))
    print(f"wrote a {size}-token CLIP tokenizer to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
