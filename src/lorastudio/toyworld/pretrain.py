"""Pretrain the shipped toy base model: a tiny Stable Diffusion trained on the toy world.

    python -m lorastudio.toyworld.pretrain --out src/lorastudio/toyworld/base

Five stages, all seeded (seed 0, 4,000 scenes drawn by `scenes.random_spec`):
  1. AutoencoderKL (64x64 RGB <-> 16x16x4 latents, 0.7 M parameters): 800 steps at batch 16
     on 32x32 crops, reconstruction loss.
  2. Its decoder is tuned 600 steps on whole images with the encoder frozen, the loss taken
     with each scene's lighting undone so dim scenes keep their colours (the dish survives
     the round trip); every scene is then encoded once (posterior means).
  3. CLIPTextModel (3 layers, width 64, the shipped 1,024-token BPE vocabulary) learns what
     captions say: 600 steps at batch 64, linear heads read each attribute (or "not said")
     from its states. Captions drop phrases at random, half start with a random made-up
     trigger word (one to three pieces, e.g. `qzre_photo_v2`) and 10% are empty; an
     invariance term pulls the states after the made-up word onto those of the same caption
     without it. This is what keeps prompts working under a trigger word the model has
     never seen (`ohwx_kfood_style`): a text encoder trained jointly with the UNet from
     scratch stayed uninformative, and the UNet learned to ignore it.
  4. UNet2DConditionModel (5.8 M parameters) on the frozen text encoder: 2,400 steps at
     batch 32, epsilon objective, SD's scaled-linear schedule, AdamW 6e-4, warm-up + cosine.
  5. Saved in fp16 with a DPM-Solver scheduler.

The shipped model is this command's output with the defaults (`--threads 2`) on the 2-core
development machine: 4,614 s wall in all (VAE 2.8 min, decoder 3.4 min, text encoder 2 min,
UNet 68 min at about 1.7 s/step; the test suite and a few quick checks shared the machine
for some minutes). Thread count changes the order of float sums, so a bit-identical rerun
needs the same `--threads`. The run writes its settings, step and wall time to
`lorastudio_model.json` and saves every 300 UNet steps.
Check a result with `python -m lorastudio.toyworld.base_quality DIR` before shipping it.
Output: a diffusers folder (fp16 safetensors, 12.6 MB) that loads with
`StableDiffusionPipeline.from_pretrained`.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import string
import tempfile
import time
from pathlib import Path

import numpy as np

from lorastudio.toyworld.scenes import (
    BACKGROUND_PHRASES,
    DISHES,
    GARNISH_PHRASES,
    LIGHTING_PHRASES,
    VESSEL_PHRASES,
    SceneSpec,
    golden_caption,
    random_spec,
    render,
)

BASE_DIR = Path(__file__).with_name("base")
RESOLUTION = 64


def shipped_base_dir() -> Path | None:
    """The shipped toy base model folder, or None when it is not installed."""
    return BASE_DIR if (BASE_DIR / "model_index.json").is_file() else None


def vae_config() -> dict:
    """AutoencoderKL with 4x downscaling (3 blocks): 64x64 RGB <-> 16x16x4 latents."""
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": RESOLUTION,
        "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    }


def unet_config(width: int = 64) -> dict:
    """SD-style UNet on 16x16x4 latents with cross-attention to a 64-wide text encoder."""
    return {
        "sample_size": RESOLUTION // 4, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [width, 2 * width, 2 * width], "attention_head_dim": 8, "cross_attention_dim": 64,
        "norm_num_groups": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def text_config() -> dict:
    """A small CLIP text encoder over the shipped 1,024-token BPE vocabulary."""
    from lorastudio.models.tiny import _tokenizer_ids  # the vocabulary's special-token ids

    return {**_tokenizer_ids(), "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
            "num_hidden_layers": 3, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 64, "layer_norm_eps": 1e-5}


# Pieces of made-up trigger words. The evaluation trigger (`ohwx_kfood_style`) is not built
# from these on purpose: prompts with it measure robustness to a trigger never seen.
PREFIX_WORDS = ("style", "food", "photo", "look", "sks", "lora", "art", "shot", "pro", "xl", "v2", "v3", "03")


def random_prefix(rng: random.Random) -> str:
    """A made-up word like a LoRA trigger: one to three pieces (random letters or a common
    trigger word) joined by '_', '-', ' ' or nothing, e.g. `qzre_photo_v2`, `mrk style`."""
    pieces = []
    for i in range(rng.choice((1, 1, 2, 2, 3))):
        if i == 0 or rng.random() < 0.5:
            pieces.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7))))
        else:
            pieces.append(rng.choice(PREFIX_WORDS))
    return rng.choice(("_", "_", "-", " ", "")).join(pieces)


# What the text encoder is taught to recognise in a caption (stage 3). Index 0 of every group
# means "the caption does not say"; the rest follow the generator's sorted attribute values.
ATTRIBUTE_GROUPS: dict[str, list[str]] = {
    "dish": sorted(DISHES),
    "vessel": sorted(VESSEL_PHRASES),
    "garnish": sorted(GARNISH_PHRASES),
    "background": sorted(BACKGROUND_PHRASES),
    "lighting": sorted(LIGHTING_PHRASES),
    "gloss": ["glossy"],
}


def caption_parts(spec: SceneSpec, rng: random.Random) -> tuple[str, str, dict[str, int]]:
    """(prefix, body, labels): a training caption is `prefix, body` or just `body`.

    The body is the golden caption with random phrase dropout (the subject always stays);
    a random made-up prefix comes half the time ("" otherwise), and the whole caption is
    empty 10% of the time (for classifier-free guidance). `labels` says, per attribute
    group, which value the caption names (0: not named).
    """
    labels = dict.fromkeys(ATTRIBUTE_GROUPS, 0)
    if rng.random() < 0.1:
        return "", "", labels
    named = {"dish": spec.dish, "vessel": spec.vessel, "garnish": spec.garnish, "background": spec.background,
             "lighting": spec.lighting, "gloss": "glossy" if spec.gloss else "none"}
    # golden_caption puts the parts in this order; "none" garnish and no gloss add no part.
    order = [g for g in ("vessel", "garnish", "background", "lighting", "gloss") if named[g] != "none"]
    parts = golden_caption(spec).split(", ")
    kept = [parts[0]]
    labels["dish"] = ATTRIBUTE_GROUPS["dish"].index(spec.dish) + 1
    for group, part in zip(order, parts[1:], strict=True):
        if rng.random() > 0.25:
            kept.append(part)
            labels[group] = ATTRIBUTE_GROUPS[group].index(named[group]) + 1
    prefix = random_prefix(rng) if rng.random() < 0.5 else ""
    return prefix, ", ".join(kept), labels


def join_caption(prefix: str, body: str) -> str:
    return f"{prefix}, {body}" if prefix else body


def caption_with_labels(spec: SceneSpec, rng: random.Random) -> tuple[str, dict[str, int]]:
    """A training caption plus the labels of `caption_parts`."""
    prefix, body, labels = caption_parts(spec, rng)
    return join_caption(prefix, body), labels


def training_caption(spec: SceneSpec, rng: random.Random) -> str:
    """Only the caption of `caption_with_labels`."""
    return caption_with_labels(spec, rng)[0]


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, list[SceneSpec]]:
    """`n` random scenes as a uint8 array (n, 64, 64, 3) plus their specs."""
    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(n)]
    images = np.stack([np.asarray(render(s, RESOLUTION, RESOLUTION, seed=seed * 1_000_003 + i)) for i, s in enumerate(specs)])
    return images, specs


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(images: np.ndarray, *, steps: int, batch: int, seed: int, log):
    """Train the autoencoder (reconstruction + a light KL term) and set its scaling factor.

    Returns the VAE and every image's posterior mean (unscaled)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    gen = np.random.default_rng(seed)
    crop = RESOLUTION // 2
    for step in range(1, steps + 1):
        # Random 32x32 crops: the autoencoder is convolutional, so crops teach it the same
        # local reconstruction at a quarter of the cost of whole images.
        oy, ox = gen.integers(0, RESOLUTION - crop + 1, 2)
        x = _to_tensor(images[gen.integers(0, len(images), batch), oy : oy + crop, ox : ox + crop])
        post = vae.encode(x).latent_dist
        # Decode the posterior mean: the latents the UNet trains on are means too, and a
        # deterministic code converges much faster at this size.
        recon = vae.decode(post.mode()).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    vae.eval()
    means = encode_all(vae, images)
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return vae, means


