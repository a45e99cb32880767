"""benchmarks/example_timer.py: clocks an unmodified script's "Steps" bar from outside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

FAKE_EXAMPLE = '''
import sys, time
from tqdm.auto import tqdm

assert sys.argv[1:] == ["--max_train_steps", "4"], sys.argv
for _ in tqdm(range(3), desc="Loading pipeline components"):
    time.sleep(0.01)
bar = tqdm(range(4), desc="Steps")
for step in range(4):
    time.sleep(0.6 if step == 0 else 0.02)
    bar.update(1)
    bar.set_postfix(step_loss=0.1)
print("done")
'''


def run_timer(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "example_timer.py"), str(script), *args],
                          capture_output=True, text=True, timeout=120)


def test_clocks_each_step_of_the_steps_bar_only(tmp_path):
    script = tmp_path / "train_fake.py"
    script.write_text(FAKE_EXAMPLE)
    proc = run_timer(script, "--max_train_steps", "4")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "done" in lines
    got = json.loads(lines[-1])
    # one time per optimizer step, none from the loading bar; each at least its sleep, and the first
    # (0.6 s) the slow one: a busy machine only adds time, and not 0.58 s to one 0.02 s step
    assert len(got["step_s"]) == 4
    assert got["step_s"][0] >= 0.6 and all(s >= 0.02 for s in got["step_s"][1:])
    assert got["step_s"][0] > max(got["step_s"][1:])
    assert got["peak_rss_gb"] > 0
    # the script itself was left as it was
    assert script.read_text() == FAKE_EXAMPLE


def test_missing_script_is_a_one_line_error(tmp_path):
    proc = run_timer(tmp_path / "nope.py")
    assert proc.returncode != 0
    assert proc.stderr.strip().endswith("nope.py: no such example script")


def test_example_dataset_is_an_imagefolder_of_the_benchmark_images(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import train_step
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(train_step, "ROOT", tmp_path)
    folder = train_step.ensure_example_dataset(32)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["file_name"] for r in rows] == ["i0.png", "i1.png", "i2.png", "i3.png"]
    assert all(r["text"] == train_step.CAPTION for r in rows)
    for r in rows:  # byte-identical to the images lorastudio trains on
        assert (folder / r["file_name"]).read_bytes() == (tmp_path / "ds32" / "images" / r["file_name"]).read_bytes()
