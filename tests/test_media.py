"""mf.media: round trips through real containers, resampling, and one typed error per kind of bad file."""

import os

import av
import numpy as np
import pytest
from shared_data import REAL_AV_HOWTO

from mf.media import (
    MediaError,
    NoAudioStreamError,
    NotMediaError,
    NoVideoStreamError,
    UnsupportedCodecError,
    ZeroDurationError,
    read_audio,
    read_av,
    resample_audio,
    write_mp4,
    write_wav,
)

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_av")


def _clip(seconds=2.0, size=64, fps=25, sr=16000):
    t = int(seconds * fps)
    y, x = np.mgrid[0:size, 0:size]
    frames = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):  # smooth moving gradient: codec-friendly, and every frame differs
        frames[i, ..., 0] = (x * 4 + i * 3) % 256
        frames[i, ..., 1] = (y * 4) % 256
        frames[i, ..., 2] = 128
    n = t * sr // fps
    tt = np.arange(n) / sr
    # A tone with a random slow envelope: aperiodic, so a cross-correlation has one clear peak.
    envelope = np.repeat(np.random.default_rng(1).uniform(0.2, 1.0, n // 800 + 1), 800)[:n]
    audio = (0.4 * np.sin(2 * np.pi * 220 * tt) * envelope).astype(np.float32)
    return frames, audio


def _lag_and_corr(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ea, eb = np.abs(a) - np.abs(a).mean(), np.abs(b) - np.abs(b).mean()  # envelopes: robust to phase
    xc = np.fft.irfft(np.fft.rfft(ea, 2 * n) * np.conj(np.fft.rfft(eb, 2 * n)))
    lag = int(np.argmax(xc))
    lag = lag - 2 * n if lag > n else lag
    return lag, float(np.corrcoef(a, b)[0, 1])


def test_mp4_round_trip_keeps_frames_and_audio(tmp_path):
    frames, audio = _clip()
    path = write_mp4(tmp_path / "clip.mp4", frames, 25, audio, 16000)
    clip = read_av(path)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert np.abs(clip.frames.astype(int) - frames.astype(int)).mean() < 4  # H.264 at crf 18
    lag, corr = _lag_and_corr(clip.audio, audio)
    assert abs(lag) <= 2 and corr > 0.98
    assert clip.source_fps == pytest.approx(25) and clip.source_sample_rate == 16000
    assert clip.duration == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("ext,vcodec,acodec", [("mov", "libx264", "aac"), ("mkv", "libx264", "flac"),
                                               ("webm", "libvpx-vp9", "libopus"), ("avi", "mpeg4", "pcm_s16le")])
def test_reads_common_containers_at_other_rates(tmp_path, ext, vcodec, acodec):
    """Any container, any fps / sample rate / channel count comes back at 25 fps, 16 kHz mono."""
    frames, _ = _clip(seconds=2.0, fps=30)
    sr = 48000 if acodec == "libopus" else 44100
    tt = np.arange(int(2.0 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 300 * tt), np.sin(2 * np.pi * 300 * tt)]).astype(np.float32) * 0.3
    path = str(tmp_path / f"clip.{ext}")
    with av.open(path, "w") as out:
        vs = out.add_stream(vcodec, rate=30)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        as_ = out.add_stream(acodec, rate=sr, layout="stereo")
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        fmt = {"pcm_s16le": "s16", "flac": "s16", "libopus": "flt", "aac": "fltp"}[acodec]
        block = 960 if acodec == "libopus" else 1024
        for s in range(0, stereo.shape[1] - block + 1, block):
            piece = stereo[:, s:s + block]
            if fmt == "s16":
                arr = (piece.T.reshape(1, -1) * 32767).astype(np.int16)
            elif fmt == "flt":
                arr = np.ascontiguousarray(piece.T.reshape(1, -1))
            else:
                arr = np.ascontiguousarray(piece)
            frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout="stereo")
            frame.sample_rate, frame.pts = sr, s
            for p in as_.encode(frame):
                out.mux(p)
        for p in as_.encode():
            out.mux(p)
    clip = read_av(path)
    assert clip.frames.shape[1:] == (64, 64, 3)
    assert abs(clip.frames.shape[0] - 50) <= 1  # 2 s at 25 fps
    assert clip.source_fps == pytest.approx(30, abs=0.5)
    assert clip.source_sample_rate == sr and clip.source_channels == 2
    assert clip.audio.dtype == np.float32 and abs(len(clip.audio) - 32000) < 1600
    spectrum = np.abs(np.fft.rfft(clip.audio[4000:20000]))
    assert np.fft.rfftfreq(16000, 1 / 16000)[np.argmax(spectrum)] == pytest.approx(300, abs=2)


def test_wav_round_trip_is_sample_exact(tmp_path):
    _, audio = _clip()
    q = np.round(audio * 32767) / 32767
    write_wav(tmp_path / "a.wav", audio)
    back, sr = read_audio(tmp_path / "a.wav")
    assert sr == 16000 and back.shape == audio.shape
    assert np.abs(back - q).max() < 1e-4


def test_resample_audio_preserves_a_tone():
    sr = 44100
    tone = np.sin(2 * np.pi * 1000 * np.arange(sr) / sr).astype(np.float32)
    out = resample_audio(tone, sr, 16000)
    assert len(out) == 16000
    assert np.fft.rfftfreq(16000, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(out)))] == pytest.approx(1000, abs=1)