def lighting_gain(specs: list[SceneSpec]):
    """Per-image factors (n, 3, 1, 1) that undo each scene's lighting, as the readers do."""
    import torch

    from lorastudio.toyworld.readers import unlit

    ones = np.ones(3, np.float32)
    gains = np.stack([unlit(ones, spec.lighting) for spec in specs]).astype(np.float32)
    return torch.from_numpy(gains).reshape(-1, 3, 1, 1)


def finetune_decoder(vae, images: np.ndarray, specs: list[SceneSpec], means, *, steps: int, batch: int, seed: int,
                     log):
    """Sharpen the decoder on whole images with the encoder frozen (the latents stay as they are).

    The loss is measured with each scene's lighting undone, so a dim scene's colours weigh
    as much as a bright one's: with plain pixel error the decoder drifted dim yangnyeom
    chicken towards tteokbokki's orange (dish read right after a round trip 86% of the time;
    99-100% after this stage in the development runs). `means` are the images' posterior
    means (`encode_all`), which this stage leaves valid.
    """
    import torch

    gain = lighting_gain(specs)
    params = [p for name, p in vae.named_parameters() if name.startswith(("decoder.", "post_quant_conv."))]
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    gen = np.random.default_rng(seed + 2)
    vae.train()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(gen.integers(0, len(images), batch))
        x = _to_tensor(images[idx.numpy()])
        recon = vae.decode(means[idx]).sample
        loss = torch.nn.functional.mse_loss((recon + 1) * gain[idx], (x + 1) * gain[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"decoder step {step}/{steps} loss {loss.item():.4f}")
    return vae.eval().requires_grad_(False)


def encode_all(vae, images: np.ndarray, batch: int = 256):
    """Posterior means of every image (the VAE is frozen from here on, so encode once)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(_to_tensor(images[i : i + batch])).latent_dist.mean)
    return torch.cat(out)


def _tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def prefix_token_counts(tokenizer, prefixes: list[str]) -> list[int]:
    """How many tokens `prefix, ` adds in front of a caption (0 for no prefix)."""
    return [len(tokenizer(f"{p},").input_ids) - 2 if p else 0 for p in prefixes]


def train_text_encoder(specs: list[SceneSpec], *, steps: int, batch: int, seed: int, log, tokenizer,
                       invariance: float = 1.0):
    """Teach a fresh CLIPTextModel what captions say, before the UNet ever sees it.

    Linear heads read every attribute group (value or "not said") from the end-of-text
    state and from the mean over all 77 positions (the padding positions are end-of-text
    tokens too, and the UNet attends to all of them). Half the captions start with a random
    made-up word, and an invariance term pulls the states of everything after that word
    (caption, end-of-text, padding) onto the states of the same caption without it, so a
    trigger word the model has never seen leaves what the UNet reads about the prompt alone.
    Without this stage a text encoder trained jointly with the UNet from scratch stayed
    uninformative and the UNet learned to ignore it.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config()))
    width = text_encoder.config.hidden_size
    heads = torch.nn.ModuleDict({g: torch.nn.Linear(2 * width, len(v) + 1) for g, v in ATTRIBUTE_GROUPS.items()})
    opt = torch.optim.AdamW(list(text_encoder.parameters()) + list(heads.parameters()), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 50) * 0.5 * (1 + np.cos(np.pi * s / steps)))
    rng = random.Random(seed + 1)
    length = tokenizer.model_max_length
    for step in range(1, steps + 1):
        parts = [caption_parts(specs[rng.randrange(len(specs))], rng) for _ in range(batch)]
        out = text_encoder(_tokenize(tokenizer, [join_caption(p, b) for p, b, _ in parts]))
        feats = torch.cat([out.pooler_output, out.last_hidden_state.mean(1)], dim=1)
        losses, correct = [], []
        for group, head in heads.items():
            target = torch.tensor([labels[group] for _, _, labels in parts])
            logits = head(feats)
            losses.append(torch.nn.functional.cross_entropy(logits, target))
            correct.append((logits.argmax(1) == target).float().mean().item())
        shifts = prefix_token_counts(tokenizer, [p for p, _, _ in parts])
        rows = [i for i, k in enumerate(shifts) if k]
        drift = torch.zeros(())
        if invariance and rows:
            with torch.no_grad():
                plain = text_encoder(_tokenize(tokenizer, [parts[i][1] for i in rows])).last_hidden_state
            states = out.last_hidden_state
            drift = torch.stack([
                torch.nn.functional.mse_loss(states[i, 1 + shifts[i] :], plain[j, 1 : length - shifts[i]])
                for j, i in enumerate(rows)]).mean()
        loss = torch.stack(losses).sum() + invariance * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"text encoder step {step}/{steps} loss {loss.item():.4f} attribute accuracy {np.mean(correct):.3f} "
                f"prefix drift {drift.item():.4f}")
    return text_encoder.eval().requires_grad_(False)


