"""The streaming runtime: load the studio (model + codecs), generate a clip chunk by chunk.

Owns ``Studio``, ``load_studio``, ``generate`` and ``Chunk`` (the shared runtime API of the app, the
training rollouts' previews and the benchmark):

    studio = load_studio(assets="assets", device="cpu")      # studio.trained False = initial weights
    for chunk in generate(studio, steps=4, seed=0, seconds=5.0): ...

Every chunk is sampled by ``mf.sampler.sample_chunk`` against a rolling KV cache, then decoded at
once (video per frame; audio through the vocoder with the previous mel frames as left context so
chunk seams do not click). The cache write of a finished chunk is folded into the next chunk's first
network pass (exactly the same keys and mask as a separate ``write_cache``; see ``MFTransformer.
step_and_write``), and chunk k+1 is sampled in a worker thread while chunk k is decoded and consumed
(torch kernels release the GIL, so on 2 cores the network and the codecs run side by side). Both are
speed options only: the output is the same up to float rounding (tested).

Determinism: the noise of chunk k comes from a CPU generator seeded by (seed, k), so the same seed
gives bitwise identical output on CPU whatever the chunking of the consumer, and continuing from a
history gives the same noise as generating straight through.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from mf.conditions import Conditions, script_phone_ids
from mf.configs import MAX_SECONDS, ModelConfig
from mf.constants import FPS, SAMPLES_PER_FRAME
from mf.lookahead import Producer, handoff_results, inline_results
from mf.model import MFTransformer
from mf.sampler import make_schedule, sample_chunk

if TYPE_CHECKING:
    from mf.codecs import AudioCodec, VideoCodec

DEFAULT_PRESET = "tiny"
AUDIO_CONTEXT_MELS = 16  # left context (mel frames) the vocoder sees when decoding a chunk


@dataclass
class Chunk:
    index: int
    frames: np.ndarray            # uint8 [T, H, W, 3] (T = frames_per_chunk, fewer for a cut last chunk)
    audio: np.ndarray             # float32 [T * 640]
    video_latents: torch.Tensor   # [Fc, C, h, w] (the whole chunk, also when frames were cut)
    audio_latents: torch.Tensor   # [Fc * 4, n_mels]
    timings: dict                 # model_s, model_cpu_s (sampler thread CPU), decode_s, nfe, cache_writes,
                                  # steps_s / steps_cpu_s (wall / sampler CPU seconds of each step)
    step_latents: list[tuple[torch.Tensor, torch.Tensor]] | None  # [(video [Fc,C,h,w], audio [Fc*4,M])] per step
    seed: int
    start_frame: int = 0          # first video frame of this chunk in the clip
    note: str = ""                # on the first chunk: how the script was made (e.g. cut to length)

    @property
    def start_seconds(self) -> float:
        return self.start_frame / FPS


@dataclass
class Studio:
    model: MFTransformer
    video_codec: VideoCodec
    audio_codec: AudioCodec
    trained: bool                 # False: the model has initial (untrained) weights
    codecs_trained: bool
    message: str                  # what was loaded, for the user
    checkpoint: str | None        # the model folder, None for initial weights
    device: torch.device
    dtype: torch.dtype = torch.float32
    max_seconds: float = MAX_SECONDS
    notes: list = field(default_factory=list)
    graph_runners: dict = field(default_factory=dict, repr=False)  # mf.graphs.acquire's pool (static passes)

    @property
    def config(self) -> ModelConfig:
        return self.model.model_config


def _check_compatible(config: ModelConfig, video_codec, audio_codec, where: str) -> None:
    want = (config.video_channels, config.latent_size, config.n_mels)
    have = (video_codec.latent_channels, video_codec.latent_size, audio_codec.n_mels)
    if want != have:
        raise ValueError(f"{where}: the model expects latents (channels, size, n_mels) = {want} but the codecs "
                         f"give {have}; retrain the model for these codecs or use matching codecs")


def load_studio(assets: str | os.PathLike = "assets", device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, preset: str = DEFAULT_PRESET,
                codec_preset: str = "tiny", *, model_dir: str | os.PathLike | None = None,
                codecs: tuple[VideoCodec, AudioCodec] | None = None) -> Studio:
    """Model + codecs from ``assets/model`` and ``assets/codecs``; initial weights where they are absent.

    ``dtype``: float32 on CPU; bfloat16 autocast on CUDA by default. ``preset`` / ``codec_preset``
    choose the shapes of initial weights (``micro`` for tests); a checkpoint knows its own shape.
    ``model_dir``: this checkpoint folder instead of ``assets/model``; it must hold one (ValueError
    naming the folder otherwise). ``codecs``: an already loaded (video_codec, audio_codec) pair from
    ``mf.codecs.load_codecs``, used instead of ``assets/codecs`` (several studios share one pair).
    """
    from mf.codecs import AudioCodec, VideoCodec, load_codecs

    device = torch.device(device)
    assets = Path(assets)
    if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
        raise ValueError(f"no model weights at {model_dir} (config.json is missing)")
    notes = []
    codec_dir = assets / "codecs"
    if codecs is not None:
        video_codec, audio_codec = codecs
        codecs_trained = True
    elif codec_dir.is_dir():
        video_codec, audio_codec = load_codecs(codec_dir, device=str(device))
        codecs_trained = True
    else:
        video_codec = VideoCodec.from_preset(codec_preset).to(device)
        audio_codec = AudioCodec.from_preset(codec_preset).to(device)
        codecs_trained = False
        notes.append(f"no trained codecs at {codec_dir}: untrained codecs (noise-like frames and audio)")
    model_dir = assets / "model" if model_dir is None else Path(model_dir)
    if (model_dir / "config.json").is_file():
        try:
            model = MFTransformer.from_pretrained(str(model_dir))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"{model_dir}: cannot load the model checkpoint ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        trained, checkpoint = True, str(model_dir)
        notes.insert(0, f"model: trained checkpoint {model_dir}")
    else:
        with torch.random.fork_rng(devices=[]):  # reproducible initial weights, caller's RNG untouched
            torch.manual_seed(0)
            model = MFTransformer.from_preset(preset, video_channels=video_codec.latent_channels,
                                              latent_size=video_codec.latent_size, n_mels=audio_codec.n_mels)
        trained, checkpoint = False, None
        notes.insert(0, f"model: initial weights (no checkpoint at {model_dir}; preset {preset!r}): "
                        "the output is not a trained result")
    _check_compatible(model.model_config, video_codec, audio_codec, str(model_dir))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device).eval()
    return Studio(model=model, video_codec=video_codec, audio_codec=audio_codec, trained=trained,
                  codecs_trained=codecs_trained, message="; ".join(notes), checkpoint=checkpoint,
                  device=device, dtype=dtype, notes=notes)


def _oversubscribed() -> bool:
    """True when the 1-minute load average exceeds the cores (other processes hold them)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def chunk_seed(seed: int, index: int) -> int:
    """The noise seed of chunk ``index`` of a clip generated with ``seed`` (a 63-bit integer)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def character_for(seed: int, character_id: int | None) -> int:
    """The character a clip shows: ``character_id`` when given, else the seed (every seed its own character).

    The same rule as the corpus (``mf.data.render_clip``), so a seed's ground-truth render shows the
    character the pipeline was conditioned on.
    """
    return int(seed) if character_id is None else int(character_id)


def _validate(studio: Studio, steps, seed, seconds, character_id, cfg_scale, text) -> None:
    from mf.data.characters import MAX_CHARACTER_ID

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(seconds, (int, float, np.floating, np.integer)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if seconds > studio.max_seconds:
        raise ValueError(f"seconds must be at most {studio.max_seconds:g} (one request), got {seconds:g}")
    if character_id is not None and (isinstance(character_id, bool) or not isinstance(character_id, (int, np.integer))
                                     or not 0 <= int(character_id) <= MAX_CHARACTER_ID):
        raise ValueError(f"unknown character id {character_id!r}: ids are integers in [0, {MAX_CHARACTER_ID}]")
    if not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"text must be a string or None, got {type(text).__name__}")


def reference_frame(character_id: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The identity condition of a character: (first frame uint8 [H, W, 3], attributes float32 [A]).

    The first frame of a corpus clip of that character (clips open in silence, so the mouth is at
    rest); training conditions on the first frame of each training clip the same way.
    """
    from mf.data import render_frames

    frames, char = render_frames(int(seed), 1.0 / FPS, character_id=int(character_id), size=size)   # no voice
    return frames[0], char.attributes().astype(np.float32)


