"""SyncNet (Chung & Zisserman 2016, the "syncnet_v2" release) in torch, for LSE-D / LSE-C / offset.

Owns: ``SyncNet`` (the two-tower network, parameter names and shapes identical to the public
``syncnet_v2.model`` state dict so it loads strictly), ``load_syncnet`` (path or $SYNCNET_WEIGHTS,
strict loading with clear errors), ``mfcc_like_syncnet`` (13 MFCCs per 10 ms, the front end that
network was trained with) and ``syncnet_scores`` (the field's LSE-D / LSE-C / offset protocol).

No weights ship with the project. ``syncnet_v2.model`` comes by path, through the ``SYNCNET_WEIGHTS``
environment variable, from the project cache, or is downloaded once (size- and sha256-checked) by
``eval.weights`` when the machine is online and downloads are not turned off; otherwise a
``SyncNetWeightsError`` names the ways to supply it.

Protocol (as the reference evaluation does it), at 25 fps and 16 kHz:
* video: square face crops, 224 x 224, BGR channel order, raw 0-255 values, stacked 5 frames at a
  time -> lip tower -> 1024-d embedding per start frame;
* audio: MFCC (13 coefficients, 25 ms rectangular windows every 10 ms, 26 mel filters, 512-point FFT,
  pre-emphasis 0.97, lifter 22, c0 replaced by log frame energy, on int16-scaled samples); 20 MFCC
  frames (= 5 video frames) starting at 4 x the video frame -> audio tower -> 1024-d embedding;
* for every video frame i and shift s in [-vshift, vshift] the Euclidean distance between video
  embedding i and audio embedding i + s (zero embeddings past the ends); distances averaged over i
  give a curve over s. LSE-D = its minimum, LSE-C = median - minimum, offset = -argmin shift
  (positive = audio leads video, as everywhere in this project).
Face crops come from ``eval.mouth`` (Haar face, or the motion fallback for cartoon characters);
syncnet_python's own pipeline uses an S3FD face detector, so absolute numbers can differ slightly
from published tables; report them as "SyncNet (Haar crops)".
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from eval.mouth import MouthTrack, face_crops, locate_mouth
from eval.weights import WEIGHTS, WeightsUnavailable, ensure_weights, project_cache_dir
from mf.media import resample_audio

SYNCNET_ENV = WEIGHTS["syncnet"].env
SYNCNET_FPS = 25
SYNCNET_RATE = 16000
VIDEO_WINDOW = 5  # frames per lip-tower input
MFCC_WINDOW = 20  # MFCC frames per audio-tower input (4 per video frame)
CROP_SIDE = 224


class SyncNetWeightsError(RuntimeError):
    """The SyncNet weights are missing or do not match the network; the message says what to do."""


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Audio tower (MFCC [B, 1, 13, 20]) and lip tower (frames [B, 3, 5, 224, 224]) -> 1024-d each.

    Layer order inside each ``nn.Sequential`` fixes the state-dict keys (``netcnnaud.0.weight`` ...),
    which must match the released weights exactly, hence the explicit pooling layers kept in place.
    """

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def resolve_weights(weights_path: str | os.PathLike | None, *, allow_download: bool | None = None) -> str:
    """The weights file to use: the argument, $SYNCNET_WEIGHTS, the cache, or a verified download.

    ``allow_download``: None = when the environment allows (see ``eval.weights``), False = never.
    """
    try:
        return ensure_weights("syncnet", weights_path, allow_download=allow_download)
    except WeightsUnavailable as exc:
        if exc.reason == "path":
            raise SyncNetWeightsError(f"SyncNet weights file not found: {exc.path} "
                                      f"(set {SYNCNET_ENV} or pass weights_path)") from None
        if exc.reason in ("offline", "disabled"):
            raise SyncNetWeightsError(
                f"SyncNet weights not supplied: pass the path of syncnet_v2.model (weights_path=...) or set "
                f"the environment variable {SYNCNET_ENV}=/path/to/syncnet_v2.model, or put it in "
                f"{project_cache_dir()} ($MF_CACHE). The file comes with joonson/syncnet_python "
                "(download_model.sh); online it is downloaded once by itself unless MF_NO_DOWNLOAD=1.") from None
        raise SyncNetWeightsError(f"SyncNet weights unavailable: {exc}") from None


