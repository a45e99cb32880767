"""Pretrain the shipped toy base model: a tiny Stable Diffusion trained on the toy world.

    python -m lorastudio.toyworld.pretrain --out src/lorastudio/toyworld/base

Four stages, all seeded (seed 0, 4,000 scenes drawn by `scenes.random_spec`):
  1. AutoencoderKL (64x64 RGB <-> 16x16x4 latents, 0.7 M parameters): 800 steps at batch 16
     on 32x32 crops, reconstruction loss.
  2. Every scene is encoded once with the frozen VAE (posterior means).
  3. CLIPTextModel (3 layers, width 64, the shipped 1,024-token BPE vocabulary) learns what
     captions say: 600 steps at batch 64, linear heads read each attribute (or "not said")
     from its states. Captions drop phrases at random, half start with a random made-up
     word and 10% are empty. This is what keeps prompts working under a trigger word the
     model has never seen (`ohwx_kfood_style`): a text encoder trained jointly with the UNet
     from scratch stayed uninformative, and the UNet learned to ignore it.
  4. UNet2DConditionModel (5.8 M parameters) on the frozen text encoder: 2,400 steps at
     batch 32, epsilon objective, SD's scaled-linear schedule, AdamW 6e-4, warm-up + cosine.

The shipped model is this command's output with the defaults (`--threads 2`) on the 2-core
development machine: 4,953 s wall in all (VAE 2 min, text encoder 1.5 min, UNet 1.2 s/step
when the machine was otherwise idle; other experiments shared it for part of the run, so
expect about 55 minutes on two free cores). Thread count changes the order of float sums,
so a bit-identical rerun needs the same `--threads`. The run writes its
settings, step and wall time to `lorastudio_model.json` and saves every 300 UNet steps.
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
        "block_out_channels": [width, 2 * width, 2 * width], "attention_head_dim": 8, "cross_attention_dim": 64, "norm_num_groups": 16,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def text_config() -> dict:
    """A small CLIP text encoder over the shipped 1,024-token BPE vocabulary."""
    from lorastudio.models.tiny import _tokenizer_ids  # the vocabulary's special-token ids

    return {**_tokenizer_ids(), "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
            "num_hidden_layers": 3, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": 64, "layer_norm_eps": 1e-5}


def random_prefix(rng: random.Random) -> str:
    """A made-up word like a LoRA trigger: letters, sometimes joined to a word by '_'."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    if rng.random() < 0.5:
        word += "_" + rng.choice(["style", "food", "photo", "look", "v2", "sks", "lora"])
    return word


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


def caption_with_labels(spec: SceneSpec, rng: random.Random) -> tuple[str, dict[str, int]]:
    """A training caption plus, per attribute group, which value it names (0: not named).

    Golden caption with random phrase dropout (the subject always stays), a random made-up
    prefix half the time, and an empty caption 10% of the time (for classifier-free guidance).
    """
    labels = dict.fromkeys(ATTRIBUTE_GROUPS, 0)
    if rng.random() < 0.1:
        return "", labels
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
    if rng.random() < 0.5:
        kept.insert(0, random_prefix(rng))
    return ", ".join(kept), labels


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
    """Train the autoencoder (reconstruction + a light KL term) and set its scaling factor."""
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
    latents = encode_all(vae, images)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae, latents * vae.config.scaling_factor


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


def train_text_encoder(specs: list[SceneSpec], *, steps: int, batch: int, seed: int, log, tokenizer):
    """Teach a fresh CLIPTextModel what captions say, before the UNet ever sees it.

    Linear heads read every attribute group (value or "not said") from the end-of-text
    state and from the mean over all 77 positions (the padding positions are end-of-text
    tokens too, and the UNet attends to all of them). Trained on captions with random
    made-up prefixes, so a trigger word the model has never seen leaves the states that
    carry the prompt's content alone. Without this stage a text encoder trained jointly
    with the UNet from scratch stayed uninformative and the UNet learned to ignore it.
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
    for step in range(1, steps + 1):
        pairs = [caption_with_labels(specs[rng.randrange(len(specs))], rng) for _ in range(batch)]
        out = text_encoder(_tokenize(tokenizer, [c for c, _ in pairs]))
        feats = torch.cat([out.pooler_output, out.last_hidden_state.mean(1)], dim=1)
        losses, correct = [], []
        for group, head in heads.items():
            target = torch.tensor([labels[group] for _, labels in pairs])
            logits = head(feats)
            losses.append(torch.nn.functional.cross_entropy(logits, target))
            correct.append((logits.argmax(1) == target).float().mean().item())
        loss = torch.stack(losses).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"text encoder step {step}/{steps} loss {loss.item():.4f} attribute accuracy {np.mean(correct):.3f}")
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


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: reproduce the shipped base model."""
    import torch
    from transformers import CLIPTokenizer

    from lorastudio.models.tokenizer import tokenizer_files_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BASE_DIR, help="Output diffusers folder (replaced).")
    ap.add_argument("--images", type=int, default=4000, help="Training scenes to draw.")
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--text-steps", type=int, default=600, help="Text encoder steps (batch 64).")
    ap.add_argument("--unet-steps", type=int, default=2400)
    ap.add_argument("--unet-width", type=int, default=64, help="UNet channels of the first block (then 2x, 2x).")
    ap.add_argument("--batch", type=int, default=32, help="UNet batch size.")
    ap.add_argument("--vae-batch", type=int, default=16, help="VAE batch size (32x32 crops).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (the shipped model used 2; use 1 on a machine busy with other work).")
    ap.add_argument("--vae", type=Path, default=None, help="Reuse a trained VAE folder instead of stage 1.")
    ap.add_argument("--save-every", type=int, default=300, help="Also save the model every N UNet steps.")
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
        latents = encode_all(vae, images) * vae.config.scaling_factor
    else:
        vae, latents = train_vae(images, steps=args.vae_steps, batch=args.vae_batch, seed=args.seed, log=log)
        # Kept on its own (outside --out, which may be inside the package) so a later failure
        # never costs the autoencoder's training again: rerun with --vae PATH.
        vae_copy = Path(tempfile.gettempdir()) / f"lorastudio-toy-vae-seed{args.seed}"
        vae.save_pretrained(str(vae_copy))
        log(f"VAE also saved to {vae_copy} (reuse with --vae)")
    log(f"encoded latents {tuple(latents.shape)}, scaling factor {vae.config.scaling_factor:.4f}")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_files_dir()))

    def info(step: int) -> dict:
        return {"family": "sd15", "size": "toyworld", "seed": args.seed, "images": args.images,
                "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "text_steps": args.text_steps,
                "unet_steps": step, "unet_width": args.unet_width, "batch": args.batch,
                "resolution": RESOLUTION, "wall_time_s": round(time.time() - start, 1),
                "vae_from": str(args.vae) if args.vae else "trained in this run"}

    text_encoder = train_text_encoder(specs, steps=args.text_steps, batch=64, seed=args.seed, log=log,
                                      tokenizer=tokenizer)

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