def build_conditions(studio: Studio, *, seed: int, n_chunks: int, text: str | None,
                     character_id: int | None) -> tuple[Conditions, str]:
    """Conditions (batch 1) for a clip of ``n_chunks`` chunks, and a note about the script."""
    config = studio.config
    cid = character_for(seed, character_id)
    frame, attributes = reference_frame(cid, studio.video_codec.frame_size, seed)
    ref = studio.video_codec.encode(frame[None]).to(studio.device, torch.float32)
    ids, dropped, note = script_phone_ids(text, n_chunks * config.mels_per_chunk, seed)
    if int(ids.max(initial=0)) >= config.n_phonemes:
        raise ValueError(f"the script uses phoneme id {int(ids.max())}, the model knows {config.n_phonemes}")
    cond = Conditions(ref_latent=ref, attributes=torch.from_numpy(attributes)[None].to(studio.device),
                      phone_ids=torch.from_numpy(ids)[None].to(studio.device),
                      text_dropped=torch.tensor([dropped], device=studio.device))
    return cond, note


class _AudioDecoder:
    """Vocoder decode of consecutive chunks with the previous mel frames as left context."""

    def __init__(self, codec, context: int = AUDIO_CONTEXT_MELS):
        self.codec, self.context, self.history = codec, context, None

    def __call__(self, mel: torch.Tensor) -> np.ndarray:
        full = mel if self.history is None else torch.cat([self.history, mel])
        wave = self.codec.decode(full.float())
        self.history = full[-self.context:] if self.context else None
        return wave[-mel.shape[0] * self.codec.hop:]


