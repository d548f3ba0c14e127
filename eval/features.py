"""The project's own offline frame feature extractor for "corpus-FD (not standard FID)".

Why it exists: standard FID needs Inception weights that cannot ship with the project (and cannot be
downloaded here), but the corpus ablation (4-step vs 50-step, ShortCut vs DMD) still needs a
Fréchet metric. This small CNN is trained on frames of the procedural corpus (``mf.data``) to
predict what a viewer of a talking character would judge: the character's look (its attribute vector,
regression) and the mouth shape being shown (viseme class of the current phoneme). Its penultimate
layer (``FEATURE_DIM`` = 128, GELU) is the feature space. Numbers in this space are comparable only
with each other: it is labelled "corpus-FD (not standard FID)" everywhere it is reported.

Owns: the network (``CorpusFeatureNet``), loading it offline from ``assets/eval/`` (safetensors +
json config), ``CorpusExtractor`` (any-size uint8 frames -> float64 [N, 128]), and training:

    python -m eval.features train [--steps 3000] [--clips 1000] [--seconds 2] [--out assets/eval]

which renders held-in corpus clips (seeds below ``HELDOUT_SEED_START``), trains on CPU (20 min on
the shared, heavily loaded 2-core box, one torch thread), reports held-out accuracy on eval seeds, and writes
``corpus_features.safetensors`` and
``corpus_features.json``.

Frames are resized to 64x64 with area averaging (an anti-aliased resize: a 700 px real frame and a
64 px corpus frame reach the network the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "eval")
WEIGHTS_NAME = "corpus_features.safetensors"
CONFIG_NAME = "corpus_features.json"
INPUT_SIZE = 64
FEATURE_DIM = 128
LABEL = "corpus-FD (not standard FID)"


class FeaturesUnavailable(RuntimeError):
    """The corpus extractor's weights are not in assets/eval (train them with python -m eval.features train)."""


