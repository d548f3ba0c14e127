"""Specification of the generator's training stages (micro preset, synthetic latents: fast).

- every objective is finite and decreases when it is optimised on a fixed batch;
- stop-gradients are real: teacher passes (multi-step ODE target, DMD real score, frozen teacher,
  history rollout) never carry gradient, and the fake-score model is untouched by the generator loss;
- the fake-score model and the EMA weights actually change;
- `--resume` continues the same loss curve;
- the stage entry point runs through accelerate in one process and writes its logs and weights.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # a shared 2-core machine: one thread is the fastest setting

from mf.configs import get_preset
from mf.model import MFTransformer
from mf.train import stages
from mf.train.common import EMA, LossLog, make_optimizer
from mf.train.dmd import dmd_generator_loss, fake_score_loss
from mf.train.flow_matching import Pair, conditions, flow_matching_loss, unimodal_flow_matching_loss
from mf.train.latents import random_latents
from mf.train.mutual_forcing import (
    BASELINE_E,
    MutualForcingConfig,
    build_history,
    make_fake_score,
    make_frozen_teacher,
    mutual_forcing_losses,
)
from mf.train.shortcut import shortcut_distillation_loss, shortcut_model_loss

CFG = get_preset("micro")
FC = CFG.frames_per_chunk
ONE_LOSS_CHUNK = MutualForcingConfig(loss_chunks=1)  # one loss chunk per rollout: the plain objective


def micro_model(seed: int = 0) -> MFTransformer:
    torch.manual_seed(seed)
    model = MFTransformer.from_preset("micro")
    # Zero-initialised output heads make every prediction 0 at step 0; perturb them so the
    # stop-gradient and DMD tests see a network whose modes actually differ.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)
        # a strong step-size embedding, so the few-step mode (d > 0) differs from the multi-step one
        for p in model.d_embed.parameters():
            p.normal_(0.0, 1.0)
    return model


def latent_set(n_clips=6, n_frames=12):
    return random_latents(n_clips, n_frames, channels=CFG.video_channels, size=CFG.latent_size,
                          n_mels=CFG.n_mels, attr_dim=CFG.attr_dim, n_phonemes=CFG.n_phonemes, seed=3)


def fixed_batch(batch_size=4, n_chunks=3):
    return latent_set().sample(batch_size, n_chunks, FC, torch.Generator().manual_seed(1))


def optimise(loss_fn, model, steps=12, lr=3e-3):
    """Optimise loss_fn(gen) with the same noise every step; return the loss history."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = loss_fn(torch.Generator().manual_seed(5))
        assert torch.isfinite(loss), "loss must be finite"
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


# ----------------------------------------------------------------------------- each loss decreases

@pytest.mark.parametrize("objective", ["unimodal", "flow_matching", "shortcut_model"])
def test_teacher_forcing_losses_are_finite_and_decrease(objective):
    model, batch = micro_model(), fixed_batch()
    fn = {"unimodal": unimodal_flow_matching_loss, "flow_matching": flow_matching_loss,
          "shortcut_model": shortcut_model_loss}[objective]
    history = optimise(lambda g: fn(model, batch, g, frames_per_chunk=FC)[0], model)
    assert history[-1] < 0.8 * history[0], history


def test_shortcut_distillation_loss_decreases_given_a_cache():
    model, batch = micro_model(), fixed_batch(n_chunks=2)
    x0 = Pair(batch.chunks(1, 2, FC).video, batch.chunks(1, 2, FC).audio)
    cond_full = conditions(batch)
    cond = cond_full.chunk_slice(1, 1, FC)

    def loss_fn(g):
        with torch.no_grad():
            cache = model.new_cache(cond_full)
            model.write_cache(batch.chunks(0, 1, FC).video, batch.chunks(0, 1, FC).audio,
                              cond_full.chunk_slice(0, 1, FC), cache)
        return shortcut_distillation_loss(model, x0, cond, cache, g, frames_per_chunk=FC)[0]

    history = optimise(loss_fn, model)
    assert history[-1] < 0.8 * history[0], history


