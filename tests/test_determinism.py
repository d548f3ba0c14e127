"""Generation for a fixed seed is bit-identical to the stored hash made before the refactor.

The hashes below were recorded with the code of commit b6c7037 (before the architecture pass of
issue 17), on CPU, with one torch intra-op thread. They pin, bit for bit:
- the shipped checkpoint's streaming generation (4-step few-step mode, and 50-step multi-step mode
  with classifier-free guidance): decoded frames, audio, chunk latents and per-step latents;
- one loss + gradient of every training objective on fixed synthetic latents (micro preset).

Float results depend on the CPU kernels torch picks (its version and the instruction set), so the
hashes are tied to the platform they were recorded on (``RECORDED_ON``, and ``PLATFORM_HASHES`` for others);
elsewhere the tests skip and say why. After an intended change of outputs, re-record with
``python tests/test_determinism.py`` (it prints this platform's hashes of every case).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"

RECORDED_ON = "torch 2.14.1+cu130, cpu AVX2"
# Re-recorded once on purpose (2026-11-27, issue 12): assets/model became the long-horizon fine-tune
# (521 stage-3 steps from the previous checkpoint). The generation code did not change; with the previous
# weights (git show 7f09457:assets/model/...) the hashes were few_step_4 2795093a4d84...,
# multi_step_50_cfg 5d69692c8065..., and this test passed on them.
# The *_fused cases keep those hashes on the path that made them (the cache write folded into the next
# pass). Issue 15 (2026-11-28) made the CPU default write the cache beside the next pass, or as its own
# pass, which equals fuse_cache_write=False bit for bit and the fused path within float rounding (1e-6):
# few_step_4 and multi_step_50_cfg were recorded then, with that code and the same weights; few_step_4's
# value is also what the code before that change gave with fuse_cache_write=False (checked the same day).
# Issue 15 again (2026-11-28, later): decode() folds the video decoder's upsample + conv pairs. few_step_4
# was re-recorded for it; its previous value stays pinned as few_step_4_unfolded_decode (same code, the
# diffusers decoder). multi_step_50_cfg's 8 frames round to the same uint8 pixels either way.
GENERATION_HASHES = {
    "few_step_4": "44b34674d8d2a9da5985b108250ae0dd1b990bf76faa72ba9cdfccb1e4bd226a",
    "few_step_4_unfolded_decode": "d41adb7e0665a987b993d71f2db8c1d6316abbc41dfc61e9ea99bef886a93952",
    "multi_step_50_cfg": "5f1a1ccceda31e11054d6598a7b1485f38aba1069b4fb7d967dc6f79520d64f8",
    "multi_step_50_cfg_unfolded_decode": "5f1a1ccceda31e11054d6598a7b1485f38aba1069b4fb7d967dc6f79520d64f8",
    "few_step_4_fused": "e6ba27437dd7f050b71994c9a7630348f2208fff89ad15643d4af813cf61e96e",
    "multi_step_50_cfg_fused": "51bf24e6103ed887ac3989fcd09b363bdcb7e42bddff59bbebbf6b8bf4654496",
}
TRAINING_HASHES = {
    "flow_matching": "dcff2e35af1b8cb801b9df78df7b954bc4b14f3befe2ed077850e81a2ab1a311",
    "unimodal": "56aa5b1bdb0741bc06d9391c036d71d5d95856175f680e5b886ddeb8bf141f5d",
    "shortcut_model": "f4cce960cfccb188d76a5d7dece0314aeebcf9387235b364492c9f46ed5dfa88",
    # Re-recorded on purpose after the architecture pass (issue 12): stage 3's rollout now streams
    # through the pipeline's rolling cache with fused cache writes and one rollout serves several loss
    # chunks, so its losses changed by design; the value before issue 12 was e0a19668...cdb14.
    "mutual_forcing": "61a69d6edf22dc3e8c98c356ee0df3488216a3f1b57c2b26ec638c590f83d66e",
}

# The same cases on other platforms: {platform_key(): (generation hashes, training hashes)}.
# AVX512 (2026-11-28, issue 15): every case recorded with the code of aa13a16; later changes that claim the same
# bits (e.g. the memoised layouts and masks of a new chunk's first pass) are checked against these.
PLATFORM_HASHES: dict[str, tuple[dict, dict]] = {
    "torch 2.14.1+cu130, cpu AVX512": ({
        "few_step_4": "742704dcf286c5cc48a3a4b4611c962258e71f453ea0f9bb2125897b0b43e6eb",
        "few_step_4_fused": "f2311cef1e874abdef45a0d33e7e20c7170a83a6a06bab7cf0c169df51e8afac",
        "few_step_4_long_beside": "99ac33b5dbcecc8ce5c5441f4654703ed4ececc421e950b1277448963ef4bb18",
        "few_step_4_long_separate": "99ac33b5dbcecc8ce5c5441f4654703ed4ececc421e950b1277448963ef4bb18",
        "few_step_4_unfolded_decode": "842206fb9fd1ffcad8dde73776e9ede975e0fcf44cc864a6be86c86ed87a3529",
        "multi_step_50_cfg": "8e976b9610b36f699c2ee0e25fdba9547a99a04340f61f8154fd2db74fda6603",
        "multi_step_50_cfg_fused": "ebcb99cf0ab150279e85e3f08eeb06f7142b4ec753effc615985f01a02f49038",
        "multi_step_50_cfg_unfolded_decode": "9ef3b273445e5af877e8a3618e55409d543741fdc6d0032215cbd9d9d0423f8e",
        "multi_step_8_cfg_long": "6cf22c42de643d9859a8cf4b0be63c4b11ad87afdb7c74ab2e4cde63dcef20c5",
    }, {
        "flow_matching": "24cbe6c52ab9d13139e91720d1c23b7d13d0caf987c07eb64be0e53a03d14110",
        "unimodal": "e5118129e80c7f161e65910a56cd9e2b9ec95ebd8d1a3796c2e8a927652679ae",
        "shortcut_model": "16b92f7a2a2201da87c4fdcd3b660acb2758a0d5c9662a3ec0405e9119d6a291",
        "mutual_forcing": "5111f9d3bcbe595a54e9c4e9a156c73b67c9ec378f8628eee173dd02c8d083ab",
    }),
}


def platform_key() -> str:
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


GENERATION_CASES = {
    "few_step_4": dict(steps=4, seed=3, seconds=0.64, text="hello"),
    "multi_step_50_cfg": dict(steps=50, seed=5, seconds=0.32, text="hello", cfg_scale=1.5),
}
# The same generations with the video decoder as diffusers runs it (upsample, then conv; the default folds
# each pair into one transposed conv, mf.codecs.video.NearestUpConv): these keep the hashes recorded
# before that change, so the sampler's bits are pinned apart from the decoder's float rounding.
GENERATION_CASES.update({f"{name}_unfolded_decode": dict(kw, folded_decode=False)
                         for name, kw in list(GENERATION_CASES.items())})
GENERATION_CASES.update({f"{name}_fused": dict(kw, fuse_cache_write=True, write_beside=False, folded_decode=False)
                         for name, kw in list(GENERATION_CASES.items()) if "_unfolded" not in name})
# Streams past the cache window (tiny preset: 8 chunks of 4 frames = 1.28 s): the rolling window's eviction, the
# traced cache write of the steady shape (mf.traced), the write beside the next pass (forced here, whatever the
# machine's load) and as its own pass, and guided (batch 2) passes.
GENERATION_CASES.update({
    "few_step_4_long_beside": dict(steps=4, seed=4, seconds=2.0, text="hello there", write_beside=True),
    "few_step_4_long_separate": dict(steps=4, seed=4, seconds=2.0, text="hello there", write_beside=False),
    "multi_step_8_cfg_long": dict(steps=8, seed=6, seconds=1.6, text="hello", cfg_scale=1.5, mode="multi"),
})


def generation_hash(case: str) -> str:
    from mf.pipeline import generate, load_studio

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        studio = load_studio(assets=ASSETS)
        kwargs = dict(GENERATION_CASES[case])
        studio.video_codec.folded_decode = kwargs.pop("folded_decode", True)
        arrays = []
        for chunk in generate(studio, keep_step_latents=True, **kwargs):
            arrays += [chunk.frames, chunk.audio, chunk.video_latents, chunk.audio_latents]
            for sv, sa in chunk.step_latents:
                arrays += [sv, sa]
    finally:
        torch.set_num_threads(threads)
    return _digest(arrays)


def _micro_model(seed: int):
    from mf.model import MFTransformer

    torch.manual_seed(seed)
    model = MFTransformer.from_preset("micro")
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # zero-initialised heads would make every objective trivial
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _objective(name: str, model, batch, fc: int):
    """(tensors to hash, models whose gradients to hash) after one loss + backward."""
    from mf.train.flow_matching import flow_matching_loss, unimodal_flow_matching_loss
    from mf.train.mutual_forcing import make_fake_score, mutual_forcing_losses
    from mf.train.shortcut import shortcut_model_loss

    gen = torch.Generator().manual_seed(11)
    if name == "mutual_forcing":
        fake = make_fake_score(model)
        loss, fake_loss, _ = mutual_forcing_losses(model, batch, gen, fc=fc, fake=fake, history=2)  # MUTUAL
        (loss + fake_loss).backward()
        return [loss, fake_loss], [model, fake]
    fn = {"flow_matching": flow_matching_loss, "unimodal": unimodal_flow_matching_loss,
          "shortcut_model": shortcut_model_loss}[name]
    loss, _ = fn(model, batch, gen, frames_per_chunk=fc)
    loss.backward()
    return [loss], [model]


TRAINING_CASES = ("flow_matching", "unimodal", "shortcut_model", "mutual_forcing")


def training_hash(name: str) -> str:
    from mf.configs import get_preset
    from mf.train.latents import random_latents

    config = get_preset("micro")
    fc = config.frames_per_chunk
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        latents = random_latents(4, 6 * fc, channels=config.video_channels, size=config.latent_size,
                                 n_mels=config.n_mels, attr_dim=config.attr_dim, n_phonemes=config.n_phonemes,
                                 seed=7)
        batch = latents.sample(4, 3, fc, torch.Generator().manual_seed(2))
        model = _micro_model(0)
        values, models = _objective(name, model, batch, fc)
    finally:
        torch.set_num_threads(threads)
    grads = [p.grad if p.grad is not None else torch.zeros(0) for m in models for p in m.parameters()]
    return _digest(values + grads)


def _expected(kind: str, case: str) -> str:
    """The stored hash of ``case`` for this machine's platform (skips, saying why, where there is none)."""
    recorded = {RECORDED_ON: (GENERATION_HASHES, TRAINING_HASHES), **PLATFORM_HASHES}
    if platform_key() not in recorded:
        pytest.skip(f"hashes recorded on {sorted(recorded)!r}; this machine is {platform_key()!r}")
    value = recorded[platform_key()][kind == "training"].get(case)
    if value is None:
        pytest.skip(f"{case!r} was not recorded on {platform_key()!r}")
    return value


@pytest.mark.parametrize("case", sorted(GENERATION_CASES))
def test_generation_for_a_fixed_seed_is_bit_identical_to_the_stored_hash(case):
    if not (ASSETS / "model" / "config.json").is_file():
        pytest.skip("the shipped checkpoint assets/model is absent")
    assert generation_hash(case) == _expected("generation", case)


@pytest.mark.parametrize("name", TRAINING_CASES)
def test_one_step_of_each_training_objective_is_bit_identical_to_the_stored_hash(name):
    assert training_hash(name) == _expected("training", name)


if __name__ == "__main__":  # re-record (after an intended change of outputs only)
    import sys

    sys.path.insert(0, str(ROOT))
    print(f"RECORDED_ON = {platform_key()!r}")
    print("GENERATION_HASHES = " + repr({c: generation_hash(c) for c in sorted(GENERATION_CASES)}))
    print("TRAINING_HASHES = " + repr({n: training_hash(n) for n in TRAINING_CASES}))
