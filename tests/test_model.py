"""Specification of the MFTransformer (micro preset): block causality, KV-cache streaming, rolling window."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mf.conditions import Conditions
from mf.configs import PRESETS, get_preset
from mf.model import MFTransformer

B, K = 2, 5  # micro: 2 frames per chunk, window of 2 chunks -> K = 5 exercises the rolling window


def randomized(model: MFTransformer, seed: int = 0) -> MFTransformer:
    """adaLN-Zero makes a fresh model output exactly 0; give every weight a random value instead."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomized(MFTransformer.from_preset("micro"))


def make_inputs(model, k=K, b=B, seed=1):
    cfg = model.model_config
    g = torch.Generator().manual_seed(seed)
    c, h = cfg.video_channels, cfg.latent_size
    n_frames, n_mels = k * cfg.frames_per_chunk, k * cfg.mels_per_chunk
    clean_v = torch.randn(b, n_frames, c, h, h, generator=g)
    clean_a = torch.randn(b, n_mels, cfg.n_mels, generator=g)
    noisy_v = torch.randn(b, n_frames, c, h, h, generator=g)
    noisy_a = torch.randn(b, n_mels, cfg.n_mels, generator=g)
    t = torch.rand(b, k, generator=g)
    d = torch.rand(b, k, generator=g) * t
    cond = Conditions(ref_latent=torch.randn(b, c, h, h, generator=g),
                      attributes=torch.rand(b, cfg.attr_dim, generator=g) * 2 - 1,
                      phone_ids=torch.randint(0, cfg.n_phonemes, (b, n_mels), generator=g),
                      text_dropped=torch.tensor([False, True])[:b])
    return clean_v, clean_a, noisy_v, noisy_a, t, d, cond


def chunk(x, k, per_chunk):
    return x[:, k * per_chunk:(k + 1) * per_chunk]


def test_presets_are_frozen_configs_with_consistent_token_counts():
    tiny = get_preset("tiny")
    assert tiny.tokens_per_frame == 16 and tiny.audio_tokens_per_chunk == 8 and tiny.tokens_per_chunk == 72
    assert tiny.video_channels == 8 and tiny.n_mels == 80
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.dim = 1  # frozen
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        get_preset("tiny", widht=3)
    assert set(PRESETS) >= {"micro", "tiny", "small", "base"}


def test_output_shapes_match_inputs_and_depend_on_every_condition(model):
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    with torch.no_grad():
        uv, ua = model(nv, na, t, d, cond)
        assert uv.shape == nv.shape and ua.shape == na.shape
        assert uv.abs().mean() > 1e-3 and ua.abs().mean() > 1e-3
        for changed in (
            Conditions(cond.ref_latent + 1, cond.attributes, cond.phone_ids, cond.text_dropped),
            Conditions(cond.ref_latent, -cond.attributes, cond.phone_ids, cond.text_dropped),
            Conditions(cond.ref_latent, cond.attributes, (cond.phone_ids + 1) % model.model_config.n_phonemes,
                       cond.text_dropped),
        ):
            uv2, ua2 = model(nv, na, t, d, changed)
            assert not torch.allclose(uv[0], uv2[0]) and not torch.allclose(ua[0], ua2[0])
        uv_d, _ = model(nv, na, t, torch.zeros_like(d), cond)  # the step size is an input
        assert not torch.allclose(uv, uv_d)


def test_dropped_script_ignores_phoneme_ids(model):
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    dropped = cond.with_text_dropped()
    other = Conditions(dropped.ref_latent, dropped.attributes, torch.zeros_like(dropped.phone_ids),
                       dropped.text_dropped)
    with torch.no_grad():
        a, b = model(nv, na, t, d, dropped), model(nv, na, t, d, other)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_causality_changing_chunk_k_plus_1_leaves_chunks_up_to_k_unchanged(model):
    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    k = 2
    nv2, na2, cv2, ca2 = nv.clone(), na.clone(), cv.clone(), ca.clone()
    for x, per in ((nv2, fc), (cv2, fc), (na2, mc), (ca2, mc)):
        x[:, (k + 1) * per:] += 3.0
    with torch.no_grad():
        # causal forward over K chunks
        a, b = model(nv, na, t, d, cond), model(nv2, na2, t, d, cond)
        torch.testing.assert_close(a[0][:, :(k + 1) * fc], b[0][:, :(k + 1) * fc], rtol=0, atol=0)
        torch.testing.assert_close(a[1][:, :(k + 1) * mc], b[1][:, :(k + 1) * mc], rtol=0, atol=0)
        assert not torch.allclose(a[0][:, (k + 1) * fc:], b[0][:, (k + 1) * fc:])
        # teacher forcing: noisy chunk j depends on clean chunks < j and itself only
        a = model.forward_teacher_forcing(nv, na, cv, ca, t, d, cond)
        b = model.forward_teacher_forcing(nv2, na2, cv2, ca2, t, d, cond)
        torch.testing.assert_close(a[0][:, :(k + 1) * fc], b[0][:, :(k + 1) * fc], rtol=0, atol=0)
        torch.testing.assert_close(a[1][:, :(k + 1) * mc], b[1][:, :(k + 1) * mc], rtol=0, atol=0)
        # ... and clean chunk k itself is history of noisy chunk k + 1
        cv3 = cv.clone()
        cv3[:, k * fc:(k + 1) * fc] += 3.0
        c = model.forward_teacher_forcing(nv, na, cv3, ca, t, d, cond)
        torch.testing.assert_close(a[0][:, :(k + 1) * fc], c[0][:, :(k + 1) * fc], rtol=0, atol=0)
        assert not torch.allclose(a[0][:, (k + 1) * fc:(k + 2) * fc], c[0][:, (k + 1) * fc:(k + 2) * fc])


