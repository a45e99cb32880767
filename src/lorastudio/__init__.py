"""lorastudio: a data-first LoRA studio for diffusion models."""

from lorastudio import known_warnings as _known_warnings

__version__ = "0.1.0"

_known_warnings.install()
