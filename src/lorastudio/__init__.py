"""lorastudio: a data-first LoRA studio for diffusion models."""

__version__ = "0.1.0"
