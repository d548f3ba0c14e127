"""`python -m mf.train <stage>`: the generator's training stages and the ablation baselines.

Stages (each initialised from the EMA weights of the stage it follows):
  unimodal    stage 1: video-only and audio-only causal flow matching       (from scratch)
  joint       stage 2: joint teacher-forcing flow matching + ShortCut self-consistency (<- unimodal)
  mutual      stage 3: Mutual Forcing (mf.train.mutual_forcing)               (<- joint)
  all         unimodal -> joint -> mutual under one wall-clock budget, then exports the EMA
              weights to assets/model/ (save_pretrained, safetensors)
  baseline_b  the stage-2 model as is, sampled at few steps (no training: exports runs/joint/ema)
  baseline_c  ShortCut with teacher forcing (real history, no DMD)            (<- joint)
  baseline_e  Self-Forcing-style DMD over self-rollouts, frozen stage-2 teacher (<- joint)
  arm         the ablation arms A-F of mf.train.arms (`--arm C`, `--arm all`), each from --init with the
              same --steps and batch, exported float16 to <--arms-dir>/<arm>/ (runs in runs/arms/<arm>/)

Every stage writes runs/<stage>/: losses.csv, losses.png, losses.html, checkpoint.pt (resume; ema/ is
refreshed with it, so a long run can be evaluated while it goes on),
ema/ and model/ (save_pretrained) and summary.json, and stops on `--steps` or `--minutes`,
whichever comes first. `--resume` continues from checkpoint.pt on the same curve.

Under `accelerate launch --num_processes N -m mf.train <stage>`, each rank draws its own batches
from its share of the clips and gradients are averaged across ranks (all-reduce after backward);
the model is not wrapped in DDP because the objectives call several of its methods
(teacher forcing, cache writes, cached forwards), not just forward().
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mf.train.common import (
    EMA,
    GRAD_CLIP,
    Budget,
    LossLog,
    TrainingError,
    load_checkpoint,
    make_accelerator,
    make_optimizer,
    save_checkpoint,
    seed_everything,
    write_json,
)
from mf.train.latents import LatentDataError, LatentSet

TRAIN_STAGES = ("unimodal", "joint", "mutual", "baseline_c", "baseline_e")
ALL_STAGES = TRAIN_STAGES + ("all", "baseline_b", "arm")
INIT_FROM = {"arm": "joint", "unimodal": None, "joint": "unimodal", "mutual": "joint", "baseline_c": "joint",
             "baseline_e": "joint", "baseline_b": "joint"}
# Share of the `all` budget per stage (after the latent set is built): stage 3 is the most
# expensive per step and the one the product depends on.
ALL_SPLIT = {"unimodal": 0.15, "joint": 0.40, "mutual": 0.45}


@dataclass(frozen=True)
class DataRecipe:
    """Per-preset data and batch sizes (the model shape itself lives in mf.configs)."""

    clips: int
    clip_seconds: float
    size: int
    batch_size: int          # stages 1-2 (teacher forcing over `window_chunks` chunks)
    window_chunks: int
    mf_batch_size: int       # stage 3 and baselines C/E (one chunk + its history per row)
    max_history: int
    lr: float                # stages 1-2
    mf_lr: float             # stage 3 and baselines
    warmup: int


# CPU presets: lr is 10-20x the paper's 5e-5 because a CPU budget allows only hundreds of steps;
# with 5e-5 the tiny model would barely leave its initialisation (documented in the model card).
# Long horizon (issue 12): teacher-forcing windows are one chunk longer than the model's cache window
# (so the window limit of the attention mask is trained), stage-3 rollouts reach 3x the window, and
# the clips are long enough for max_history + 1 chunks (tiny: 25 chunks x 4 frames = 4.0 s).
RECIPES = {
    "micro": DataRecipe(clips=8, clip_seconds=1.0, size=64, batch_size=4, window_chunks=3, mf_batch_size=2,
                        max_history=6, lr=1e-3, mf_lr=1e-3, warmup=0),
    "tiny": DataRecipe(clips=384, clip_seconds=4.0, size=64, batch_size=8, window_chunks=9, mf_batch_size=8,
                       max_history=24, lr=8e-4, mf_lr=2e-4, warmup=20),
    "small": DataRecipe(clips=4096, clip_seconds=8.0, size=128, batch_size=32, window_chunks=17, mf_batch_size=16,
                        max_history=48, lr=2e-4, mf_lr=5e-5, warmup=500),
    "base": DataRecipe(clips=16384, clip_seconds=16.0, size=128, batch_size=32, window_chunks=33,
                       mf_batch_size=16, max_history=96, lr=1e-4, mf_lr=5e-5, warmup=1000),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mf.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=ALL_STAGES)
    p.add_argument("--preset", default="tiny", help="model + data preset (micro, tiny, small, base)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (for `all`: total)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (for `all`: per stage)")
    p.add_argument("--resume", action="store_true", help="continue from runs/<stage>/checkpoint.pt")
    p.add_argument("--runs", default="runs", help="root of the run folders")
    p.add_argument("--init", default=None, help="weights to start from (default runs/<previous stage>/ema)")
    p.add_argument("--export", default=None, help="save the final EMA weights here (default for mutual/all: "
                                                   "assets/model)")
    p.add_argument("--data", default="corpus", help="'corpus' (procedural) or a folder of paired mp4 clips")
    p.add_argument("--codecs", default="assets/codecs")
    p.add_argument("--latent-cache", default="runs/latents", help="where encoded latent sets are cached")
    p.add_argument("--clips", type=int, default=None)
    p.add_argument("--clip-seconds", type=float, default=None)
    p.add_argument("--synthetic", action="store_true", help="random structured latents (tests, smoke runs)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--max-history", type=int, default=None)
    p.add_argument("--loss-chunks", type=int, default=3, help="stage 3: loss chunks one history rollout serves")
    p.add_argument("--rollout-steps", type=int, default=4)
    p.add_argument("--dmd-cfg", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is visible")
    p.add_argument("--workers", type=int, default=1, help="processes that render the corpus for the latent set")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest on a shared 2-core box: more threads thrash)")
    p.add_argument("--dim", type=int, default=None, help="override the preset's width (stored in the checkpoint)")
    p.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    p.add_argument("--arm", default="all", help="stage `arm`: A-F (mf.train.arms) or 'all'")
    p.add_argument("--arms-dir", default="assets/arms", help="stage `arm`: where each arm is exported")
    p.add_argument("--split", default=None, help="for `all`: minutes per stage, e.g. unimodal=8,joint=20,mutual=25")
    return p


# ----------------------------------------------------------------------------- data + model

def load_latents(args, recipe: DataRecipe, model_cfg) -> LatentSet:
    from mf.train import latents as L

    clips = args.clips or recipe.clips
    seconds = args.clip_seconds or recipe.clip_seconds
    if args.synthetic:
        return L.random_latents(clips, int(round(seconds * 25)), channels=model_cfg.video_channels,
                                size=model_cfg.latent_size, n_mels=model_cfg.n_mels, attr_dim=model_cfg.attr_dim,
                                n_phonemes=model_cfg.n_phonemes, seed=args.seed)
    cache_dir = Path(args.latent_cache)
    if args.data == "corpus":
        return L.build_corpus_latents(codecs_dir=args.codecs, n_clips=clips, clip_seconds=seconds,
                                      size=recipe.size, cache_dir=cache_dir, log=_log, workers=args.workers,
                                      device="cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    return L.build_folder_latents(args.data, codecs_dir=args.codecs, clip_seconds=seconds, size=recipe.size,
                                  cache_dir=cache_dir, log=_log)


def new_model(preset: str, latents: LatentSet, **overrides):
    """A fresh MFTransformer whose latent shapes follow the data (the codecs decide C, h, M)."""
    from mf.model import MFTransformer

    c, h = latents.video.shape[2], latents.video.shape[3]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return MFTransformer.from_preset(preset, video_channels=c, latent_size=h, n_mels=latents.audio.shape[2],
                                     attr_dim=latents.attributes.shape[1], **overrides)


def load_model(path: Path):
    from mf.model import MFTransformer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TrainingError(f"no saved model at {path} (expected save_pretrained output with config.json); "
                            f"run the previous stage first or pass --init")
    return MFTransformer.from_pretrained(str(path))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- one stage

def run_stage(stage: str, args, latents: LatentSet, *, budget: Budget, export: Path | None = None) -> dict:
    from mf.train.flow_matching import unimodal_flow_matching_loss
    from mf.train.mutual_forcing import (
        BASELINE_C,
        BASELINE_E,
        MUTUAL,
        make_fake_score,
        make_frozen_teacher,
        mutual_forcing_losses,
    )
    from mf.train.shortcut import shortcut_model_loss

    recipe = RECIPES[args.preset]
    arm = None
    if stage == "arm":
        from mf.train.arms import get_arm
        arm = get_arm(args.arm)
    run_dir = Path(args.runs) / stage if arm is None else Path(args.runs) / "arms" / arm.name
    accelerator = make_accelerator(cpu=args.cpu or None)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    # every arm uses stage 3's seed: the same batches, in the same order, for each arm
    gen = seed_everything(args.seed * 1000 + rank + 17 * TRAIN_STAGES.index("mutual" if arm else stage))

    init = args.init or (str(Path(args.runs) / INIT_FROM[stage] / "ema") if INIT_FROM[stage] else None)
    if init and not args.init and args.synthetic and not (Path(init) / "config.json").is_file():
        init = None  # a synthetic smoke run (tests, `accelerate launch ... --synthetic`) may start from scratch
    model = load_model(Path(init)) if init else new_model(args.preset, latents, dim=args.dim, depth=args.depth)
    model.to(device).train()
    if world > 1:  # every rank starts from rank 0's weights (a scratch init is seeded per rank)
        from accelerate.utils import broadcast
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(broadcast(p.detach().clone()))
    fc = model.model_config.frames_per_chunk
    mf_stage = stage in ("mutual", "baseline_c", "baseline_e", "arm")
    lr = args.lr or (recipe.mf_lr if mf_stage else recipe.lr)
    opt = make_optimizer(model.parameters(), lr)
    ema = EMA(model)
    modules, optimizers, emas = {"model": model}, {"model": opt}, {"model": ema}
    fake = teacher = fake_opt = None
    if mf_stage:
        presets = {"mutual": MUTUAL, "baseline_c": BASELINE_C, "baseline_e": BASELINE_E}
        mf_config = arm.config() if arm else presets[stage]
        from dataclasses import replace
        max_history = args.max_history if args.max_history is not None else recipe.max_history
        mf_config = replace(mf_config, max_history=max_history,
                      rollout_steps=args.rollout_steps, dmd_cfg=args.dmd_cfg, loss_chunks=args.loss_chunks)
        if mf_config.w_dmd > 0:
            fake = make_fake_score(model).to(device).train()
            fake_opt = make_optimizer(fake.parameters(), lr)
            modules["fake"], optimizers["fake"] = fake, fake_opt
        if mf_config.teacher == "frozen" and mf_config.w_dmd > 0:
            teacher = make_frozen_teacher(model).to(device)
            modules["teacher"] = teacher
        batch_size, n_chunks = args.batch_size or recipe.mf_batch_size, mf_config.max_history + 1
    else:
        # teacher forcing sees at least the cache window plus the chunk it predicts
        batch_size, n_chunks = args.batch_size or recipe.batch_size, max(recipe.window_chunks,
                                                                         model.model_config.window_chunks + 1)

    step = 0
    if args.resume:
        state = load_checkpoint(run_dir, modules=modules, optimizers=optimizers, emas=emas, gen=gen)
        step = state["step"]
        _log(f"{stage}: resumed at step {step} from {run_dir / 'checkpoint.pt'}")
    log = LossLog(run_dir, resume_step=step if args.resume else None) if accelerator.is_main_process else None
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"{stage}: {n_params / 1e6:.2f} M params, batch {batch_size} x {n_chunks} chunks of {fc} frames, lr {lr}, "
         f"init {init or 'scratch'}, device {device}, {world} process(es)")

    def apply(loss, params, optimizer):
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if world > 1:  # data parallel without DDP wrapping: average gradients by hand
            for p in params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        norm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        for group in optimizer.param_groups:  # linear warmup, then constant (budget-bounded runs)
            group["lr"] = lr * min(1.0, (step + 1) / max(1, recipe.warmup))
        optimizer.step()
        return float(norm)

    params = [p for p in model.parameters() if p.requires_grad]
    fake_params = [p for p in fake.parameters()] if fake is not None else []
    t_start, wall_before = time.monotonic(), (float(log.rows[-1]["wall_s"]) if log and log.rows else 0.0)
    first_step = step  # > 0 when resumed
    while not budget.exhausted(step):
        batch = latents.sample(batch_size, n_chunks, fc, gen, rank=rank, world=world).to(device)
        if stage == "unimodal":
            loss, logs = unimodal_flow_matching_loss(model, batch, gen, frames_per_chunk=fc)
            fake_loss = None
        elif stage == "joint":
            loss, logs = shortcut_model_loss(model, batch, gen, frames_per_chunk=fc)
            fake_loss = None
        else:
            loss, fake_loss, logs = mutual_forcing_losses(model, batch, gen, fc=fc, mf_config=mf_config,
                                                          fake=fake, teacher=teacher)
        if not torch.isfinite(loss):
            raise TrainingError(f"{stage}: loss became {float(loss)} at step {step}; lower --lr")
        logs["loss"] = float(loss.detach())
        logs["grad_norm"] = apply(loss, params, opt)
        if fake_loss is not None:
            logs["fake_grad_norm"] = apply(fake_loss, fake_params, fake_opt)
        step += 1
        ema.update(model, step)
        if log is not None:
            log.append(step, wall_before + time.monotonic() - t_start, logs)
            if step % args.log_every == 0 or step == 1:
                shown = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float))
                _log(f"{stage} step {step} ({budget.elapsed():.0f} s) {shown}")
            if step % args.ckpt_every == 0:
                save_checkpoint(run_dir, step=step, modules=modules, optimizers=optimizers, emas=emas, gen=gen)
                log.plot(f"{stage} ({args.preset})")
                # the EMA weights so far, loadable while a long run goes on (written aside, then swapped in)
                ema.shadow.save_pretrained(str(run_dir / "ema.tmp"), safe_serialization=True)
                write_json(run_dir / "ema.tmp" / "training.json", {"stage": stage, "steps": step})
                _swap_dir(run_dir / "ema.tmp", run_dir / "ema")
    summary = {"stage": stage, "preset": args.preset, "steps": step, "wall_s": round(budget.elapsed(), 1),
               "batch_size": batch_size, "n_chunks": n_chunks, "lr": lr, "init": init, "params": n_params,
               "device": str(device), "processes": world,
               # every run of this stage so far (resumed runs add up; the loss log's wall_s column)
               "wall_s_total": round(wall_before + time.monotonic() - t_start, 1), "resumed_from_step": first_step}
    if world > 1:  # data parallel by hand: check that the ranks still hold the same weights
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()] +
                           [p.detach().double().square().sum() for p in model.parameters()]).to(device)
        gathered = accelerator.gather(sums[None]).reshape(world, -1)
        summary["rank_weight_max_diff"] = float((gathered - gathered[0]).abs().max())
    if arm is not None:
        summary.update(arm=arm.name, mf_config={k: v for k, v in vars(mf_config).items()})
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step=step, modules=modules, optimizers=optimizers, emas=emas, gen=gen)
        log.plot(f"{stage} ({args.preset})")
        tail = log.rows[-min(len(log.rows), 20):]
        summary["final_losses"] = {k: round(sum(float(r[k]) for r in tail if r.get(k) not in (None, "")) /
                                            max(1, sum(1 for r in tail if r.get(k) not in (None, ""))), 5)
                                   for k in (tail[0].keys() if tail else []) if k not in ("step", "wall_s")}
        ema.shadow.save_pretrained(str(run_dir / "ema"), safe_serialization=True)
        model.save_pretrained(str(run_dir / "model"), safe_serialization=True)
        if export is not None:
            export_weights(ema.shadow, Path(export), summary)
        if arm is not None:
            from mf.train.arms import export_arm
            export_arm(ema.shadow, Path(args.arms_dir) / arm.name, arm, summary)
            _log(f"arm {arm.name}: float16 EMA weights -> {Path(args.arms_dir) / arm.name}")
        write_json(run_dir / "summary.json", summary)
        _log(f"{stage}: done, {step} steps in {summary['wall_s']} s; EMA weights in {run_dir / 'ema'}")
    accelerator.wait_for_everyone()
    return summary


def _swap_dir(src: Path, dst: Path) -> None:
    """Replace folder dst by src (a reader sees the old or the new weights, never half of each)."""
    import shutil

    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def export_weights(model, out: Path, summary: dict) -> None:
    """Ship the EMA weights: save_pretrained (safetensors) plus the training summary beside them."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    write_json(out / "training.json", summary)
    _log(f"exported EMA weights to {out}")


