"""Silence the dependency messages that are known to be harmless here, and only those.

- transformers 5 says "`CLIPImageProcessor` requires torchvision (not installed); falling back
  to `CLIPImageProcessorPil`" whenever diffusers imports its pipelines. The PIL processor is
  the one we want: torchvision has no CPU build beside our torch, and installing the PyPI one
  breaks transformers. The advice would break the install, so the message is dropped; our own
  code asks for the PIL processors by name.
- Loading a second LoRA into a text encoder makes transformers log a "LOAD REPORT" table of
  the *first* adapter's lora_A / lora_B weights as MISSING: they are absent from the second
  file by design, and the output is right. `loading_adapters` drops exactly that table when
  every row names an adapter loaded before; any other row keeps the report.
- peft warns "Already found a `peft_config` attribute in the model" on every adapter after the
  first; several named adapters at once are what `--lora A --lora B` asks for.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from typing import Iterator, Sequence

_TORCHVISION_FALLBACK = re.compile(r"requires torchvision \(not installed\); falling back to `\w+Pil`")
_REPORT_ROW = re.compile(r"^(?P<key>\S.*?)\s*\|\s*(?P<status>[A-Z_]+)\s*\|")


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _TORCHVISION_FALLBACK.search(record.getMessage())


class _DropEarlierAdapterReport(logging.Filter):
    """Drop a LOAD REPORT whose rows are all MISSING weights of adapters loaded earlier."""

    def __init__(self, earlier: Sequence[str]) -> None:
        super().__init__()
        names = "|".join(re.escape(n) for n in earlier)
        self._earlier = re.compile(rf"\.lora_[AB]\.({names})\.weight$") if earlier else None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._earlier is None or "LOAD REPORT" not in message:
            return True
        rows = [m for line in message.splitlines() if (m := _REPORT_ROW.match(line)) and m["status"] != "Status"]
        harmless = rows and all(r["status"] == "MISSING" and self._earlier.search(r["key"]) for r in rows)
        return not harmless


_installed = False


def install() -> None:
    """Add the import-time filter once (cheap: no dependency is imported)."""
    global _installed
    if not _installed:
        logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallback())
        _installed = True


@contextlib.contextmanager
def loading_adapters(earlier: Sequence[str]) -> Iterator[None]:
    """While one more LoRA is loaded beside `earlier` adapters, drop the two known-harmless messages."""
    logger = logging.getLogger("transformers.integrations.peft")
    report_filter = _DropEarlierAdapterReport(earlier)
    logger.addFilter(report_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute in the model")
            yield
    finally:
        logger.removeFilter(report_filter)