def generate(studio: Studio, steps: int = 4, seed: int = 0, seconds: float = 5.0, text: str | None = None,
             character_id: int | None = None, cfg_scale: float = 1.0, keep_step_latents: bool = False, *,
             mode: str | None = None, shift: float = 1.0, history: list[Chunk] | None = None,
             fuse_cache_write: bool | None = None, lookahead: bool | str = True,
             wide_cache_write: bool | None = None, write_beside: bool | None = None,
             graphs: bool | None = None) -> Iterator[Chunk]:
    """Yield the chunks of a clip, each decoded, as soon as it is sampled.

    steps: denoising steps per chunk (<= 16: few-step mode, > 16: multi-step; ``mode`` overrides).
    seconds: clip length (0 < seconds <= studio.max_seconds); the last chunk is cut to length.
    text: a sentence to say; None = random babble from the seed; "" = no script.
    character_id: which corpus character (None: the seed picks it).
    cfg_scale: classifier-free guidance on the script (1 = off; > 1 doubles the network batch).
    history: finished chunks of an earlier call with the same conditions: they fill the cache and
    generation continues at chunk ``len(history)``.
    How chunk k's cache write (its t = 0 pass) runs, the one per-chunk cost that the network evaluations
    do not amortise (see eval.bench's ratio_50_over_4):
    - write_beside (default on the CPU when there is a spare core: look-ahead on, fewer torch threads than
      cores, 1-minute load average not above the cores): in a second thread, layer by layer, beside chunk
      k+1's first pass (``mf.sampler.sample_chunk(write_beside=...)``): the pass's layer l waits only for
      the write's layer l keys; the decode of chunk k waits for that pass (both cores are busy).
    - otherwise on the CPU (fuse_cache_write default False there): a separate write pass after the chunk.
      Beside and separate give the same bits, so the CPU output does not depend on the machine's load.
    - fuse_cache_write (default on for graphs, i.e. CUDA): folded into chunk k+1's first pass (one pass,
      one weight read per layer); the same result within float rounding (1e-6 on the shipped model).
      wide_cache_write (default off; implies fuse_cache_write): that fused pass on twice the torch threads
      while the decode waits. It was the CPU default before the write ran beside; on an oversubscribed
      machine every intra-op barrier waits for a descheduled thread (4-step clips 3-10x slower at load 5-9
      on 2 cores), hence the load condition of write_beside too.
    lookahead: True = a sampler thread produces chunks one ahead of the consumer, going on to the next
    chunk without waiting for it; "handoff" = the earlier scheme (the consumer hands each next chunk to
    the thread; kept for side-by-side measurement in eval.bench); False = no thread. Same bits either way.
    graphs (default: on CUDA): every network pass runs on fixed-address buffers against a ring-buffer
    cache (``mf.graphs``, ``mf.static_cache``), captured once as CUDA graphs on a GPU and eager on the
    CPU; same results as the default path up to float rounding.
    """
    _validate(studio, steps, seed, seconds, character_id, cfg_scale, text)
    if lookahead not in (True, False, "handoff"):
        raise ValueError(f"lookahead must be True, False or 'handoff', got {lookahead!r}")
    schedule = make_schedule(int(steps), mode=mode, shift=shift)
    model, config = studio.model, studio.config
    fc = config.frames_per_chunk
    total_frames = int(round(seconds * FPS))
    total_frames = max(total_frames, 1)
    n_chunks = math.ceil(total_frames / fc)
    history = list(history or [])
    if len(history) >= n_chunks:
        raise ValueError(f"history has {len(history)} chunks, the clip only {n_chunks}: ask for more seconds")
    use_cfg = cfg_scale != 1.0
    device = studio.device
    use_amp = device.type == "cuda" and studio.dtype != torch.float32
    use_graphs = device.type == "cuda" if graphs is None else bool(graphs)

    def amp():  # a fresh autocast context per use (bf16 on CUDA; nothing on CPU)
        return torch.autocast(device_type="cuda", dtype=studio.dtype) if use_amp else nullcontext()
    branches = 2 if use_cfg else 1
    c, h, m = config.video_channels, config.latent_size, config.n_mels
    net = model  # what sample_chunk calls: the model, or its static-buffer (graphed) stand-in

    # Grad mode and autocast are thread-local and would leak to the consumer across `yield`, so every
    # computation below enters them itself.
    @torch.inference_mode()
    def prepare():
        nonlocal net
        cond, note = build_conditions(studio, seed=int(seed), n_chunks=n_chunks, text=text,
                                      character_id=character_id)
        cond_in = cond.repeat_for_cfg() if use_cfg else cond
        with amp():
            if use_graphs:
                from mf.graphs import acquire

                net = acquire(studio.graph_runners, model, cond_in, capture=device.type == "cuda",
                              autocast_dtype=studio.dtype if use_amp else None)
                cache = net.cache
            else:
                cache = model.new_cache(cond_in)
            for past in history:  # rebuild the cache from finished chunks
                v = past.video_latents.to(device)[None].repeat(branches, 1, 1, 1, 1)
                a = past.audio_latents.to(device)[None].repeat(branches, 1, 1)
                net.write_cache(v, a, cond_in.chunk_slice(past.index, 1, fc), cache)
        return cond, note, cache

    base_threads = torch.get_num_threads()
    wide_threads = min(os.cpu_count() or 1, 2 * base_threads)  # the sampler's core + the decoder's
    spare_core = (bool(lookahead) and device.type == "cpu" and not use_graphs and wide_threads > base_threads
                  and not _oversubscribed())
    if write_beside is None:
        write_beside = spare_core and not fuse_cache_write and not wide_cache_write
    write_beside = bool(write_beside) and not use_graphs
    if fuse_cache_write is None:
        fuse_cache_write = use_graphs or bool(wide_cache_write)
    wide_cache_write = bool(wide_cache_write) and fuse_cache_write and not write_beside and wide_threads > base_threads
    defer_write = fuse_cache_write or write_beside   # chunk k's write waits for chunk k+1's first pass
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mf-cache-write") if write_beside else None
    second_core = wide_cache_write or write_beside   # the first pass of a chunk uses the decoder's core

    @torch.inference_mode()
    def sample(k: int, cache, pending, first_pass_done=None):
        t0, cpu0 = time.perf_counter(), time.thread_time()
        widen = wide_cache_write and pending is not None
        marks = [(t0, cpu0)]   # (wall, sampler-thread CPU) after each step: where a chunk's time goes

        def after_step(i, x_v, x_a):
            marks.append((time.perf_counter(), time.thread_time()))
            if i == 0:
                if widen:
                    torch.set_num_threads(base_threads)
                if first_pass_done is not None:
                    first_pass_done.set()
        gen = torch.Generator().manual_seed(chunk_seed(seed, k))
        noise_v = torch.randn((1, fc, c, h, h), generator=gen).to(device)
        noise_a = torch.randn((1, config.mels_per_chunk, m), generator=gen).to(device)
        write = "never" if k == n_chunks - 1 else ("defer" if defer_write else "now")
        if widen:
            torch.set_num_threads(wide_threads)
        try:
            with amp():
                out = sample_chunk(net, cache, cond.chunk_slice(k, 1, fc), noise_v, noise_a, schedule,
                                   cfg_scale=cfg_scale, keep_step_latents=keep_step_latents, pending=pending,
                                   write=write, on_step=after_step, write_beside=writer)
        finally:
            if widen:
                torch.set_num_threads(base_threads)
            if first_pass_done is not None:
                first_pass_done.set()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # wall seconds, the sampler thread's own CPU seconds (not its intra-op helpers'), and per step
        # (the first includes the chunk's set-up; the chunk's write, when it runs after the steps, is in neither)
        steps_wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
        steps_cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
        return out, (time.perf_counter() - t0, time.thread_time() - cpu0, steps_wall, steps_cpu)

    @torch.inference_mode()
    def decode(k: int, out, audio_decoder):
        t1 = time.perf_counter()
        video_latents, audio_latents = out.video[0].float(), out.audio[0].float()
        n_frames = min(fc, total_frames - k * fc)
        frames = studio.video_codec.decode_uint8(video_latents[:n_frames])
        audio = audio_decoder(audio_latents)[: n_frames * SAMPLES_PER_FRAME]
        return frames, np.ascontiguousarray(audio, dtype=np.float32), time.perf_counter() - t1

    first = len(history)
    producer = None
    try:
        cond, note, cache = prepare()
        audio_decoder = _AudioDecoder(studio.audio_codec)
        if history:
            audio_decoder.history = history[-1].audio_latents.to(device)[-AUDIO_CONTEXT_MELS:]
        if lookahead is True:
            producer = Producer(sample, cache, range(first, n_chunks), second_core)
            results = producer.results()
        elif lookahead == "handoff":
            results = handoff_results(sample, cache, range(first, n_chunks), second_core)
        else:
            results = inline_results(sample, cache, range(first, n_chunks))
        for k, (out, (model_s, model_cpu_s, steps_s, steps_cpu_s)) in zip(range(first, n_chunks), results):
            frames, audio, decode_s = decode(k, out, audio_decoder)
            steps_out = None
            if out.step_latents is not None:
                steps_out = [(sv[0].float().cpu(), sa[0].float().cpu()) for sv, sa in out.step_latents]
            yield Chunk(index=k, frames=frames, audio=audio, video_latents=out.video[0].float().cpu(),
                        audio_latents=out.audio[0].float().cpu(),
                        timings=dict(model_s=model_s, model_cpu_s=model_cpu_s, decode_s=decode_s, nfe=out.nfe,
                                     cache_writes=out.cache_writes, steps_s=steps_s, steps_cpu_s=steps_cpu_s),
                        step_latents=steps_out, seed=int(seed), start_frame=k * fc,
                        note=note if k == first else "")
    finally:
        if producer is not None:
            producer.stop()
        if writer is not None:
            writer.shutdown(wait=True)
        if net is not model:
            net.lock.release()


