"""Training plumbing shared by every generator stage: optimiser, EMA, wall-clock budget,
checkpoint/resume, CSV loss log with PNG + HTML plots, and the accelerate wrapper.

Nothing here knows about flow matching or the model's internals; the stage loops in
`mf.train.stages` compose these pieces. Design points:

- Resume must continue the *same* curve. A checkpoint therefore holds, besides the weights and
  optimiser moments, every random state the loop consumes: the loop's own `torch.Generator`
  (batch sampling, noise, t and d draws), the global torch / numpy / python RNGs (dropout inside
  the model), the step counter, and the CSV log is truncated back to the checkpoint's step.
- The wall-clock budget (`--minutes`) is checked between steps, so a stage always ends on time on
  a shared CPU and leaves a final checkpoint behind.
- Accelerate: the same loop runs as one CPU process (default) or data-parallel under
  `accelerate launch`; only the main process writes logs and checkpoints.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

# Reviews of the paper report these for the Mutual Forcing stage; the earlier stages reuse them.
ADAMW_BETAS = (0.9, 0.95)
ADAMW_WEIGHT_DECAY = 0.02
GRAD_CLIP = 0.5
EMA_DECAY = 0.99


class TrainingError(Exception):
    """A user-facing training problem (missing input checkpoint, bad flag, ...): printed, no trace."""


def make_optimizer(params, lr: float) -> torch.optim.AdamW:
    """AdamW with the paper's betas and weight decay; lr is per stage (see mf.train.stages)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise TrainingError("make_optimizer: no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, betas=ADAMW_BETAS, weight_decay=ADAMW_WEIGHT_DECAY)


