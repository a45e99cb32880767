"""What the peft LoRA layers cost in an SD1.5-size UNet step, and whether a lighter layer helps.

One process, one UNet (SD1.5 dimensions, random weights, the model train_step.py builds),
rank 4 on the attention projections as `lorastudio train` attaches them. Variants, timed in
turn within each round so machine load hits them alike (median over rounds):

- peft: the peft `lora.Linear` layers as attached (what training runs);
- light: the same weights through a plain module: base(x) + B(A(x)) * scale, no adapter
  bookkeeping, dropout, dtype checks or ModuleDict look-ups;
- light_inplace: base(x).add_(B(A(x)), alpha=scale), one full-size tensor fewer per layer;
- no_lora: the frozen UNet with the input requiring grad, so backward still runs through every
  layer: the floor under any LoRA layer.

A step is forward + MSE loss + backward (no optimizer: its cost does not depend on the layer).
The light variants' outputs and LoRA gradients are checked against peft's first.

Usage: python benchmarks/lora_overhead.py [--res 256] [--rounds 6] [--bf16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class LightLora:
    """Factory for the plain LoRA linear used by the `light` variants (built lazily: torch import)."""

    @staticmethod
    def make(peft_layer, inplace: bool):
        import torch

        class Light(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.base = peft_layer.base_layer
                self.down = peft_layer.lora_A["default"]
                self.up = peft_layer.lora_B["default"]
                self.scale = float(peft_layer.scaling["default"])

            def forward(self, x):
                out = self.base(x)
                if inplace:
                    return out.add_(self.up(self.down(x)), alpha=self.scale)
                return out + self.up(self.down(x)) * self.scale

        return Light()


def swap(unet, layers: dict, variant: str) -> None:
    """Put the `variant` layer at every LoRA path of `unet`."""
    for path, by_variant in layers.items():
        parent_path, _, name = path.rpartition(".")
        setattr(unet.get_submodule(parent_path), name, by_variant[variant])


def step(unet, latents, t, text, lora_params, variant: str, bf16: bool):
    import torch

    noisy = latents.clone().requires_grad_(variant == "no_lora")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = unet(noisy, t, encoder_hidden_states=text).sample
    loss = torch.nn.functional.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in lora_params]
    for p in lora_params:
        p.grad = None
    return pred.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import UNet2DConditionModel
    from peft.tuners.lora import LoraLayer

    from lorastudio.models.lora import attach_lora, unet_target_modules
    from train_step import MODEL, ensure_model

    ensure_model()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(MODEL, subfolder="unet").requires_grad_(False)
    attach_lora(unet, rank=4, alpha=4.0, target_modules=unet_target_modules(unet, "attn"))
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:  # B starts at zero; give it values so the LoRA branch shows in outputs and grads
        p.data.normal_(0, 0.02)
    layers = {name: {"peft": mod, "light": LightLora.make(mod, False), "light_inplace": LightLora.make(mod, True),
                            "no_lora": mod.base_layer}
              for name, mod in unet.named_modules() if isinstance(mod, LoraLayer)}
    latents = torch.randn(1, 4, args.res // 8, args.res // 8)
    text = torch.randn(1, 77, 768)
    t = torch.tensor([500])
    variants = ["peft", "light", "light_inplace", "no_lora"]

    swap(unet, layers, "peft")
    ref_out, ref_grads = step(unet, latents, t, text, lora_params, "peft", args.bf16)
    tol = 2e-2 if args.bf16 else 1e-4
    for variant in ("light", "light_inplace"):
        swap(unet, layers, variant)
        out, grads = step(unet, latents, t, text, lora_params, variant, args.bf16)
        out_err = ((out - ref_out).abs().max() / ref_out.abs().max()).item()
        grad_err = max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, ref_grads, strict=True))
        print(f"{variant:<14} vs peft: output max rel diff {out_err:.1e}, LoRA grad max rel diff {grad_err:.1e} "
              f"({'within' if max(out_err, grad_err) <= tol else 'OUTSIDE'} {tol:.0e})", flush=True)

    times: dict[str, list[float]] = {v: [] for v in variants}
    for variant in variants:  # one untimed warm-up step each
        swap(unet, layers, variant)
        step(unet, latents, t, text, lora_params, variant, args.bf16)
    for _ in range(args.rounds):
        for variant in variants:
            swap(unet, layers, variant)
            start = time.perf_counter()
            step(unet, latents, t, text, lora_params, variant, args.bf16)
            times[variant].append(time.perf_counter() - start)
    print(f"\n{args.res} px, {'bf16 autocast' if args.bf16 else 'fp32'}, {len(layers)} LoRA layers (rank 4, attn), "
          f"forward + backward, median of {args.rounds} rounds (variants interleaved); torch threads {torch.get_num_threads()}")
    peft_s, floor_s = statistics.median(times["peft"]), statistics.median(times["no_lora"])
    for variant in variants:
        med = statistics.median(times[variant])
        spread = f"{min(times[variant]):.3f}-{max(times[variant]):.3f}"
        print(f"  {variant:<14} {med:7.3f} s  ({spread})  vs peft {peft_s / med:5.3f}x  over no_lora {100 * (med / floor_s - 1):+5.1f}%")


if __name__ == "__main__":
    main()
