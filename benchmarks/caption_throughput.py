"""Caption throughput: `lorastudio caption` code path vs batch size 1 vs bare `model.generate`.

Builds a small-but-not-trivial random BLIP captioner in code (about 9 M parameters, so
generation dominates), writes a dataset dir of N images, and times:

1. `lorastudio.captions.run.caption_dataset` with the hf-caption backend at --batch-size;
2. the same at batch size 1;
3. the reference: the same model's processor + `generate` + `batch_decode` on the same
   batches of already-decoded images (what a hand-written loop would do).

Prints images/s for each and the ratios: batching speed-up (1 vs 2) and our overhead over the
reference (1 vs 3, target at most 10 %). Each figure is the best of --repeats runs, because
other jobs on a shared CPU machine only ever make a run slower.

    python benchmarks/caption_throughput.py --images 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

GEN = {"max_new_tokens": 20, "num_beams": 1}


def build_blip(out: Path, seed: int = 0) -> Path:
    """A random BLIP with real-ish widths: 64 px images, 256-wide towers, 1,000-word vocab."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tokenizer = BertTokenizer(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                              sep_token="[SEP]", mask_token="[MASK]")
    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  image_size=64, patch_size=16, initializer_range=0.2)
    text = dict(vocab_size=len(words), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                num_attention_heads=4, encoder_hidden_size=256, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                sep_token_id=3, initializer_range=0.2)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text, projection_dim=256))
    model.save_pretrained(out)
    BlipProcessor(BlipImageProcessorPil(size={"height": 64, "width": 64}), tokenizer).save_pretrained(out)
    return out


def write_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """A dataset dir of `count` random 96x80 PNGs with a valid manifest."""
    import numpy as np
    from PIL import Image

    from lorastudio.data.manifest import write_dataset_json, write_manifest

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        path = root / "images" / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)
        records.append({"id": f"img{i:03d}", "file": f"images/{path.name}", "source": f"raw/{path.name}",
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "orig_width": 96,
                        "orig_height": 80, "width": 96, "height": 80, "crop": [0, 0, 96, 80], "flags": []})
    write_manifest(root, records)
    write_dataset_json(root, {"resolution": 64, "counts": {"accepted": count}})
    return root


def time_run(backend, vocab, template: Path, work: Path, batch_size: int) -> float:
    """Seconds for caption_dataset over a fresh copy of the dataset."""
    from lorastudio.captions.run import CaptionOptions, caption_dataset

    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work)
    start = time.perf_counter()
    summary = caption_dataset(work, backend, vocab, CaptionOptions(trigger="ohwx", batch_size=batch_size),
                              progress=False)
    elapsed = time.perf_counter() - start
    assert summary.captioned, "the run captioned nothing"
    return elapsed


def time_direct(backend, images, batch_size: int) -> float:
    """Seconds for processor + generate + decode on the same batches, no run machinery."""
    import torch

    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        inputs = backend.processor(images=images[i:i + batch_size], return_tensors="pt")
        with torch.inference_mode():
            out = backend.model.generate(pixel_values=inputs["pixel_values"], do_sample=False, **GEN)
        backend.processor.batch_decode(out, skip_special_tokens=True)
    return time.perf_counter() - start


def main() -> None:
    """Build, time, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        # On a shared CPU, fewer threads than cores avoids spin-wait thrash that swamps the timings.
        torch.set_num_threads(args.threads)
    from PIL import Image

    from lorastudio.captions.backends import get_backend
    from lorastudio.captions.vocab import load_vocabulary

    tmp = Path(tempfile.mkdtemp(prefix="caption_bench_"))
    try:
        model_dir = build_blip(tmp / "blip")
        template = write_dataset(tmp / "template", args.images)
        vocab = load_vocabulary()
        backend = get_backend("hf-caption", model=str(model_dir), vocab=vocab, options=GEN)
        images = [Image.open(p).convert("RGB") for p in sorted((template / "images").glob("*.png"))]
        n_params = sum(p.numel() for p in backend.model.parameters())
        print(f"model: random BLIP, {n_params / 1e6:.1f} M parameters; {args.images} images; "
              f"{GEN['max_new_tokens']} new tokens each; torch threads {torch.get_num_threads()}")
        time_direct(backend, images[: args.batch_size], args.batch_size)  # warm-up
        best = {"run_batched": float("inf"), "run_b1": float("inf"), "direct": float("inf")}
        for _ in range(args.repeats):  # interleaved, so background load hits all three alike
            best["direct"] = min(best["direct"], time_direct(backend, images, args.batch_size))
            best["run_batched"] = min(best["run_batched"],
                                      time_run(backend, vocab, template, tmp / "work", args.batch_size))
            best["run_b1"] = min(best["run_b1"], time_run(backend, vocab, template, tmp / "work", 1))
        rate = {k: args.images / v for k, v in best.items()}
        print(f"direct generate, batch {args.batch_size}: {rate['direct']:8.1f} img/s")
        print(f"caption run,     batch {args.batch_size}: {rate['run_batched']:8.1f} img/s")
        print(f"caption run,     batch 1: {rate['run_b1']:8.1f} img/s")
        print(f"batching speed-up (run b{args.batch_size} / run b1): {rate['run_batched'] / rate['run_b1']:.2f}x")
        overhead = best["run_batched"] / best["direct"] - 1
        print(f"run overhead vs direct generate: {overhead * 100:+.1f}% (target <= +10%)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