def load_syncnet(weights_path: str | os.PathLike | None = None, device: str = "cpu", *,
                 allow_download: bool | None = None) -> SyncNet:
    """A ``SyncNet`` in eval mode with the released weights, loaded strictly.

    Every parameter and running statistic must be present with the right shape and nothing else may
    be in the file; only BatchNorm's ``num_batches_tracked`` counters (absent from files saved by old
    torch versions, unused in eval mode) may be missing.
    """
    path = resolve_weights(weights_path, allow_download=allow_download)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many kinds: report them as one clear message
        raise SyncNetWeightsError(f"{os.path.basename(path)}: not a readable torch state dict "
                                  f"({exc.__class__.__name__}: {exc})") from exc
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise SyncNetWeightsError(f"{os.path.basename(path)}: expected a state dict, found {type(state).__name__}")
    net = SyncNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise SyncNetWeightsError(f"{os.path.basename(path)}: not SyncNet v2 weights: " + "; ".join(parts))
    for k, v in expected.items():
        if k not in state:  # a num_batches_tracked counter
            state[k] = v
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def mfcc_like_syncnet(audio: np.ndarray, sample_rate: int = SYNCNET_RATE) -> np.ndarray:
    """13 MFCCs every 10 ms, float32 [n_frames, 13], matching the front end SyncNet was trained on.

    ``audio`` is float in [-1, 1]; it is scaled to the int16 range first because the reference
    reads 16-bit wav files as integers and the log energies depend on that scale.
    """
    x = resample_audio(np.asarray(audio, np.float32), sample_rate, SYNCNET_RATE).astype(np.float64) * 32768.0
    win, hop, nfft, nfilt, ncep, lift = 400, 160, 512, 26, 13, 22
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    n = 1 if len(x) <= win else 1 + int(np.ceil((len(x) - win) / hop))
    x = np.pad(x, (0, (n - 1) * hop + win - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy[energy == 0] = np.finfo(float).eps
    # Triangular mel filters on FFT bins, mel scale 2595 log10(1 + f / 700), 0 Hz .. Nyquist.
    mel = np.linspace(0.0, 2595 * np.log10(1 + (SYNCNET_RATE / 2) / 700.0), nfilt + 2)
    bins = np.floor((nfft + 1) * 700 * (10 ** (mel / 2595.0) - 1) / SYNCNET_RATE).astype(int)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        fbank[j, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        fbank[j, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    feat = power @ fbank.T
    feat[feat == 0] = np.finfo(float).eps
    logfb = np.log(feat)
    # Orthonormal DCT-II over the filter axis, first 13 coefficients.
    k = np.arange(nfilt)
    basis = np.cos(np.pi * np.arange(ncep)[:, None] * (2 * k[None, :] + 1) / (2 * nfilt)) * np.sqrt(2.0 / nfilt)
    basis[0] /= np.sqrt(2.0)
    cep = logfb @ basis.T
    cep *= 1 + (lift / 2.0) * np.sin(np.pi * np.arange(ncep) / lift)
    cep[:, 0] = np.log(energy)
    return cep.astype(np.float32)


def _to_25fps(frames: np.ndarray, fps: float) -> np.ndarray:
    if abs(fps - SYNCNET_FPS) < 1e-6:
        return frames
    n_out = max(1, int(round(len(frames) * SYNCNET_FPS / fps)))
    idx = np.minimum((np.arange(n_out) * fps / SYNCNET_FPS).astype(int), len(frames) - 1)
    return frames[idx]


@torch.no_grad()
def syncnet_scores(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
                   weights_path: str | os.PathLike | None = None, *, vshift: int = 15, batch: int = 20,
                   net: SyncNet | None = None, track: MouthTrack | None = None) -> dict:
    """SyncNet offset (frames, positive = audio leads), LSE-D and LSE-C for one clip.

    ``net`` reuses a loaded network (else ``load_syncnet(weights_path)``, which raises
    ``SyncNetWeightsError`` naming $SYNCNET_WEIGHTS when no weights are available).
    Returns dict(offset_frames, lse_d, lse_c, curve (mean distance per shift), n_windows, localizer).
    """
    if net is None:
        net = load_syncnet(weights_path)
    device = next(net.parameters()).device
    frames = _to_25fps(np.asarray(frames), float(fps))
    audio = resample_audio(np.asarray(audio, np.float32).reshape(-1), int(sample_rate), SYNCNET_RATE)
    if track is None or len(track.boxes) != len(frames):
        track = locate_mouth(frames, SYNCNET_FPS, use_landmarks=False)  # SyncNet crops the face box
    mfcc = mfcc_like_syncnet(audio)
    n_usable = min(len(frames), len(audio) // (SYNCNET_RATE // SYNCNET_FPS))
    n_windows = n_usable - VIDEO_WINDOW
    if n_windows < 1:
        raise ValueError(f"clip too short for SyncNet: {n_usable} frames, needs more than {VIDEO_WINDOW}")
    if len(track.boxes) != n_usable:
        faces = None if track.face_boxes is None else track.face_boxes[:n_usable]
        track = MouthTrack(track.boxes[:n_usable], faces, track.localizer, track.detection_rate)
    crops = face_crops(frames[:n_usable], track, side=CROP_SIDE)
    video = torch.from_numpy(crops[..., ::-1].astype(np.float32).copy())  # RGB -> BGR, as cv2.imread gives
    video = video.permute(3, 0, 1, 2)  # [3, T, H, W]
    cep = torch.from_numpy(mfcc.T.copy())  # [13, F]
    v_feats, a_feats = [], []
    for start in range(0, n_windows, batch):
        idx = range(start, min(n_windows, start + batch))
        v_in = torch.stack([video[:, i:i + VIDEO_WINDOW] for i in idx]).to(device)
        a_in = torch.stack([cep[None, :, 4 * i:4 * i + MFCC_WINDOW] for i in idx]).to(device)
        v_feats.append(net.forward_lip(v_in).cpu())
        a_feats.append(net.forward_aud(a_in).cpu())
    v, a = torch.cat(v_feats), torch.cat(a_feats)
    a_pad = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    # dists[i, j]: video window i against audio window i + (j - vshift).
    span = 2 * vshift + 1
    dists = torch.stack([torch.nn.functional.pairwise_distance(v[i:i + 1].expand(span, -1), a_pad[i:i + span])
                         for i in range(len(v))])
    curve = dists.mean(dim=0)
    best = int(torch.argmin(curve))
    lse_d = float(curve[best])
    return {
        "offset_frames": int(vshift - best),
        "lse_d": lse_d,
        "lse_c": float(torch.median(curve)) - lse_d,
        "curve": curve.numpy().astype(np.float64),
        "n_windows": int(n_windows),
        "localizer": track.localizer,
    }