def test_rolling_window_attends_only_to_the_last_w_chunks():
    """Noisy chunk k attends to clean chunks k-W..k-1 only. With one layer keys are pure projections of
    each chunk's input, so an older chunk cannot leak in (deeper models carry it on through the keys of
    the chunks that saw it, exactly as the streaming cache does)."""
    torch.manual_seed(0)
    one_layer = randomized(MFTransformer.from_preset("micro", depth=1))
    fc, w = one_layer.model_config.frames_per_chunk, one_layer.model_config.window_chunks
    cv, ca, nv, na, t, d, cond = make_inputs(one_layer)
    cv2 = cv.clone()
    cv2[:, :fc] += 3.0  # clean chunk 0
    with torch.no_grad():
        a = one_layer.forward_teacher_forcing(nv, na, cv, ca, t, d, cond)
        b = one_layer.forward_teacher_forcing(nv, na, cv2, ca, t, d, cond)
    for k in range(1, K):
        sl = slice(k * fc, (k + 1) * fc)
        if k <= w:
            assert not torch.allclose(a[0][:, sl], b[0][:, sl]), f"chunk {k} should see clean chunk 0"
        else:
            torch.testing.assert_close(a[0][:, sl], b[0][:, sl], rtol=0, atol=0)


def incremental(model, cv, ca, nv, na, t, d, cond, fused=False):
    """Stream chunk by chunk: predict the noisy chunk against the cache, then write the clean one."""
    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    k_total = nv.shape[1] // fc
    cache = model.new_cache(cond)
    outs, sizes = [], []
    for k in range(k_total):
        ck = cond.chunk_slice(k, 1, fc)
        if fused and k > 0:
            u = model.step_and_write(chunk(nv, k, fc), chunk(na, k, mc), t[:, k:k + 1], d[:, k:k + 1],
                                     chunk(cv, k - 1, fc), chunk(ca, k - 1, mc), ck,
                                     cond.chunk_slice(k - 1, 1, fc), cache)
        else:
            if k > 0:
                model.write_cache(chunk(cv, k - 1, fc), chunk(ca, k - 1, mc), cond.chunk_slice(k - 1, 1, fc), cache)
            u = model(chunk(nv, k, fc), chunk(na, k, mc), t[:, k:k + 1], d[:, k:k + 1], ck, kv_cache=cache)
        outs.append(u)
        sizes.append((cache.n_cached_chunks, cache.num_bytes()))
    return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1), cache, sizes


