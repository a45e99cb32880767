"""`lorastudio doctor`, the known-incompatible checks every command runs, and the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from lorastudio import environment
from lorastudio.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_reports_versions_devices_extras_and_no_problem_here():
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["packages"]["transformers"] and facts["packages"]["peft"] and facts["packages"]["diffusers"]
    assert facts["torch"]["version"].startswith(facts["packages"]["torch"].split("+")[0])
    assert set(facts["extras"]) == {"onnxruntime", "bitsandbytes", "tensorboard", "prodigyopt"}
    assert facts["cache"]["free_gb"] >= 0 and facts["problems"] == []
    text = CliRunner().invoke(cli, ["doctor"])
    assert "no known-incompatible combination" in text.output and "model cache" in text.output


def _fake_site(root: Path, transformers: str, min_peft: str) -> Path:
    """A site dir whose `transformers` is a stub at another version (imports fail loudly)."""
    site = root / "site"
    package = site / "transformers"
    (package / "integrations").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the stub transformers must not be imported')\n")
    (package / "integrations" / "peft.py").write_text(f'MIN_PEFT_VERSION = "{min_peft}"\n')
    info = site / f"transformers-{transformers}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformers\nVersion: {transformers}\n")
    return site


def test_a_known_bad_pair_stops_every_command_at_start_with_one_line(tmp_path):
    # transformers 5.24 beside peft 0.21 is what a fresh unlocked install resolved to.
    site = _fake_site(tmp_path, "5.24.0", "0.22.0")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    lora = tmp_path / "x.safetensors"
    lora.write_bytes(b"")
    for args in (["inspect", str(lora)], ["generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "lorastudio", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        lines = [line for line in done.stderr.strip().splitlines() if line]
        assert done.returncode == 1, done.stderr
        assert len(lines) == 1 and "Traceback" not in done.stderr
        assert "transformers 5.24.0 needs peft >= 0.22.0" in lines[0] and 'pip install "transformers<5.24.0"' in lines[0]
    doctor = subprocess.run([sys.executable, "-m", "lorastudio", "doctor"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert doctor.returncode == 1 and "PROBLEM: transformers 5.24.0 needs peft >= 0.22.0" in doctor.stdout
    assert "outside the tested range" in doctor.stdout  # pyproject's cap names the same version


def test_torchvision_pairing_and_version_ranges():
    assert environment._torchvision_problem("2.13.0+cpu", "0.28.0") is None
    problem = environment._torchvision_problem("2.13.0", "0.29.1")
    assert problem and "pip uninstall -y torchvision" in problem.message and "0.28" in problem.message
    assert environment._satisfies("5.23.0", ">=5.0,<5.24")
    assert not environment._satisfies("5.24.0", ">=5.0,<5.24")
    assert environment._satisfies("2.13.0+cpu", ">=2.1")


def test_the_committed_lock_pins_everything_and_holds_the_known_good_pair():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    pins = lock.read_lock(ROOT / "requirements.lock")
    assert {"torch", "diffusers", "transformers", "peft", "pip", "setuptools", "pytest"} <= set(pins)
    assert all(v and v[0].isdigit() and "+" not in v for v in pins.values())
    assert environment._satisfies(pins["transformers"], ">=5.0,<5.24")
