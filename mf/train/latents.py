"""The latent training set: render (or read) paired clips once, encode them with the frozen codecs
once, cache the tensors under runs/latents/, and serve chunk-aligned training windows.

Every generator stage (unimodal, joint, mutual, baselines) trains on the same cached latents, so
the codecs run once per data set and not once per step. The cache file name carries a hash of
everything that determines its content (source, seeds, clip length, frame size, codec weights),
so a changed codec or corpus never silently reuses stale latents.

Layout of one cached set (N clips of T video frames):
  video      float32 [N, T, C, h, w]     video codec latents, one per frame
  audio      float32 [N, T*4, M]         normalised log-mel frames (4 per video frame)
  phone_ids  int64   [N, T*4]            phoneme id per mel frame (0 = silence, 1 = unknown)
  attributes float32 [N, A]              the character's attribute vector (the "caption")
  ref_latent float32 [N, C, h, w]        latent of frame 0: the identity / reference frame
A training window is K chunks of Fc frames cut at a random frame offset; the reference latent
always comes from frame 0 of the clip, as at inference where the user's first frame is the prefix.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from mf.constants import FPS, HELDOUT_SEED_START, MELS_PER_FRAME


class LatentDataError(Exception):
    """The latent set cannot be built (missing codecs, a clip too short, an unreadable file)."""


@dataclass
class LatentBatch:
    """A batch of paired latent windows plus the conditions that go with them."""

    video: torch.Tensor        # [B, K*Fc, C, h, w]
    audio: torch.Tensor        # [B, K*Fc*4, M]
    phone_ids: torch.Tensor    # [B, K*Fc*4] int64
    attributes: torch.Tensor   # [B, A]
    ref_latent: torch.Tensor   # [B, C, h, w]

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]

    def n_chunks(self, frames_per_chunk: int) -> int:
        return self.video.shape[1] // frames_per_chunk

    def to(self, device) -> "LatentBatch":
        return LatentBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, rows) -> "LatentBatch":
        return LatentBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def chunks(self, start: int, stop: int, frames_per_chunk: int) -> "LatentBatch":
        """Chunks [start, stop) in time (conditions sliced along with them, reference kept)."""
        f0, f1 = start * frames_per_chunk, stop * frames_per_chunk
        m0, m1 = f0 * MELS_PER_FRAME, f1 * MELS_PER_FRAME
        return LatentBatch(video=self.video[:, f0:f1], audio=self.audio[:, m0:m1],
                           phone_ids=self.phone_ids[:, m0:m1], attributes=self.attributes,
                           ref_latent=self.ref_latent)


@dataclass
class LatentSet:
    video: torch.Tensor
    audio: torch.Tensor
    phone_ids: torch.Tensor
    attributes: torch.Tensor
    ref_latent: torch.Tensor
    meta: dict

    def __len__(self) -> int:
        return self.video.shape[0]

    @property
    def n_frames(self) -> int:
        return self.video.shape[1]

    def sample(self, batch_size: int, n_chunks: int, frames_per_chunk: int,
               gen: torch.Generator, *, rank: int = 0, world: int = 1) -> LatentBatch:
        """Random clips (a disjoint share per data-parallel rank) and random windows of n_chunks."""
        window = n_chunks * frames_per_chunk
        if window > self.n_frames:
            raise LatentDataError(
                f"a window of {n_chunks} chunks x {frames_per_chunk} frames = {window} frames is longer "
                f"than the cached clips ({self.n_frames} frames); rebuild with longer --clip-seconds")
        ranked = torch.arange(rank, len(self), world)
        idx = ranked[torch.randint(len(ranked), (batch_size,), generator=gen)]
        starts = torch.randint(self.n_frames - window + 1, (batch_size,), generator=gen)
        frames = starts[:, None] + torch.arange(window)[None]
        mels = starts[:, None] * MELS_PER_FRAME + torch.arange(window * MELS_PER_FRAME)[None]
        return LatentBatch(
            video=self.video[idx[:, None], frames],
            audio=self.audio[idx[:, None], mels],
            phone_ids=self.phone_ids[idx[:, None], mels],
            attributes=self.attributes[idx],
            ref_latent=self.ref_latent[idx],
        )


def mel_rate_phone_ids(ids: np.ndarray, n_frames: int) -> np.ndarray:
    """Phoneme ids at mel rate: accept per-video-frame ids (repeated 4x) or mel-rate ids."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) == n_frames * MELS_PER_FRAME:
        return ids
    if len(ids) == n_frames:
        return np.repeat(ids, MELS_PER_FRAME)
    raise LatentDataError(f"phone_ids has {len(ids)} entries; expected {n_frames} (video rate) or "
                          f"{n_frames * MELS_PER_FRAME} (mel rate)")