def test_mutual_forcing_generator_and_fake_losses_decrease():
    model, batch = micro_model(), fixed_batch(n_chunks=3)
    fake = make_fake_score(model)
    opt, fake_opt = make_optimizer(model.parameters(), 3e-3), make_optimizer(fake.parameters(), 3e-3)
    gen_hist, fake_hist = [], []
    for i in range(16):
        loss, fake_loss, logs = mutual_forcing_losses(model, batch, torch.Generator().manual_seed(5), fc=FC,
                                                      mf_config=ONE_LOSS_CHUNK, fake=fake, history=2)
        assert torch.isfinite(loss) and torch.isfinite(fake_loss)
        assert {"fm", "shortcut", "dmd", "fake_score"} <= set(logs)
        if i < 8:  # phase 1: the generator learns (its samples move, so the fake score chases them)
            opt.zero_grad()
            loss.backward()
            opt.step()
            gen_hist.append(float(loss.detach()))
        else:      # phase 2: generator fixed, the fake score must fit its samples
            fake_hist.append(float(fake_loss))
        fake_opt.zero_grad()
        fake_loss.backward()
        fake_opt.step()
    assert gen_hist[-1] < 0.9 * gen_hist[0], gen_hist
    assert fake_hist[-1] < 0.9 * fake_hist[0], fake_hist


def test_dmd_gradient_moves_the_sample_from_the_fake_towards_the_real_distribution():
    # Scores as exact denoisers of two point masses: real data sits at +1, the fake model
    # believes the generator's samples sit at -1. The DMD step must push samples up.
    def denoiser_to(value):
        def score(xt, t):
            return xt.map(lambda x: (x - value) / t.view(-1, *([1] * (x.dim() - 1))).clamp_min(1e-3))
        return score

    x = Pair(torch.zeros(2, FC, 4, 8, 8, requires_grad=True), torch.zeros(2, FC * 4, 16, requires_grad=True))
    loss, logs = dmd_generator_loss(x, denoiser_to(1.0), denoiser_to(-1.0), torch.Generator().manual_seed(0),
                                    frames_per_chunk=FC)
    loss.backward()
    assert float(loss) > 0
    assert (x.video.grad < 0).all() and (x.audio.grad < 0).all()  # descent increases x, towards +1


# ----------------------------------------------------------------------------- stop-gradients

def test_shortcut_teacher_passes_carry_no_gradient():
    model, batch = micro_model(), fixed_batch(n_chunks=1)
    calls = []
    handle = model.register_forward_hook(lambda m, inp, out: calls.append((float(inp[3].max()), out[0].requires_grad)))
    cond = conditions(batch)
    with torch.no_grad():
        cache = model.new_cache(cond)
    x0 = Pair(batch.video, batch.audio)
    loss, logs = shortcut_distillation_loss(model, x0, cond, cache, torch.Generator().manual_seed(0),
                                            frames_per_chunk=FC)
    handle.remove()
    teacher = [rg for d, rg in calls if d == 0.0]
    student = [rg for d, rg in calls if d > 0.0]
    assert len(teacher) == logs["shortcut_substeps"] >= 1 and not any(teacher), calls
    assert student == [True], calls


def test_history_rollout_and_cache_carry_no_gradient():
    model, batch = micro_model(), fixed_batch(n_chunks=3)
    cond = conditions(batch)
    cache, _, chunks = build_history(model, batch, cond, 2, torch.Generator().manual_seed(0), fc=FC,
                                     mode="generated", steps=4)
    assert len(chunks) == 2 and cache.n_cached_chunks == 2
    assert not any(x.video.requires_grad or x.audio.requires_grad for x in chunks)
    assert not any(k.requires_grad or v.requires_grad for _, kvs in cache.chunks for k, v in kvs)
    # the rollout is the sampler's output, not the real data
    assert not torch.allclose(chunks[0].video, batch.chunks(0, 1, FC).video)


def test_generator_loss_reaches_neither_fake_score_nor_frozen_teacher():
    model, batch = micro_model(), fixed_batch(n_chunks=3)
    fake, teacher = make_fake_score(model), make_frozen_teacher(model)
    teacher_before = [p.clone() for p in teacher.parameters()]
    loss, fake_loss, _ = mutual_forcing_losses(model, batch, torch.Generator().manual_seed(0), fc=FC,
                                               mf_config=BASELINE_E, fake=fake, teacher=teacher, history=1)
    loss.backward()
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    fake_loss.backward()
    assert all(p.grad is None for p in model.parameters()), "fake-score loss must not reach the generator"
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))


def test_fake_score_model_is_updated():
    model, batch = micro_model(), fixed_batch(n_chunks=2)
    fake = make_fake_score(model)
    before = [p.detach().clone() for p in fake.parameters()]
    opt = make_optimizer(fake.parameters(), 1e-3)
    _, fake_loss, _ = mutual_forcing_losses(model, batch, torch.Generator().manual_seed(0), fc=FC, fake=fake)
    opt.zero_grad()
    fake_loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, fake.parameters()))
    assert changed > len(before) // 2