class CorpusFeatureNet(nn.Module):
    """4 stride-2 conv stages (64 -> 4 px, 16..128 channels), one more conv, flatten, a 128-d GELU
    layer (the features), two heads. Flatten rather than global pooling: where things are (the mouth
    under the nose) matters. Sized to train in minutes on 2 CPU cores (~6 MFLOP per frame)."""

    def __init__(self, n_attributes: int, n_visemes: int, width: int = 16, feature_dim: int = FEATURE_DIM):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            # GroupNorm, not BatchNorm: identical behaviour in training and eval, batch-size independent.
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
        layers += [nn.Conv2d(chans[-1], chans[-1], 3, padding=1), nn.GroupNorm(8, chans[-1]), nn.GELU()]
        self.trunk = nn.Sequential(*layers)
        spatial = INPUT_SIZE // 16
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * spatial * spatial, feature_dim), nn.GELU())
        self.attr_head = nn.Linear(feature_dim, n_attributes)
        self.viseme_head = nn.Linear(feature_dim, n_visemes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        return self.attr_head(f), self.viseme_head(f)


def preprocess(frames) -> torch.Tensor:
    """uint8 frames (array [N,H,W,3] or list of [H,W,3], any sizes) -> float [N,3,64,64] in [-1,1]."""
    import cv2

    out = np.empty((len(frames), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    for i, f in enumerate(frames):
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[-1] != 3:
            raise ValueError(f"frame {i}: expected uint8 [H, W, 3], got shape {f.shape}")
        if f.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            interp = cv2.INTER_AREA if min(f.shape[:2]) >= INPUT_SIZE else cv2.INTER_LINEAR
            f = cv2.resize(f, (INPUT_SIZE, INPUT_SIZE), interpolation=interp)
        out[i] = f
    return torch.from_numpy(out).permute(0, 3, 1, 2) / 127.5 - 1.0


class CorpusExtractor:
    """Callable: frames -> float64 features [N, FEATURE_DIM]; deterministic, CPU, batched."""

    label = LABEL

    def __init__(self, net: CorpusFeatureNet, config: dict, batch_size: int = 256):
        self.net = net.eval()
        self.config = config
        self.dim = int(config["feature_dim"])
        self.batch_size = batch_size

    def __call__(self, frames) -> np.ndarray:
        frames = list(frames) if not isinstance(frames, np.ndarray) else frames
        outs = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                outs.append(self.net.features(preprocess(frames[i:i + self.batch_size])).double().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim))


def load_extractor(path: str | os.PathLike = ASSET_DIR) -> CorpusExtractor:
    """Load the shipped extractor (strict: every tensor must match the config)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    weights, config_path = os.path.join(path, WEIGHTS_NAME), os.path.join(path, CONFIG_NAME)
    if not (os.path.isfile(weights) and os.path.isfile(config_path)):
        raise FeaturesUnavailable(f"corpus-FD extractor not found in {path} ({WEIGHTS_NAME} + {CONFIG_NAME}); "
                                  "train it with: python -m eval.features train")
    with open(config_path) as fh:
        config = json.load(fh)
    net = CorpusFeatureNet(config["n_attributes"], config["n_visemes"], config["width"], config["feature_dim"])
    net.load_state_dict(load_file(weights), strict=True)
    return CorpusExtractor(net, config)


# ----------------------------------------------------------------------------- training
def _render_frames(seeds, seconds: float, size: int, frames_per_clip: int, rng: np.random.Generator):
    """Frames, attribute targets and viseme labels from corpus clips of the given seeds."""
    from mf.constants import FPS
    from mf.data import CHARACTER_ATTR_DIM, render_clip
    from mf.data.phonemes import PHONE_VISEME, VISEME_NAMES

    viseme_index = {n: i for i, n in enumerate(VISEME_NAMES)}
    xs, attrs, vis = [], [], []
    for seed in seeds:
        clip = render_clip(int(seed), seconds, size=size)
        t = clip.frames.shape[0]
        labels = np.zeros(t, np.int64)
        for ph in clip.phones:
            a, b = int(round(ph.start * FPS)), int(round(ph.end * FPS))
            labels[max(0, a):min(t, b)] = viseme_index[PHONE_VISEME.get(ph.symbol, "rest")]
        take = rng.choice(t, size=min(frames_per_clip, t), replace=False)
        xs.append(clip.frames[take])
        attrs.append(np.repeat(clip.character.attributes()[None].astype(np.float32), len(take), 0))
        vis.append(labels[take])
    assert attrs[0].shape[1] == CHARACTER_ATTR_DIM
    return np.concatenate(xs), np.concatenate(attrs), np.concatenate(vis)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild photometric jitter + random shifts so features depend on content, not exact pixels."""
    n = x.shape[0]
    gain = 1.0 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    bias = 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = (x * gain + bias).clamp(-1, 1)
    dx, dy = (torch.randint(-3, 4, (2,), generator=g)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(out_dir: str = ASSET_DIR, *, steps: int = 3000, clips: int = 1000, seconds: float = 2.0,
          batch_size: int = 64, seed: int = 0, log=print) -> dict:
    """Train the extractor on corpus frames and save it; returns the saved config (with held-out scores)."""
    # One thread: on a shared 2-core machine two torch threads thrash (measured 1.5-3 s vs 0.22 s per step).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out_dir, steps=steps, clips=clips, seconds=seconds, batch_size=batch_size, seed=seed, log=log)
    finally:
        torch.set_num_threads(threads)


def _train(out_dir, *, steps, clips, seconds, batch_size, seed, log) -> dict:
    from safetensors.torch import save_file

    from mf.constants import HELDOUT_SEED_START
    from mf.data.phonemes import VISEME_NAMES

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    # Training seeds are far from 0 so they do not coincide with the generator's first training clips.
    train_seeds = 500_000 + np.arange(clips)
    eval_seeds = HELDOUT_SEED_START + 500_000 + np.arange(max(16, clips // 8))
    xtr, atr, vtr = _render_frames(train_seeds, seconds, 64, 40, rng)
    xev, aev, vev = _render_frames(eval_seeds, seconds, 64, 40, rng)
    log(f"rendered {len(xtr)} train / {len(xev)} held-out frames in {time.time() - t0:.0f} s")
    xtr_t, xev_t = preprocess(xtr), preprocess(xev)
    atr_t, vtr_t = torch.from_numpy(atr), torch.from_numpy(vtr)
    net = CorpusFeatureNet(atr.shape[1], len(VISEME_NAMES))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xtr_t), (batch_size,), generator=g)
        pa, pv = net(_augment(xtr_t[idx], g))
        loss_a = nn.functional.mse_loss(pa, atr_t[idx])
        loss_v = nn.functional.cross_entropy(pv, vtr_t[idx])
        loss = loss_a + loss_v
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"step {step}/{steps} attr_mse {loss_a.item():.4f} viseme_ce {loss_v.item():.3f} "
                f"({time.time() - t0:.0f} s)")
    net.eval()
    with torch.inference_mode():
        pa, pv = net(xev_t)
    attr_mse = float(nn.functional.mse_loss(pa, torch.from_numpy(aev)))
    attr_var = float(np.var(aev, axis=0).mean())
    viseme_acc = float((pv.argmax(1).numpy() == vev).mean())
    majority = float(np.bincount(vev, minlength=len(VISEME_NAMES)).max() / len(vev))
    config = {
        "label": LABEL, "input_size": INPUT_SIZE, "feature_dim": FEATURE_DIM, "width": 16,
        "n_attributes": int(atr.shape[1]), "n_visemes": len(VISEME_NAMES), "visemes": list(VISEME_NAMES),
        "train": {"steps": steps, "clips": clips, "seconds": seconds, "batch_size": batch_size, "seed": seed,
                  "train_seeds": [int(train_seeds[0]), int(train_seeds[-1])],
                  "train_seconds": round(time.time() - t0, 1)},
        "heldout": {"seeds": [int(eval_seeds[0]), int(eval_seeds[-1])], "frames": int(len(xev)),
                    "attr_mse": attr_mse, "attr_variance": attr_var,
                    "viseme_accuracy": viseme_acc, "viseme_majority_baseline": majority},
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(out_dir, WEIGHTS_NAME))
    with open(os.path.join(out_dir, CONFIG_NAME), "w") as fh:
        json.dump(config, fh, indent=2)
    log(f"held-out: attribute MSE {attr_mse:.4f} (variance {attr_var:.4f}), viseme accuracy {viseme_acc:.3f} "
        f"(majority {majority:.3f}); saved to {out_dir}")
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.features",
                                description="Train the offline corpus-FD feature extractor.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="render corpus frames, train, save to assets/eval")
    t.add_argument("--out", default=ASSET_DIR)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--clips", type=int, default=1000)
    t.add_argument("--seconds", type=float, default=2.0)
    t.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        train(args.out, steps=args.steps, clips=args.clips, seconds=args.seconds, seed=args.seed,
              log=lambda m: print(m, flush=True))
    except ImportError as exc:
        print(f"error: the corpus (mf.data.render_clip) is not importable: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- a generic, untrained feature
IMAGE_STATISTICS_LABEL = "image-statistics FD (not standard FID)"


class ImageStatisticsExtractor:
    """A hand-made, weight-free frame descriptor (82 dims) for sanity checks beside the learned one.

    On the 64x64 preprocessed frame: channel means on a 4x4 grid (layout, colour), channel stds on a
    2x2 grid (contrast), a 16-bin histogram of log gradient magnitude (sharpness, noise), log
    Laplacian energy at three scales (detail per octave), 8x8 blockiness (JPEG-like artefacts) and
    two colourfulness terms. Not a perceptual metric: a transparent second opinion.
    """

    label = IMAGE_STATISTICS_LABEL
    dim = 82

    def __call__(self, frames) -> np.ndarray:
        import cv2

        x = ((preprocess(frames).permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).astype(np.float32)
        out = np.empty((len(x), self.dim))
        for i, f in enumerate(x):
            gray = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            grid_mean = f.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3)).ravel() / 255.0
            grid_std = f.reshape(2, 32, 2, 32, 3).std(axis=(1, 3)).ravel() / 255.0
            gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
            mag = np.log1p(np.hypot(gx, gy))
            hist = np.histogram(mag, bins=16, range=(0.0, 8.0))[0] / mag.size
            lap = []
            g = gray
            for _ in range(3):
                lap.append(np.log1p(np.mean(cv2.Laplacian(g, cv2.CV_32F) ** 2)) / 10.0)
                g = cv2.pyrDown(g)
            dh = np.abs(np.diff(gray, axis=1))
            boundary = dh[:, 7::8].mean()
            interior = np.delete(dh, np.s_[7::8], axis=1).mean()
            block = np.log((boundary + 1.0) / (interior + 1.0))
            rg, yb = f[..., 0] - f[..., 1], 0.5 * (f[..., 0] + f[..., 1]) - f[..., 2]
            colour = [np.hypot(rg.std(), yb.std()) / 255.0, np.hypot(rg.mean(), yb.mean()) / 255.0]
            out[i] = np.concatenate([grid_mean, grid_std, hist, lap, [block], colour])
        return out


def image_statistics_extractor() -> ImageStatisticsExtractor:
    return ImageStatisticsExtractor()