def train_unet(latents, specs: list[SceneSpec], text_encoder, *, steps: int, batch: int, seed: int, log, tokenizer,
               width: int = 64, on_save=None, save_every: int = 0):
    """Train the UNet with the epsilon objective of Stable Diffusion on the frozen text encoder.

    `on_save(unet, step)` runs every `save_every` steps so a long run leaves usable
    intermediate models.
    """
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(width))
    noise_sched = DDPMScheduler(**scheduler_kwargs())
    opt = torch.optim.AdamW(unet.parameters(), lr=6e-4, weight_decay=1e-2)
    lr_at = lambda s: min(1.0, s / 200) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = [rng.randrange(len(specs)) for _ in range(batch)]
        with torch.no_grad():
            context = text_encoder(_tokenize(tokenizer, [training_caption(specs[i], rng) for i in idx]))[0]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, context).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"unet step {step}/{steps} loss {loss.item():.4f}")
        if on_save is not None and save_every and step % save_every == 0 and step < steps:
            on_save(unet, step)
    return unet.eval()


def scheduler_kwargs() -> dict:
    """The noise schedule every Stable Diffusion release trains with."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def save_pipeline(out: Path, *, vae, unet, text_encoder, tokenizer, info: dict) -> Path:
    """Write a diffusers folder in fp16 (small enough to ship inside the package)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**scheduler_kwargs(), steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    # Copies, so saving mid-run never turns the modules being trained into fp16.
    pipe = copy.deepcopy(pipe).to(torch.float16)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(str(partial), safe_serialization=True)
    from lorastudio.models.tokenizer import tokenizer_files_dir

    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_files_dir() / name, partial / "tokenizer" / name)
    (partial / "lorastudio_model.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of `main`; its defaults are the shipped model's settings."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BASE_DIR, help="Output diffusers folder (replaced).")
    ap.add_argument("--images", type=int, default=4000, help="Training scenes to draw.")
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--decoder-steps", type=int, default=600,
                    help="Decoder fine-tune steps on whole images, lighting undone in the loss (batch 16).")
    ap.add_argument("--text-steps", type=int, default=600, help="Text encoder steps (batch 64).")
    ap.add_argument("--invariance", type=float, default=1.0,
                    help="Weight of the text encoder's prefix-invariance term (0 turns it off).")
    ap.add_argument("--unet-steps", type=int, default=2400)
    ap.add_argument("--unet-width", type=int, default=64, help="UNet channels of the first block (then 2x, 2x).")
    ap.add_argument("--batch", type=int, default=32, help="UNet batch size.")
    ap.add_argument("--vae-batch", type=int, default=16, help="VAE batch size (32x32 crops).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the shipped model used 2; use 1 on a machine busy with other work).")
    ap.add_argument("--vae", type=Path, default=None,
                    help="Reuse a trained VAE folder (decoder already tuned) instead of stages 1-2.")
    ap.add_argument("--save-every", type=int, default=300, help="Also save the model every N UNet steps.")
    return ap


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: reproduce the shipped base model."""
    import torch
    from transformers import CLIPTokenizer

    from lorastudio.models.tokenizer import tokenizer_files_dir

    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "model_index.json").exists():
        ap.error(f"{args.out} is a non-empty folder that holds no model; choose another --out")
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {msg}", flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, specs = make_dataset(args.images, args.seed)
    log(f"drew {len(images)} scenes")
    if args.vae is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(args.vae)).float().eval()
        means = encode_all(vae, images)
    else:
        vae, means = train_vae(images, steps=args.vae_steps, batch=args.vae_batch, seed=args.seed, log=log)
        if args.decoder_steps:
            vae = finetune_decoder(vae, images, specs, means, steps=args.decoder_steps, batch=args.vae_batch,
                                   seed=args.seed, log=log)
        # Kept on its own (outside --out, which may be inside the package) so a later failure
        # never costs the autoencoder's training again: rerun with --vae PATH.
        vae_copy = Path(tempfile.gettempdir()) / f"lorastudio-toy-vae-seed{args.seed}"
        vae.save_pretrained(str(vae_copy))
        log(f"VAE also saved to {vae_copy} (reuse with --vae)")
    latents = means * vae.config.scaling_factor
    log(f"encoded latents {tuple(latents.shape)}, scaling factor {vae.config.scaling_factor:.4f}")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))

    def info(step: int) -> dict:
        return {"family": "sd15", "size": "toyworld", "seed": args.seed, "images": args.images,
                "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "decoder_steps": args.decoder_steps,
                "text_steps": args.text_steps, "invariance": args.invariance,
                "unet_steps": step, "unet_width": args.unet_width, "batch": args.batch,
                "resolution": RESOLUTION, "wall_time_s": round(time.time() - start, 1),
                "vae_from": str(args.vae) if args.vae else "trained in this run"}

    text_encoder = train_text_encoder(specs, steps=args.text_steps, batch=64, seed=args.seed, log=log,
                                      tokenizer=tokenizer, invariance=args.invariance)

    def on_save(unet, step: int) -> None:
        save_pipeline(args.out, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, info=info(step))
        log(f"saved {args.out} at step {step}")

    unet = train_unet(latents, specs, text_encoder, steps=args.unet_steps, batch=args.batch, seed=args.seed,
                      width=args.unet_width, log=log, tokenizer=tokenizer, on_save=on_save, save_every=args.save_every)
    save_pipeline(args.out, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                  info=info(args.unet_steps))
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