def warm_up(studio: Studio, **kwargs) -> float:
    """Pay a studio's one-time costs before a user's stream: a 1-step stream just long enough for the cache
    window to fill (the CPU's traced cache write is made at its first full-window write, ``mf.traced``;
    lazy folds; CUDA graph capture). ``kwargs``: more ``generate`` arguments (a path to warm, e.g. graphs).
    Returns the seconds it took."""
    start = time.perf_counter()
    config = studio.config
    seconds = (config.window_chunks + 2) * config.frames_per_chunk / FPS
    for _ in generate(studio, steps=1, seed=0, seconds=min(seconds, studio.max_seconds), **kwargs):
        pass
    return time.perf_counter() - start


def generate_clip(studio: Studio, **kwargs) -> tuple[np.ndarray, np.ndarray, list[Chunk]]:
    """Generate a whole clip: (frames uint8 [T, H, W, 3], audio float32 [T * 640], chunks)."""
    chunks = list(generate(studio, **kwargs))
    frames = np.concatenate([ch.frames for ch in chunks])
    audio = np.concatenate([ch.audio for ch in chunks])
    return frames, audio, chunks


__all__ = ["Chunk", "Studio", "load_studio", "generate", "generate_clip", "warm_up", "build_conditions", "chunk_seed",
           "character_for", "reference_frame"]
