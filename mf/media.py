"""Media I/O for the whole project: read any common container into arrays, write mp4 and wav.

Everything that touches a media file goes through here (corpus preview, generation, eval, the app),
so every caller gets the same resampling rules and the same typed errors:

* ``read_av`` decodes with PyAV (FFmpeg inside the wheel, no system ffmpeg needed) and returns
  frames ``uint8 [T, H, W, 3]`` resampled to a constant ``fps`` (variable-frame-rate sources are
  sampled at the frame shown at each output instant) and mono ``float32`` audio resampled with a
  polyphase filter to ``sample_rate``; the source rates and duration are reported beside them.
* ``write_mp4`` writes H.264 (yuv420p) + AAC in one pass (a 5 s 64x64 clip takes ~0.1 s);
  ``write_wav`` writes PCM16.
* Bad files raise a ``MediaError`` subclass whose message names the file (base name only, never the
  folder it sits in) and the reason.
* ``VIDEO_EXTS`` / ``AUDIO_EXTS`` / ``MEDIA_EXTS`` are the one list of file types the project reads; every
  consumer (corpus folders, eval sets, the app's upload boxes) imports them from here.
* Length cap: ``max_seconds`` stops every decoder path (PyAV for containers, soundfile for wav/flac/...)
  after that many seconds, so an upload can never make a reader hold more; ``MAX_UPLOAD_SECONDS`` is
  the cap for user uploads. ``AVClip.capped`` says the file was longer than what was decoded, and
  ``AVClip.declared_duration`` is what the file's header promises, so callers can tell a truncated or
  damaged file (decoded much less than declared) from a short one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
from av.video.reformatter import VideoReformatter
from scipy.signal import resample_poly

from mf.constants import FPS, SAMPLE_RATE

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# Audio containers soundfile reads sample-exactly (no codec delay, no float round trip).
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".aiff", ".aif")
MEDIA_EXTS = VIDEO_EXTS + AUDIO_EXTS
# Seconds decoded at most from one uploaded file (frames are held at full resolution: 60 s of 512x512
# video at 25 fps is 1.2 GB of uint8).
MAX_UPLOAD_SECONDS = 60.0


class MediaError(Exception):
    """A media file could not be used. ``str()`` names the file and the reason."""

    kind = "media error"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        # FFmpeg and libsndfile quote the full path in their messages; users see the file name only.
        self.reason = reason.replace(self.path, os.path.basename(self.path))
        super().__init__(f"{os.path.basename(self.path)}: {self.kind}: {self.reason}")


class NotMediaError(MediaError):
    kind = "not a readable media file (corrupt or unknown format)"


class NoVideoStreamError(MediaError):
    kind = "no video stream"


class NoAudioStreamError(MediaError):
    kind = "no audio stream"


class ZeroDurationError(MediaError):
    kind = "zero duration"


class UnsupportedCodecError(MediaError):
    kind = "unreadable codec"


@dataclass
class AVClip:
    """Decoded audio-video at the requested rates, with what the source had."""

    frames: np.ndarray | None  # uint8 [T, H, W, 3] at fps, None when video was not requested/present
    audio: np.ndarray | None  # float32 [N] mono at sample_rate, None when audio was not requested/present
    fps: float
    sample_rate: int
    source_fps: float | None
    source_sample_rate: int | None
    source_channels: int | None
    duration: float  # seconds
    path: str
    declared_duration: float | None = None  # seconds the file's header declares (None: it says nothing)
    capped: bool = False  # True when decoding stopped at max_seconds before the end of the file

    @property
    def n_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])


def resample_audio(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased); identity when the rates match."""
    audio = np.asarray(audio, dtype=np.float32)
    if int(from_rate) == int(to_rate):
        return audio
    g = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(audio, int(to_rate) // g, int(from_rate) // g, axis=0).astype(np.float32)


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """[N] or [N, C] -> [N] by averaging channels (keeps level for correlated stereo)."""
    if samples.ndim == 1:
        return samples.astype(np.float32)
    return samples.mean(axis=1).astype(np.float32)


def _open(path: str):
    if not os.path.exists(path):
        raise NotMediaError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise NotMediaError(path, "file is empty (0 bytes)")
    try:
        return av.open(path, mode="r")
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise NotMediaError(path, f"FFmpeg cannot parse it ({exc.__class__.__name__})") from exc


def _check_codec(path: str, stream, what: str) -> None:
    name = getattr(stream.codec_context, "name", None) if stream.codec_context is not None else None
    if not name or name == "none":
        raise UnsupportedCodecError(path, f"the {what} stream's codec is unknown to FFmpeg")


def _decode_video(path: str, container, stream, fps: float, max_seconds: float | None):
    """Decode all frames with their presentation times, then sample them on a constant fps grid."""
    _check_codec(path, stream, "video")
    stream.thread_type = "AUTO"
    images, times = [], []
    # One reformatter for the whole stream keeps its swscale context: frame.to_ndarray(format=...)
    # builds a new one per frame, measured 25x slower (2 ms per 64x64 frame), same pixels.
    to_rgb = VideoReformatter()
    capped = False
    try:
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else len(times) / float(stream.average_rate or FPS)
            if max_seconds is not None and t >= max_seconds:
                capped = True
                break
            images.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
            times.append(float(t))
    except av.error.FFmpegError as exc:
        if not images:
            raise UnsupportedCodecError(path, f"video frames cannot be decoded ({exc})") from exc
        # A damaged tail: keep what decoded (common for truncated uploads).
    if not images:
        raise ZeroDurationError(path, "the video stream has no decodable frames")
    times_arr = np.asarray(times)
    order = np.argsort(times_arr, kind="stable")
    times_arr = times_arr[order] - times_arr.min()
    frame_dur = np.median(np.diff(times_arr)) if len(times_arr) > 1 else 1.0 / float(stream.average_rate or fps)
    span = times_arr[-1] + frame_dur
    if max_seconds is not None:
        span = min(span, max_seconds)
    n_out = max(1, int(round(span * fps)))
    # For output instant k/fps show the last source frame whose time is <= that instant.
    grid = (np.arange(n_out) + 0.5) / fps
    idx = np.clip(np.searchsorted(times_arr, grid, side="right") - 1, 0, len(images) - 1)
    frames = np.stack([images[order[i]] for i in idx])
    src_fps = float(stream.average_rate) if stream.average_rate else (len(images) / span)
    return frames, src_fps, span, capped


def _decode_audio(path: str, container, stream, max_seconds: float | None):
    _check_codec(path, stream, "audio")
    chunks = []
    rate = stream.codec_context.sample_rate or stream.rate
    channels = stream.codec_context.channels
    n_decoded, capped = 0, False
    try:
        for frame in container.decode(stream):
            if max_seconds is not None and n_decoded >= max_seconds * (frame.sample_rate or rate):
                capped = True  # stop decoding: a 10-minute sound track must not be held to be cut
                break
            arr = frame.to_ndarray()  # planar [C, n] or packed [1, n*C]
            if frame.format.is_planar:
                arr = arr.T
            else:
                arr = arr.reshape(-1, len(frame.layout.channels))
            if arr.dtype.kind == "i":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
            chunks.append(arr.astype(np.float32))
            n_decoded += arr.shape[0]
            rate = frame.sample_rate
    except av.error.FFmpegError as exc:
        if not chunks:
            raise UnsupportedCodecError(path, f"audio cannot be decoded ({exc})") from exc
    if not chunks:
        raise ZeroDurationError(path, "the audio stream has no decodable samples")
    samples = np.concatenate(chunks, axis=0)
    # Codecs such as AAC decode whole frames (1024 samples), so the last frame carries padding past
    # the end of the sound; the stream's own duration says where the real audio stops.
    if stream.duration and stream.time_base:
        n_true = int(round(float(stream.duration * stream.time_base) * rate))
        if 0 < n_true < len(samples):
            samples = samples[:n_true]
    if max_seconds is not None and len(samples) > int(max_seconds * rate):
        samples, capped = samples[: int(max_seconds * rate)], True
    return _to_mono(samples), int(rate), int(channels or samples.shape[1]), capped


def _declared_duration(container) -> float | None:
    """Seconds the container's header declares: its own duration, else its longest stream's."""
    if container.duration:
        return float(container.duration) / av.time_base
    spans = [float(st.duration * st.time_base) for st in container.streams if st.duration and st.time_base]
    return max(spans) if spans else None


def read_av(
    path: str | os.PathLike,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
    *,
    need_video: bool = True,
    need_audio: bool = True,
    max_seconds: float | None = None,
) -> AVClip:
    """Read a media file into frames at ``fps`` and mono audio at ``sample_rate``.

    ``need_video``/``need_audio`` decide whether a missing stream is an error; a stream that is not
    needed is still decoded when present. ``max_seconds`` caps what is decoded, on every path (huge
    uploads); ``capped`` in the result says it cut something.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in AUDIO_EXTS and not need_video:
        audio, sr, channels, declared, capped = _read_soundfile(path, max_seconds)
        if need_audio and audio.size == 0:
            raise ZeroDurationError(path, "the audio file has no samples")
        return AVClip(None, resample_audio(audio, sr, sample_rate), float(fps), int(sample_rate),
                      None, sr, channels, audio.shape[0] / float(sr), path, declared, capped)
    container = _open(path)
    capped = False
    try:
        declared = _declared_duration(container)
        vstreams, astreams = container.streams.video, container.streams.audio
        if not vstreams and not astreams:
            # What an encoder that crashed before its first frame leaves behind: a valid header, no media.
            raise ZeroDurationError(path, "the container holds no audio or video (nothing was ever written to it)")
        if need_video and not vstreams:
            raise NoVideoStreamError(path, "the file has audio only")
        if need_audio and not astreams:
            raise NoAudioStreamError(path, "the video has no sound track")
        frames = src_fps = None
        audio = src_rate = channels = None
        duration = 0.0
        if vstreams:
            frames, src_fps, vdur, capped = _decode_video(path, container, vstreams[0], float(fps), max_seconds)
            duration = vdur
            container.seek(0)
        if astreams:
            try:
                raw, src_rate, channels, a_capped = _decode_audio(path, container, astreams[0], max_seconds)
                capped = capped or a_capped
            except (ZeroDurationError, UnsupportedCodecError):
                if need_audio:
                    raise
                raw = None
            if raw is not None:
                audio = resample_audio(raw, src_rate, sample_rate)
                duration = max(duration, raw.shape[0] / float(src_rate))
    finally:
        container.close()
    if duration <= 0:
        raise ZeroDurationError(path, "the streams have zero duration")
    return AVClip(frames, audio, float(fps), int(sample_rate), src_fps, src_rate, channels, float(duration), path,
                  declared, capped)


def _read_soundfile(path: str, max_seconds: float | None):
    """(mono audio, rate, channels, declared seconds, capped); reads at most ``max_seconds``."""
    if not os.path.exists(path):
        raise NotMediaError(path, "file does not exist")
    try:
        with sf.SoundFile(path) as f:
            sr, total = int(f.samplerate), int(f.frames)
            n = total if max_seconds is None else min(total, int(max_seconds * sr))
            data = f.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise NotMediaError(path, f"cannot read audio ({exc})") from exc
    return _to_mono(data), sr, int(data.shape[1]), total / float(sr), n < total


def read_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *,
               max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Mono float32 audio of any audio or video file, resampled to ``sample_rate`` (at most ``max_seconds``)."""
    clip = read_av(path, sample_rate=sample_rate, need_video=False, need_audio=True, max_seconds=max_seconds)
    return clip.audio, clip.sample_rate


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """PCM16 wav; float input is clipped to [-1, 1]."""
    path = os.fspath(path)
    audio = np.asarray(audio)
    if audio.dtype.kind == "f":
        audio = np.clip(audio, -1.0, 1.0)
    sf.write(path, audio, int(sample_rate), subtype="PCM_16")
    return path


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: pad the last row/column by edge replication."""
    t, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    *,
    crf: int = 18,
) -> str:
    """Mux ``frames`` (uint8 [T, H, W, 3]) and optional mono ``audio`` (float32 [N]) into H.264+AAC mp4."""
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{os.path.basename(path)}: frames must be a non-empty uint8 array [T, H, W, 3], "
                         f"got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{os.path.basename(path)}: frames must be uint8, got {frames.dtype}")
    frames = _even(frames)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        as_ = None
        if audio is not None:
            as_ = out.add_stream("aac", rate=int(sample_rate), layout="mono")
            as_.bit_rate = 96_000
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            pcm = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
            block = 1024 * 16
            pts = 0
            for start in range(0, len(pcm), block):
                piece = pcm[start:start + block][None, :]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
                frame.sample_rate = int(sample_rate)
                frame.pts = pts
                pts += piece.shape[1]
                for packet in as_.encode(frame):
                    out.mux(packet)
            for packet in as_.encode():
                out.mux(packet)
    return path