def test_fake_score_loss_is_flow_matching_on_detached_samples():
    x = Pair(torch.randn(2, FC, 4, 8, 8, requires_grad=True), torch.randn(2, FC * 4, 16, requires_grad=True))
    loss, _ = fake_score_loss(lambda xt, t: xt.map(lambda a: a * 0), x, torch.Generator().manual_seed(0),
                              frames_per_chunk=FC)
    assert float(loss) > 0 and not loss.requires_grad  # a constant score model: nothing trainable, no path to x


# ----------------------------------------------------------------------------- EMA, resume, accelerate

def test_ema_moves_towards_the_live_weights_at_rate_one_minus_decay():
    model = micro_model()
    ema = EMA(model, decay=0.99)
    before = [p.clone() for p in ema.shadow.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for b, s in zip(before, ema.shadow.parameters()):
        assert torch.allclose(s, b + 0.01, atol=1e-6)
    assert not any(p.requires_grad for p in ema.shadow.parameters())


def _read_losses(run_dir: Path) -> list[dict]:
    with open(run_dir / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def micro_init(tmp_path):
    micro_model().save_pretrained(str(tmp_path / "init"))
    return tmp_path / "init"


def _stage_args(stage, runs, init, *extra):
    return [stage, "--preset", "micro", "--synthetic", "--runs", str(runs), "--init", str(init),
            "--log-every", "100", "--ckpt-every", "2", *extra]


@pytest.mark.parametrize("stage", ["joint", pytest.param("mutual", marks=pytest.mark.slow)])
def test_resume_continues_the_same_loss_curve(tmp_path, micro_init, stage):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert stages.main(_stage_args(stage, straight, micro_init, "--steps", "4", "--export", str(tmp_path / "x"))) == 0
    assert stages.main(_stage_args(stage, resumed, micro_init, "--steps", "2", "--export", str(tmp_path / "y"))) == 0
    assert stages.main(_stage_args(stage, resumed, micro_init, "--steps", "4", "--resume",
                                   "--export", str(tmp_path / "y"))) == 0
    a, b = _read_losses(straight / stage), _read_losses(resumed / stage)
    assert [r["step"] for r in b] == ["1", "2", "3", "4"]
    for ra, rb in zip(a, b):
        assert abs(float(ra["loss"]) - float(rb["loss"])) <= 1e-5 * max(1.0, abs(float(ra["loss"]))), (ra, rb)
    summary = json.loads((resumed / stage / "summary.json").read_text())
    # the resumed run's own time, and every run's together (what a model card must report)
    assert summary["resumed_from_step"] == 2
    assert summary["wall_s_total"] == pytest.approx(float(b[-1]["wall_s"]), abs=0.2)
    assert summary["wall_s_total"] >= summary["wall_s"]


def test_stage_runs_through_accelerate_and_writes_logs_plots_and_weights(tmp_path, micro_init):
    assert stages.main(_stage_args("joint", tmp_path, micro_init, "--steps", "3")) == 0
    run = tmp_path / "joint"
    for name in ("losses.csv", "losses.png", "losses.html", "checkpoint.pt", "summary.json",
                 "ema/config.json", "model/config.json"):
        assert (run / name).is_file(), name
    assert list((run / "ema").glob("*.safetensors"))
    from accelerate.state import PartialState
    assert PartialState().num_processes == 1
    reloaded = MFTransformer.from_pretrained(str(run / "ema"))
    assert reloaded.model_config.frames_per_chunk == FC


def test_wall_clock_budget_stops_a_stage(tmp_path, micro_init):
    # no --steps: only the wall-clock budget (0.6 s) can end this stage
    assert stages.main(_stage_args("joint", tmp_path, micro_init, "--minutes", "0.01")) == 0
    summary = json.loads((tmp_path / "joint" / "summary.json").read_text())
    assert summary["steps"] == len(_read_losses(tmp_path / "joint")) < 200
    assert summary["wall_s"] < 0.6 + 5.0  # budget + at most one (slow, shared-CPU) step


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    assert stages.main(["joint", "--preset", "micro", "--synthetic", "--runs", str(tmp_path),
                        "--init", str(tmp_path / "missing")]) == 2
    assert "no saved model at" in capsys.readouterr().err
    assert stages.main(["joint", "--preset", "micro", "--runs", str(tmp_path), "--resume", "--synthetic",
                        "--init", str(tmp_path / "missing")]) == 2
    assert stages.main(["joint", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_loss_log_truncates_to_the_checkpoint_on_resume(tmp_path):
    log = LossLog(tmp_path)
    for s in range(1, 6):
        log.append(s, float(s), {"loss": 1.0 / s})
    again = LossLog(tmp_path, resume_step=3)
    assert [r["step"] for r in again.rows] == ["1", "2", "3"]
    assert len(_read_losses(tmp_path)) == 3


@pytest.mark.slow
def test_accelerate_launch_single_process(tmp_path, micro_init):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "-m", "mf.train", "joint", "--preset", "micro", "--synthetic", "--steps", "2", "--runs", str(tmp_path),
           "--init", str(micro_init)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(_read_losses(tmp_path / "joint")) == 2


def test_corpus_latents_are_aligned_and_cached(tmp_path):
    from mf.codecs import AudioCodec, VideoCodec
    from mf.train.latents import build_corpus_latents

    codecs = (VideoCodec.from_preset("micro"), AudioCodec.from_preset("micro"))
    latents = build_corpus_latents(codecs=codecs, n_clips=2, clip_seconds=0.4, cache_dir=tmp_path, log=None)
    n, t = len(latents), latents.n_frames
    assert (n, t) == (2, 10)
    assert latents.audio.shape[:2] == (2, t * 4) and latents.phone_ids.shape == (2, t * 4)
    assert torch.equal(latents.ref_latent, latents.video[:, 0])  # identity = the clip's first frame
    assert list(tmp_path.glob("corpus-*.pt")), "the encoded set is cached for the next stage"
    again = build_corpus_latents(codecs=codecs, n_clips=2, clip_seconds=0.4, cache_dir=tmp_path, log=None)
    assert torch.equal(again.video, latents.video)
    window = latents.sample(3, 2, 2, torch.Generator().manual_seed(0))
    assert window.video.shape[:2] == (3, 4) and window.audio.shape[1] == 16 and window.phone_ids.shape[1] == 16


def test_training_seeds_never_reach_the_heldout_range(tmp_path):
    from mf.constants import HELDOUT_SEED_START
    from mf.train.latents import LatentDataError, build_corpus_latents

    with pytest.raises(LatentDataError, match="HELDOUT_SEED_START"):
        build_corpus_latents(codecs=(None, None), n_clips=2, first_seed=HELDOUT_SEED_START - 1, cache_dir=tmp_path)


def test_ablation_training_table_and_card_sections_are_rewritten(tmp_path):
    from eval.ablation import training_table, update_card

    (tmp_path / "joint").mkdir()
    (tmp_path / "joint" / "summary.json").write_text(json.dumps(
        {"steps": 7, "wall_s": 120.0, "batch_size": 8, "n_chunks": 4, "lr": 8e-4, "final_losses": {"loss": 0.5}}))
    table = training_table(tmp_path)
    assert "| joint | 7 | 2.0 | 8 x 4 |" in table
    card = tmp_path / "CARD.md"
    card.write_text("intro\n<!-- training:begin -->\nold\n<!-- training:end -->\noutro\n")
    update_card(card, "training", table)
    text = card.read_text()
    assert "old" not in text and "| joint | 7 |" in text and text.startswith("intro") and text.endswith("outro\n")


def test_contact_sheet_shows_real_and_generated_rows(tmp_path):
    from PIL import Image

    from eval import sheet

    assert sheet.parse_system("MF 4=assets/model@4") == ("MF 4", Path("assets/model"), 4)
    with pytest.raises(SystemExit, match="NAME=WEIGHTS_DIR@STEPS"):
        sheet.parse_system("assets/model")
    assert sheet.main(["--seeds", "0", "--seconds", "0.4", "--every", "5", "--out", str(tmp_path),
                       "--system", "MF 4=assets/model@4", "--system", f"gone=@{tmp_path}/missing@4"]) == 0
    frames = Image.open(tmp_path / "frames.png")
    assert frames.size == (80 + 66 * 2, 66 * 2)  # 10 frames every 5th -> 2 columns; real + MF rows
    assert Image.open(tmp_path / "spectrograms.png").size == (480, 90 * 2)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_keep_identical_weights(tmp_path):
    """Two CPU ranks (torchrun through `accelerate launch --multi_gpu`; in accelerate 1.x `--cpu
    --num_processes 2` alone starts ONE process), stage 3 from scratch on synthetic latents: the ranks
    start from rank 0's weights and, with gradients averaged, hold the same weights after every step."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "29517", "-m", "mf.train", "mutual", "--preset", "micro", "--synthetic",
           "--steps", "2", "--runs", str(tmp_path), "--cpu", "--max-history", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "mutual" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert summary["rank_weight_max_diff"] == 0.0