def baseline_b(args) -> dict:
    """Baseline B needs no training: it IS the stage-2 EMA model, sampled at few steps."""
    src = Path(args.init or Path(args.runs) / "joint" / "ema")
    model = load_model(src)
    out = Path(args.runs) / "baseline_b" / "ema"
    model.save_pretrained(str(out), safe_serialization=True)
    summary = {"stage": "baseline_b", "source": str(src), "steps": 0}
    write_json(Path(args.runs) / "baseline_b" / "summary.json", summary)
    _log(f"baseline_b: stage-2 weights {src} -> {out}")
    return summary


def parse_split(text: str | None, total: float | None) -> dict[str, float | None]:
    if text:
        out = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name.strip() not in ALL_SPLIT:
                raise TrainingError(f"--split: unknown stage {name!r}; use {', '.join(ALL_SPLIT)}")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise TrainingError(f"--split: {part!r} is not stage=minutes") from None
        return {k: out.get(k) for k in ALL_SPLIT}
    if total is None:
        return {k: None for k in ALL_SPLIT}
    return {k: total * f for k, f in ALL_SPLIT.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.preset not in RECIPES:
            raise TrainingError(f"unknown preset {args.preset!r}; choose one of {', '.join(RECIPES)}")
        recipe = RECIPES[args.preset]
        if args.threads and args.threads > 0:
            torch.set_num_threads(args.threads)
        if args.stage == "baseline_b":
            baseline_b(args)
            return 0
        if args.stage == "arm" and not args.init:
            raise TrainingError("mf.train arm: pass --init <stage-2 weights> (every arm starts from the same ones)")
        if args.stage == "arm" and (args.steps is None or args.minutes is not None):
            raise TrainingError("mf.train arm: pass --steps N and no --minutes (arms get equal optimizer steps)")
        from mf.configs import get_preset
        overall = Budget(minutes=args.minutes)
        latents = load_latents(args, recipe, get_preset(args.preset))
        _log(f"latents: {len(latents)} clips x {latents.n_frames} frames ({latents.meta.get('source')})")
        default_export = Path("assets/model") if args.stage in ("mutual", "all") and not args.synthetic else None
        export = Path(args.export) if args.export else default_export
        if args.stage == "arm":
            from mf.train.arms import ORDER, get_arm, train_arms
            names = list(ORDER) if args.arm.lower() == "all" else [get_arm(args.arm).name]
            train_arms(args, latents, names, run_stage=run_stage, log=_log,
                       budget_for=lambda: Budget(steps=args.steps, minutes=args.minutes))
            return 0
        if args.stage != "all":
            run_stage(args.stage, args, latents, budget=Budget(steps=args.steps, minutes=args.minutes), export=export)
            return 0
        # `all`: the latent set's build time comes out of the total budget, the rest is split.
        remaining = None if args.minutes is None else max(0.5, args.minutes - overall.elapsed() / 60)
        minutes = parse_split(args.split, remaining)
        summaries = []
        for stage in ("unimodal", "joint", "mutual"):
            stage_args = argparse.Namespace(**{**vars(args), "init": None if stage != "unimodal" else args.init})
            # joint also exports, as an interim checkpoint, in case stage 3 is cut short
            budget = Budget(steps=args.steps, minutes=minutes[stage])
            summaries.append(run_stage(stage, stage_args, latents, budget=budget,
                                       export=export if stage in ("joint", "mutual") else None))
        write_json(Path(args.runs) / "all" / "summary.json",
                   {"stages": summaries, "wall_s": round(overall.elapsed(), 1), "latents": latents.meta})
        _log(f"all: done in {overall.elapsed() / 60:.1f} min")
        return 0
    except (TrainingError, LatentDataError, FileNotFoundError, ValueError) as exc:
        print(f"mf.train {args.stage}: {exc}", file=sys.stderr)
        return 2