def test_variable_frame_rate_real_clip_is_resampled_to_25_fps():
    path = os.path.join(REAL, "talk1.mp4")
    if not os.path.exists(path):
        pytest.skip(REAL_AV_HOWTO)
    clip = read_av(path)
    assert clip.frames.shape[0] == pytest.approx(clip.duration * 25, abs=2)
    assert clip.source_sample_rate == 44100 and clip.source_channels == 2
    assert len(clip.audio) == pytest.approx(clip.duration * 16000, rel=0.02)


# ---- every bad file gives its typed error, naming the file ----

def _assert_names_file(err: MediaError, name: str):
    assert name in str(err) and err.path.endswith(name)


def test_random_bytes_are_not_media(tmp_path):
    p = tmp_path / "noise.mp4"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(NotMediaError) as e:
        read_av(p)
    _assert_names_file(e.value, "noise.mp4")


def test_empty_and_missing_files_are_not_media(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(NotMediaError, match="empty.mp4"):
        read_av(tmp_path / "empty.mp4")
    with pytest.raises(NotMediaError, match="missing.mp4"):
        read_av(tmp_path / "missing.mp4")


def test_truncated_mp4_is_corrupt(tmp_path):
    frames, audio = _clip()
    data = open(write_mp4(tmp_path / "full.mp4", frames, 25, audio), "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(NotMediaError) as e:
        read_av(tmp_path / "cut.mp4")
    _assert_names_file(e.value, "cut.mp4")


def test_video_without_sound_has_no_audio_stream(tmp_path):
    frames, _ = _clip()
    write_mp4(tmp_path / "mute.mp4", frames)
    with pytest.raises(NoAudioStreamError, match="mute.mp4"):
        read_av(tmp_path / "mute.mp4")
    assert read_av(tmp_path / "mute.mp4", need_audio=False).audio is None


def test_audio_file_has_no_video_stream(tmp_path):
    write_wav(tmp_path / "voice.wav", np.zeros(1600, np.float32))
    with pytest.raises(NoVideoStreamError, match="voice.wav"):
        read_av(tmp_path / "voice.wav")


def test_zero_duration_files(tmp_path):
    write_wav(tmp_path / "nothing.wav", np.zeros(0, np.float32))
    with pytest.raises(ZeroDurationError, match="nothing.wav"):
        read_audio(tmp_path / "nothing.wav")
    path = str(tmp_path / "never_written.mp4")
    out = av.open(path, "w")
    vs = out.add_stream("libx264", rate=25)
    vs.width = vs.height = 64
    out.start_encoding()
    out.close()
    with pytest.raises(ZeroDurationError, match="never_written.mp4"):
        read_av(path)


def test_unknown_codec_is_unreadable(tmp_path):
    frames, _ = _clip()
    data = open(write_mp4(tmp_path / "ok.mp4", frames), "rb").read()
    # Rename the H.264 sample entry so FFmpeg no longer knows the codec.
    (tmp_path / "alien.mp4").write_bytes(data.replace(b"avc1", b"qqq9").replace(b"avcC", b"qqqC"))
    with pytest.raises(UnsupportedCodecError) as e:
        read_av(tmp_path / "alien.mp4", need_audio=False)
    _assert_names_file(e.value, "alien.mp4")


def test_write_mp4_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", np.zeros((3, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_mp4(tmp_path / "g.mp4", np.zeros((8, 8, 3), np.uint8))


def test_odd_sizes_are_padded_for_yuv420(tmp_path):
    frames = np.full((5, 33, 47, 3), 200, np.uint8)
    clip = read_av(write_mp4(tmp_path / "odd.mp4", frames), need_audio=False)
    assert clip.frames.shape == (5, 34, 48, 3)


def test_aac_frame_padding_is_trimmed_to_the_stream_duration(tmp_path):
    """AAC decodes in 1024-sample frames; a 5 s clip must read back as 5 s of audio, not 5.06 s."""
    n_frames = 125
    audio = (np.random.RandomState(0).randn(n_frames * 640) * 0.1).astype(np.float32)
    path = write_mp4(tmp_path / "padded.mp4", np.zeros((n_frames, 64, 64, 3), np.uint8), 25, audio, 16000)
    clip = read_av(path)
    assert len(clip.audio) == n_frames * 640
    assert np.corrcoef(clip.audio[1000:-1000], audio[1000:-1000])[0, 1] > 0.9


def _faststart_copy(src, dst):
    """Remux with the moov atom at the front (what web tools upload): a cut file still has its header."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for pkt in i.demux():
            if pkt.dts is not None:
                pkt.stream = streams[pkt.stream.index]
                o.mux(pkt)
    return str(dst)


def test_every_decoder_path_honours_the_length_cap(tmp_path):
    import soundfile as sf

    frames, audio = _clip(seconds=4.0)
    long_audio = np.tile(audio, 5)  # 20 s
    paths = [write_wav(tmp_path / "a.wav", long_audio), write_mp4(tmp_path / "v.mp4", frames, 25, audio)]
    sf.write(tmp_path / "a.flac", long_audio, 16000)
    paths.append(str(tmp_path / "a.flac"))
    for path in paths:
        for need_video in ((False, True) if path.endswith(".mp4") else (False,)):
            clip = read_av(path, need_video=need_video, max_seconds=1.5)
            assert clip.capped and clip.duration <= 1.5 + 1e-6 and clip.audio.shape[0] <= 1.5 * 16000, path
            assert clip.n_frames <= round(1.5 * 25)
            assert clip.declared_duration == pytest.approx(20.0 if "a." in path else 4.0, abs=0.1)
    whole = read_av(paths[1])
    assert not whole.capped and whole.declared_duration == pytest.approx(whole.duration, abs=0.05)


def test_a_truncated_file_with_its_header_at_the_front_decodes_less_than_it_declares(tmp_path):
    frames, audio = _clip(seconds=3.0)
    full = _faststart_copy(write_mp4(tmp_path / "full.mp4", frames, 25, audio), tmp_path / "fs.mp4")
    data = open(full, "rb").read()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    clip = read_av(tmp_path / "half.mp4")
    assert clip.declared_duration == pytest.approx(3.0, abs=0.05) and clip.duration < 2.0 and not clip.capped


def test_media_errors_name_the_file_never_its_folder(tmp_path):
    deep = tmp_path / "server" / "uploads"
    deep.mkdir(parents=True)
    for name in ("junk.mp4", "junk.wav"):
        (deep / name).write_bytes(b"\x01" * 4000)
        with pytest.raises(MediaError) as e:
            read_av(deep / name, need_video=name.endswith(".mp4"))
        assert name in str(e.value) and str(deep) not in str(e.value) and str(deep) not in e.value.reason


def test_one_list_of_media_extensions():
    from mf.media import AUDIO_EXTS, MEDIA_EXTS, VIDEO_EXTS

    assert MEDIA_EXTS == VIDEO_EXTS + AUDIO_EXTS and {".mp4", ".avi", ".wav", ".flac"} <= set(MEDIA_EXTS)
    assert all(e.startswith(".") and e == e.lower() for e in MEDIA_EXTS)