@pytest.mark.parametrize("fused", [False, True], ids=["write_cache", "fused_step_and_write"])
def test_kv_cache_streaming_equals_teacher_forcing_forward(model, fused):
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    with torch.no_grad():
        ref_v, ref_a = model.forward_teacher_forcing(nv, na, cv, ca, t, d, cond)
        inc_v, inc_a, _, _ = incremental(model, cv, ca, nv, na, t, d, cond, fused=fused)
    scale = ref_v.abs().max()
    torch.testing.assert_close(inc_v, ref_v, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(inc_a, ref_a, rtol=1e-4, atol=1e-5 * scale)


def test_a_pass_reading_a_cache_while_it_is_written_beside_it_equals_one_run_after_the_write(model):
    """KVCache.incoming + write_cache(on_layer=...) in another thread == write_cache, then forward (bit for bit),
    through the window's evictions; the view says what the written cache will hold before any key exists."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    k_total = cfg.window_chunks + 3
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=k_total)
    with torch.no_grad(), ThreadPoolExecutor(1) as pool:
        after, beside = model.new_cache(cond), model.new_cache(cond)
        for k in range(1, k_total):
            clean = (chunk(cv, k - 1, fc), chunk(ca, k - 1, mc), cond.chunk_slice(k - 1, 1, fc))
            noisy = (chunk(nv, k, fc), chunk(na, k, mc), t[:, k:k + 1], d[:, k:k + 1], cond.chunk_slice(k, 1, fc))
            model.write_cache(*clean, after)
            ref = model(*noisy, kv_cache=after)
            view = beside.incoming(k - 1, cfg.tokens_per_chunk)
            assert view.context_key == after.context_key
            assert torch.equal(view.context_chunk_ids, after.context_chunk_ids)
            job = pool.submit(model.write_cache, *clean, beside, on_layer=view.publish)
            out = model(*noisy, kv_cache=view)
            job.result()
            for x, y in zip(out, ref):
                assert torch.equal(x, y)
            assert [i for i, _ in beside.chunks] == [i for i, _ in after.chunks]
    assert after.n_cached_chunks == cfg.window_chunks  # the window was full and evicting
    with pytest.raises(ValueError, match="expects chunk"):
        beside.incoming(0, cfg.tokens_per_chunk)


def test_a_pass_waiting_on_a_failed_write_raises(model):
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=2)
    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    with torch.no_grad():
        cache = model.new_cache(cond)
        view = cache.incoming(0, cfg.tokens_per_chunk)
        view.fail(OSError("write failed"))
        with pytest.raises(RuntimeError, match="beside this pass failed"):
            model(chunk(nv, 1, fc), chunk(na, 1, mc), t[:, 1:2], d[:, 1:2], cond.chunk_slice(1, 1, fc), kv_cache=view)


def test_forward_of_clean_chunks_equals_cache_path(model):
    """model(...) over K chunks without a cache is the same block-causal pass the cache reproduces."""
    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=3)
    t[:, :2] = 0.0  # the cache holds chunks written at t = d = 0
    d[:, :2] = 0.0
    with torch.no_grad():
        full_v, _ = model(cv, ca, t, d, cond)
        cache = model.new_cache(cond)
        model.write_cache(chunk(cv, 0, fc), chunk(ca, 0, mc), cond.chunk_slice(0, 1, fc), cache)
        model.write_cache(chunk(cv, 1, fc), chunk(ca, 1, mc), cond.chunk_slice(1, 1, fc), cache)
        last_v, _ = model(chunk(cv, 2, fc), chunk(ca, 2, mc), t[:, 2:3], d[:, 2:3], cond.chunk_slice(2, 1, fc),
                          kv_cache=cache)
    torch.testing.assert_close(last_v, full_v[:, 2 * fc:], rtol=1e-4, atol=1e-4)


def test_rolling_cache_memory_is_constant_after_the_window(model):
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=8)
    w = model.model_config.window_chunks
    with torch.no_grad():
        _, _, cache, sizes = incremental(model, cv, ca, nv, na, t, d, cond)
    counts = [n for n, _ in sizes]
    assert counts == [min(k, w) for k in range(8)]
    steady = [nbytes for n, nbytes in sizes[w:]]
    assert len(set(steady)) == 1 and steady[0] > sizes[0][1]
    assert cache.next_chunk == 7 and [i for i, _ in cache.chunks] == list(range(7 - w, 7))


def test_forward_does_not_mutate_the_cache_and_clone_is_independent(model):
    cfg = model.model_config
    fc, mc = cfg.frames_per_chunk, cfg.mels_per_chunk
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=2)
    with torch.no_grad():
        cache = model.new_cache(cond)
        model.write_cache(chunk(cv, 0, fc), chunk(ca, 0, mc), cond.chunk_slice(0, 1, fc), cache)
        before = (cache.next_chunk, cache.num_bytes())
        args = (chunk(nv, 1, fc), chunk(na, 1, mc), t[:, 1:2], d[:, 1:2], cond.chunk_slice(1, 1, fc))
        a = model(*args, kv_cache=cache)
        b = model(*args, kv_cache=cache)
        assert (cache.next_chunk, cache.num_bytes()) == before
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        copy = cache.clone()
        model.write_cache(chunk(cv, 1, fc), chunk(ca, 1, mc), cond.chunk_slice(1, 1, fc), copy)
        assert copy.next_chunk == 2 and cache.next_chunk == 1


def test_unimodal_inputs_run_only_their_tower(model):
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    with torch.no_grad():
        uv, ua = model(nv, None, t, d, cond)
        assert ua is None and uv.shape == nv.shape
        uv, ua = model.forward_teacher_forcing(None, na, None, ca, t, d, cond)
        assert uv is None and ua.shape == na.shape


def test_save_load_round_trip(model, tmp_path):
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    model.save_pretrained(tmp_path / "m")
    loaded = MFTransformer.from_pretrained(str(tmp_path / "m")).eval()
    assert loaded.model_config == model.model_config
    with torch.no_grad():
        a, b = model(nv, na, t, d, cond), loaded(nv, na, t, d, cond)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors(model):
    cfg = model.model_config
    cv, ca, nv, na, t, d, cond = make_inputs(model)
    with pytest.raises(ValueError, match="not a multiple of frames_per_chunk"):
        model(nv[:, :-1], na, t, d, cond)
    with pytest.raises(ValueError, match="audio must be"):
        model(nv, na[:, :-1], t, d, cond)
    with pytest.raises(ValueError, match="one value per chunk"):
        model(nv, na, t[:, :2], d, cond)
    with pytest.raises(ValueError, match="phone_ids cover"):
        model(nv, na, t, d, cond.mel_slice(0, cfg.mels_per_chunk))
    bad = Conditions(cond.ref_latent, cond.attributes, cond.phone_ids + cfg.n_phonemes, cond.text_dropped)
    with pytest.raises(ValueError, match="phone_ids must lie"):
        model(nv, na, t, d, bad)
    with pytest.raises(ValueError, match="attributes must have"):
        model(nv, na, t, d, Conditions(cond.ref_latent, cond.attributes[:, :3], cond.phone_ids, cond.text_dropped))
    with pytest.raises(ValueError, match="attributes must be"):
        Conditions(cond.ref_latent, cond.attributes[:1], cond.phone_ids, cond.text_dropped)
    cache = model.new_cache(cond)
    with pytest.raises(ValueError, match="exactly one chunk"):
        model.write_cache(cv, ca, cond, cache)


def test_timestamps_are_relative_and_the_prefix_is_timeless(model):
    """Only relative time enters attention and the reference prefix carries no time, so a chunk at
    60 s sees exactly what the same chunk at 0 s sees (long generation never leaves the trained range)."""
    cfg = model.model_config
    cv, ca, nv, na, t, d, cond = make_inputs(model, k=1)
    late = int(60.0 / cfg.chunk_seconds)
    with torch.no_grad():
        early_cache, late_cache = model.new_cache(cond), model.new_cache(cond)
        late_cache.next_chunk = late
        a = model(nv, na, t, d, cond, kv_cache=early_cache)
        b = model(nv, na, t, d, cond, kv_cache=late_cache)
    scale = a[0].abs().max()
    torch.testing.assert_close(b[0], a[0], rtol=1e-3, atol=1e-3 * scale)
    torch.testing.assert_close(b[1], a[1], rtol=1e-3, atol=1e-3 * scale)


def test_memoised_layouts_and_masks_equal_the_rule_computed_afresh(model):
    """A new chunk's pass reuses the position-free part of its layout and the mask of any pass with the same
    chunk positions relative to its first chunk; both must equal what computing them from scratch gives."""
    from mf.model import GROUP_HISTORY, GROUP_NOISY

    cfg = model.model_config
    w, n = cfg.window_chunks, cfg.tokens_per_chunk
    fresh = randomized(MFTransformer.from_preset("micro"))   # empty memos
    for chunks, groups in (([7], [GROUP_HISTORY]), ([30], [GROUP_HISTORY]), ([3, 4], [GROUP_HISTORY, GROUP_NOISY])):
        model._layout([0] * len(chunks), groups, "cpu")      # the memo holds another position's layout first
        got = model._layout(chunks, groups, "cpu")
        want = fresh._make_layout(chunks, groups, "cpu", True, True)
        for field in ("cos", "sin", "cos_sp", "sin_sp", "token_chunk", "token_group", "token_seg"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    cases = []   # (query chunk, cached chunk indices): steady windows, a filling one, one too old for the window
    for q in (5, 6, 40):
        cases.append((q, list(range(q - w, q))))
    cases += [(1, [0]), (9, [6, 8]), (12, [8, 11])]
    for q, cached in cases:
        prefix = 3
        ids = torch.cat([torch.full((prefix,), -(10**9))] + [torch.full((n,), i) for i in cached])
        key = (prefix,) + tuple(cached)
        layout = model._layout([q], [GROUP_HISTORY], "cpu")
        got = model._visibility(layout, ids, key)
        want = fresh._make_visibility(fresh._make_layout([q], [GROUP_HISTORY], "cpu", True, True), ids)
        assert (got is None) == (want is None) and (got is None or torch.equal(got, want)), (q, cached)
