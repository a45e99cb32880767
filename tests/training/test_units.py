"""Unit tests of the loop's parts: sampler, captions, loss, optimizer state, checkpoints, PNGs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from lorastudio.config.train import DataSection
from lorastudio.data.dataset import BucketBatchSampler, slot_rng, vary_caption
from lorastudio.evaluation.generation import GenerationRequest, save_png
from lorastudio.training import checkpoint as ckpt
from lorastudio.training.loss import diffusion_loss, sample_noise, training_target
from lorastudio.training.optim import load_optimizer_state, save_state

BUCKETS = [(64, 64)] * 5 + [(64, 48)] * 3 + [(48, 64)] * 1


def test_bucket_sampler_is_deterministic_full_and_split_across_ranks():
    single = BucketBatchSampler(BUCKETS, batch_size=4, seed=7)
    batches = single.global_batches(0)
    assert batches == BucketBatchSampler(BUCKETS, batch_size=4, seed=7).global_batches(0)
    assert batches != single.global_batches(1)
    assert all(len(b) == 4 and len({BUCKETS[s] for s in b}) == 1 for b in batches)
    assert set().union(*map(set, batches)) == set(range(len(BUCKETS)))
    ranks = [BucketBatchSampler(BUCKETS, batch_size=2, seed=7, world_size=2, rank=r).local_batches(0) for r in range(2)]
    rejoined = [[s for _, s in r0 + r1] for r0, r1 in zip(*ranks, strict=True)]
    assert rejoined == batches
    assert [p for p, _ in ranks[1][0]] == [2, 3]


def test_caption_variation_keeps_leading_tokens_and_is_reproducible():
    data = DataSection(shuffle=True, tag_dropout=0.3, keep_tokens=2)
    caption = "trigger, a photo of soup, close-up, black background, steam, glossy, warm light"
    out = [vary_caption(caption, data, slot_rng(0, epoch, 3, "caption")) for epoch in range(6)]
    assert all(o.startswith("trigger, a photo of soup") for o in out)
    assert len(set(out)) > 1
    assert out[0] == vary_caption(caption, data, slot_rng(0, 0, 3, "caption"))
    dropped = DataSection(caption_dropout=0.999)
    assert vary_caption(caption, dropped, slot_rng(0, 0, 0, "caption")) == ""
    assert DataSection(flip=True).varies_captions is False


def test_loss_targets_and_min_snr():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(3, 4, 8, 8)
    noise, t = sample_noise(latents, [0, 1, 2], seed=1, step=5, num_timesteps=1000, noise_offset=0.0)
    again, t2 = sample_noise(latents[:2], [0, 1], seed=1, step=5, num_timesteps=1000, noise_offset=0.0)
    assert torch.equal(noise[:2], again) and torch.equal(t[:2], t2)
    assert torch.equal(training_target(sched, latents, noise, t, "epsilon"), noise)
    v = training_target(sched, latents, noise, t, "v_prediction")
    assert torch.allclose(v, sched.get_velocity(latents, noise, t))
    pred = torch.zeros_like(noise)
    ones = torch.ones(3)
    plain = diffusion_loss(pred, noise, scheduler=sched, timesteps=t, prediction_type="epsilon", min_snr_gamma=None, sample_weights=ones)
    assert torch.allclose(plain, (noise**2).mean())
    capped = diffusion_loss(pred, noise, scheduler=sched, timesteps=t, prediction_type="epsilon", min_snr_gamma=1e9, sample_weights=ones)
    assert torch.allclose(capped, plain)
    weighted = diffusion_loss(pred, noise, scheduler=sched, timesteps=t, prediction_type="epsilon", min_snr_gamma=None,
                              sample_weights=torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(weighted, (noise[0] ** 2).mean() / 3)


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    files = save_state(opt.state_dict(), tmp_path, "optimizer")
    assert sorted(f.name for f in files) == ["optimizer.json", "optimizer.safetensors"]
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    load_optimizer_state(opt2, tmp_path)
    x = torch.randn(2, 4)
    for m, o in ((model, opt), (twin, opt2)):
        m(x).sum().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight)


def test_atomic_dir_leaves_nothing_on_failure_and_prune_keeps_last(tmp_path):
    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ckpt.write_atomic_dir(tmp_path / "checkpoints" / "step_1", broken, info={}, needed_bytes=0)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    for step in (1, 2, 3):
        ckpt.write_atomic_dir(tmp_path / "checkpoints" / f"step_{step}", lambda d: (d / "w.bin").write_bytes(b"abc"), info={"step": step}, needed_bytes=0)
    assert ckpt.verify(tmp_path / "checkpoints" / "step_3") is None
    assert json.loads((tmp_path / "checkpoints" / "step_3" / "COMPLETE.json").read_text())["files"]["w.bin"]
    ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_2", "step_3"]
    with pytest.raises(ckpt.DiskFullError, match="not enough free disk space"):
        ckpt.write_atomic_dir(tmp_path / "checkpoints" / "step_4", lambda d: None, info={}, needed_bytes=1 << 62)


def test_save_png_never_overwrites_and_records_parameters(tmp_path):
    req = GenerationRequest("ohwx_kfood_style, soup", negative_prompt="blurry", seed=5, width=8, height=8, steps=3, cfg=4.5)
    image = Image.new("RGB", (8, 8), "red")
    first = save_png(image, tmp_path / "s" / "00", req, extra={"step": 10})
    second = save_png(image, tmp_path / "s" / "00", req)
    assert (first.name, second.name) == ("00.png", "00-1.png")
    meta = json.loads(Image.open(first).text["lorastudio"])
    assert meta["seed"] == 5 and meta["step"] == 10 and meta["negative_prompt"] == "blurry"


def test_second_interrupt_exits_at_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time\n"
        "from lorastudio.training.signals import StopRequest\n"
        "with StopRequest() as stop:\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"  # a save that never finishes: only the second signal ends it
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None  # the first interrupt only asks for a stop
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    err = proc.stderr.read()
    assert "saving a checkpoint" in err and "second interrupt: exiting now" in err