@torch.no_grad()
def _codec_fingerprint(codecs) -> str:
    """Content hash of what the codecs' ENCODERS produce on a fixed probe clip.

    Hashing outputs rather than files keeps the cache valid when only a decoder/vocoder is
    retrained (the latent space is unchanged) and invalidates it whenever the latents change.
    """
    from mf.data import render_clip

    video_codec, audio_codec = codecs
    probe = render_clip(0, 0.4, size=getattr(video_codec, "frame_size", 64))
    v = video_codec.encode(probe.frames).float()
    a = audio_codec.encode(probe.audio).float()
    h = hashlib.sha1()
    for x in (v, a):
        h.update(str(tuple(x.shape)).encode())
        h.update(torch.round(x * 1000).to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _load_codecs(codecs_dir: Path):
    from mf.codecs import load_codecs

    if not Path(codecs_dir).is_dir():
        raise LatentDataError(f"no codecs at {codecs_dir}; train them first with `python -m mf.train codecs` "
                              f"or pass --codecs PATH")
    return load_codecs(str(codecs_dir))


@torch.no_grad()
def encode_clip(video_codec, audio_codec, frames: np.ndarray, audio: np.ndarray, phone_ids: np.ndarray,
                attributes: np.ndarray) -> dict:
    n_frames = frames.shape[0]
    v = video_codec.encode(frames).float().cpu()  # the latent set lives on the CPU whatever the codecs' device
    a = audio_codec.encode(audio).float().cpu()
    want_mels = n_frames * MELS_PER_FRAME
    if a.shape[0] < want_mels:  # a codec that drops a trailing partial hop: pad by edge value
        a = torch.cat([a, a[-1:].expand(want_mels - a.shape[0], -1)], 0)
    return {
        "video": v,
        "audio": a[:want_mels],
        "phone_ids": torch.from_numpy(mel_rate_phone_ids(phone_ids, n_frames)),
        "attributes": torch.as_tensor(np.asarray(attributes, dtype=np.float32)),
        "ref_latent": v[0].clone(),
    }


def _stack(items: list[dict], meta: dict) -> LatentSet:
    return LatentSet(**{k: torch.stack([it[k] for it in items]) for k in
                        ("video", "audio", "phone_ids", "attributes", "ref_latent")}, meta=meta)


def build_corpus_latents(*, codecs_dir: str | Path = "assets/codecs", n_clips: int = 256,
                         clip_seconds: float = 4.0, first_seed: int = 0, size: int = 64,
                         cache_dir: str | Path = "runs/latents", codecs=None,
                         log=print, workers: int = 1, device: str = "cpu") -> LatentSet:
    """Render corpus seeds [first_seed, first_seed + n_clips), encode, cache, and return them.

    `codecs` may be passed as an already loaded (VideoCodec, AudioCodec) pair, e.g. by tests.
    The cache key holds a content hash of the codecs' encoders (see _codec_fingerprint).
    workers > 1 renders in that many processes; device "cuda" runs the encoders on the GPU.
    """
    if first_seed + n_clips > HELDOUT_SEED_START:
        raise LatentDataError(f"training seeds must stay below HELDOUT_SEED_START={HELDOUT_SEED_START}")
    from mf.data import phone_ids as phone_ids_fn
    from mf.data import render_clips

    if codecs is None:
        codecs = _load_codecs(Path(codecs_dir))
        if device != "cpu":
            codecs = tuple(codec.to(device) for codec in codecs)
    fingerprint = _codec_fingerprint(codecs)
    key = hashlib.sha1(f"corpus:{first_seed}:{n_clips}:{clip_seconds}:{size}:{fingerprint}".encode()).hexdigest()[:16]
    cache_path = Path(cache_dir) / f"corpus-{key}.pt"
    if cache_path.is_file():
        payload = torch.load(cache_path, map_location="cpu", weights_only=False)
        if log:
            log(f"latents: reusing {cache_path}")
        return LatentSet(**payload)
    video_codec, audio_codec = codecs
    items, t0 = [], time.monotonic()
    seeds = list(range(first_seed, first_seed + n_clips))
    per_batch = max(1, n_clips // 8)  # render in eighths: bounded memory and a progress line each
    for b in range(0, n_clips, per_batch):
        for clip in render_clips(seeds[b : b + per_batch], clip_seconds, size=size, workers=workers):
            n_frames = clip.frames.shape[0]
            ids = phone_ids_fn(clip.phones, n_frames * MELS_PER_FRAME, FPS * MELS_PER_FRAME)
            items.append(encode_clip(video_codec, audio_codec, clip.frames, clip.audio, ids,
                                     clip.character.attributes()))
        if log:
            log(f"latents: {len(items)}/{n_clips} clips encoded ({time.monotonic() - t0:.0f} s)")
    meta = {"source": "corpus", "first_seed": first_seed, "n_clips": n_clips, "clip_seconds": clip_seconds,
            "size": size, "codecs": fingerprint, "encode_s": round(time.monotonic() - t0, 1)}
    latents = _stack(items, meta)
    _save(latents, cache_path)
    return latents


def _save(latents: LatentSet, cache_path: Path) -> None:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    torch.save({k: getattr(latents, k) for k in ("video", "audio", "phone_ids", "attributes", "ref_latent",
                                                 "meta")}, tmp)
    os.replace(tmp, cache_path)


def build_folder_latents(folder: str | Path, *, codecs_dir: str | Path = "assets/codecs",
                         clip_seconds: float = 4.0, size: int = 64, cache_dir: str | Path = "runs/latents",
                         log=print) -> LatentSet:
    """The real-data path: a folder of the user's paired mp4 clips (mf.data.FolderDataset).

    Clips are cut to `clip_seconds` (the window sampler needs one common length); clips shorter
    than that are skipped with a message naming the file.
    """
    from mf.data import FolderDataset

    folder = Path(folder)
    if not folder.is_dir():
        raise LatentDataError(f"--data {folder}: not a folder of mp4 clips")
    codecs = _load_codecs(Path(codecs_dir))
    fingerprint = _codec_fingerprint(codecs)
    names = sorted(str(p.relative_to(folder)) + f":{p.stat().st_size}" for p in folder.rglob("*.mp4"))
    identity = f"folder:{folder.resolve()}:{names}:{clip_seconds}:{size}:{fingerprint}"
    key = hashlib.sha1(identity.encode()).hexdigest()[:16]
    cache_path = Path(cache_dir) / f"folder-{key}.pt"
    if cache_path.is_file():
        return LatentSet(**torch.load(cache_path, map_location="cpu", weights_only=False))
    video_codec, audio_codec = codecs
    dataset = FolderDataset(str(folder), seconds=clip_seconds, size=size)
    n_frames = int(round(clip_seconds * FPS))
    items = []
    for i in range(len(dataset)):
        item = dataset[i]
        frames = np.asarray(item["frames"])
        if frames.shape[0] < n_frames:
            log(f"latents: skipping clip {i} ({item.get('path', '?')}): {frames.shape[0]} frames < {n_frames}")
            continue
        audio = np.asarray(item["audio"], dtype=np.float32)[: n_frames * (len(item["audio"]) // frames.shape[0])]
        ids = mel_rate_phone_ids(item["phone_ids"], frames.shape[0])[: n_frames * MELS_PER_FRAME]
        items.append(encode_clip(video_codec, audio_codec, frames[:n_frames], audio, ids, item["attributes"]))
    if not items:
        raise LatentDataError(f"--data {folder}: no clip of at least {clip_seconds} s")
    latents = _stack(items, {"source": str(folder), "n_clips": len(items), "clip_seconds": clip_seconds,
                             "size": size, "codecs": fingerprint})
    _save(latents, cache_path)
    return latents


def random_latents(n_clips: int, n_frames: int, *, channels: int, size: int, n_mels: int, attr_dim: int,
                   n_phonemes: int, seed: int = 0) -> LatentSet:
    """A structured synthetic set for unit tests of the objectives (no codecs needed): smooth latent
    trajectories whose audio is a function of the video, so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_clips, 1, channels, size, size, generator=g)
    phase = torch.rand(n_clips, 1, 1, 1, 1, generator=g) * 6.28
    tt = torch.arange(n_frames).float()[None, :, None, None, None]
    video = base * torch.cos(0.3 * tt + phase)
    mel_t = torch.arange(n_frames * MELS_PER_FRAME).float()[None, :, None] / MELS_PER_FRAME
    pitch = torch.linspace(-1, 1, n_mels)[None, None]
    audio = torch.sin(0.3 * mel_t + phase.view(n_clips, 1, 1) + 3 * pitch)
    ids = torch.randint(n_phonemes, (n_clips, n_frames), generator=g).repeat_interleave(MELS_PER_FRAME, 1)
    return LatentSet(video=video, audio=audio, phone_ids=ids,
                     attributes=torch.rand(n_clips, attr_dim, generator=g) * 2 - 1,
                     ref_latent=video[:, 0].clone(), meta={"source": "random"})