class EMA:
    """Exponential moving average of a module's parameters (buffers are copied verbatim).

    The shadow is a frozen deep copy, so it can be sampled from or saved with save_pretrained
    exactly like the live model.
    """

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY):
        if not 0.0 <= decay < 1.0:
            raise TrainingError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int | None) -> float:
        """The decay used at optimiser step `step` (1-based): warmed up as min(decay, (1+s)/(10+s)),
        so that a stage of a few dozen steps is not dominated by its initial weights."""
        if step is None:
            return self.decay
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        decay = self.decay_at(step)
        live = dict(model.named_parameters())
        for name, p in self.shadow.named_parameters():
            p.lerp_(live[name].detach().to(p.dtype), 1.0 - decay)
        live_buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(live_buffers[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow.load_state_dict(state["shadow"])


@dataclass
class Budget:
    """Stop after `steps` optimiser steps or `minutes` of wall time, whichever comes first."""

    steps: int | None = None
    minutes: float | None = None
    started: float = field(default_factory=time.monotonic)

    def exhausted(self, step: int) -> bool:
        if self.steps is not None and step >= self.steps:
            return True
        if self.minutes is not None and (time.monotonic() - self.started) >= self.minutes * 60.0:
            return True
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs and return the loop's own generator (all sampling goes through it)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def rng_state(gen: torch.Generator) -> dict:
    return {
        "loop": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["loop"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(run_dir: Path, *, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], emas: dict[str, EMA],
                    gen: torch.Generator, extra: dict | None = None) -> Path:
    """Atomically write everything needed to resume to run_dir/checkpoint.pt."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "emas": {k: e.state_dict() for k, e in emas.items()},
        "rng": rng_state(gen),
        "extra": extra or {},
    }
    path = run_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path, *, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], emas: dict[str, EMA],
                    gen: torch.Generator) -> dict:
    """Restore a checkpoint written by save_checkpoint; returns {'step', 'extra'}."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated / foreign file: say which one
        raise TrainingError(f"--resume: cannot read checkpoint {path}: {exc}") from None
    for name, module in modules.items():
        module.load_state_dict(payload["modules"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(payload["optimizers"][name])
    for name, ema in emas.items():
        ema.load_state_dict(payload["emas"][name])
    set_rng_state(gen, payload["rng"])
    return {"step": int(payload["step"]), "extra": payload.get("extra", {})}


# ----------------------------------------------------------------------------- loss log

class LossLog:
    """CSV of per-step losses (one row per optimiser step) plus PNG and HTML plots.

    On resume the rows after the checkpoint's step are dropped, so a resumed run appends to
    exactly the curve it left.
    """

    def __init__(self, run_dir: Path, *, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "losses.csv"
        self.rows: list[dict] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._rewrite()

    def _columns(self) -> list[str]:
        cols = ["step", "wall_s"]
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def _rewrite(self) -> None:
        cols = self._columns()
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in self.rows:
                w.writerow(r)

    def append(self, step: int, wall_s: float, losses: dict[str, float]) -> None:
        row = {"step": step, "wall_s": f"{wall_s:.2f}"}
        row.update({k: f"{float(v):.6g}" for k, v in losses.items()})
        new_cols = [k for k in row if k not in self._columns()]
        self.rows.append(row)
        if new_cols or not self.csv_path.is_file():
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns()).writerow(row)

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        out: dict[str, tuple[list[int], list[float]]] = {}
        for r in self.rows:
            for k, v in r.items():
                if k in ("step", "wall_s") or v in (None, ""):
                    continue
                xs, ys = out.setdefault(k, ([], []))
                xs.append(int(r["step"]))
                ys.append(float(v))
        return out

    def plot(self, title: str) -> None:
        series = self.series()
        write_loss_png(series, self.run_dir / "losses.png", title)
        write_loss_html(series, self.run_dir / "losses.html", title)


def _smooth(ys: list[float], window: int) -> list[float]:
    if window <= 1 or len(ys) < window:
        return ys
    c = np.cumsum(np.insert(np.asarray(ys, dtype=np.float64), 0, 0.0))
    head = [float(np.mean(ys[: i + 1])) for i in range(window - 1)]
    return head + list((c[window:] - c[:-window]) / window)


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def write_loss_png(series: dict, path: Path, title: str, size=(900, 500)) -> None:
    """Log-scale loss curves (moving average) drawn with PIL: no matplotlib in the environment."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 170, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), title, fill="black")
    curves = {}
    for k, (xs, ys) in series.items():
        pos = [(x, y) for x, y in zip(xs, _smooth(ys, max(1, len(ys) // 50))) if y > 0 and math.isfinite(y)]
        if pos:
            curves[k] = pos
    if not curves:
        img.save(path)
        return
    all_x = [x for c in curves.values() for x, _ in c]
    all_y = [math.log10(y) for c in curves.values() for _, y in c]
    x0, x1 = min(all_x), max(max(all_x), min(all_x) + 1)
    y0, y1 = min(all_y), max(max(all_y), min(all_y) + 1e-3)
    sx = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    sy = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        draw.text((4, sy(yv) - 6), f"{10 ** yv:.3g}", fill="black")
        xv = x0 + frac * (x1 - x0)
        draw.text((sx(xv) - 10, h - bottom + 6), f"{int(xv)}", fill="black")
    draw.text((w // 2 - 20, h - 16), "step", fill="black")
    for i, (k, pts) in enumerate(sorted(curves.items())):
        color = _PALETTE[i % len(_PALETTE)]
        xy = [(sx(x), sy(math.log10(y))) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=color)
        draw.text((w - right + 8, top + 14 * i), k, fill=color)
    img.save(path)


def write_loss_html(series: dict, path: Path, title: str) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (xs, ys) in sorted(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=k))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", yaxis_type="log")
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)


# ----------------------------------------------------------------------------- accelerate

def make_accelerator(*, cpu: bool | None = None, seed: int = 0):
    """One Accelerator for the whole stage. CPU unless a GPU is visible (or cpu=True forces it).

    Under `accelerate launch` with several processes this is plain data parallelism: each rank
    draws its own batches (its loop generator is offset by the rank) and gradients are averaged.
    """
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    return Accelerator(cpu=cpu, mixed_precision="no")


def write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
