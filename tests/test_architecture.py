"""Specification of the package boundaries and shared contracts (docs/ARCHITECTURE.md).

- imports flow one way: ``mf`` never imports ``eval`` or ``app``; ``eval`` never imports ``app``;
- ``MFTransformer``'s config fields are exactly ``ModelConfig``'s (one list of fields);
- ``load_studio(model_dir=..., codecs=...)`` loads a given checkpoint with already loaded codecs and
  names a folder without weights;
- the one update rule ``flow_step`` is what ``Schedule.step`` and the training ``Pair.step`` apply.
- ``sample_chunk(grad="last")`` (the DMD sample) keeps the gradient of the last step only.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (absolute imports, anywhere in the file)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package, forbidden", [("mf", {"eval", "app"}), ("eval", {"app"})])
def test_imports_flow_one_way(package, forbidden):
    modules = imported_packages(package)
    assert len(modules) > 5, f"no modules found under {package}/"
    offenders = {path: sorted(names & forbidden) for path, names in modules.items() if names & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"


def test_model_config_fields_are_listed_once():
    from mf.configs import ModelConfig
    from mf.model import MFTransformer

    params = list(inspect.signature(MFTransformer.__init__).parameters)[1:]
    assert params == [f.name for f in dataclasses.fields(ModelConfig)]
    model = MFTransformer.from_preset("micro")
    assert dict(model.config)["dim"] == model.model_config.dim == 32
    assert MFTransformer.from_config(model.config).model_config == model.model_config


def test_load_studio_takes_a_model_folder_and_loaded_codecs(tmp_path):
    from mf.codecs import AudioCodec, VideoCodec
    from mf.model import MFTransformer
    from mf.pipeline import load_studio

    codecs = (VideoCodec.from_preset("micro"), AudioCodec.from_preset("micro"))
    model = MFTransformer.from_preset("micro", video_channels=codecs[0].latent_channels,
                                      latent_size=codecs[0].latent_size, n_mels=codecs[1].n_mels)
    model.save_pretrained(tmp_path / "weights")
    studio = load_studio(assets=tmp_path / "no_assets", model_dir=tmp_path / "weights", codecs=codecs)
    assert studio.trained and studio.checkpoint == str(tmp_path / "weights")
    assert studio.video_codec is codecs[0] and studio.audio_codec is codecs[1]
    with pytest.raises(ValueError, match="missing_weights"):
        load_studio(model_dir=tmp_path / "missing_weights", codecs=codecs)


def test_every_update_is_the_one_flow_step():
    from mf.sampler import flow_step, make_schedule
    from mf.train.flow_matching import Pair

    gen = torch.Generator().manual_seed(0)
    x, u = torch.randn(2, 2, 4, 8, 8, generator=gen), torch.randn(2, 2, 4, 8, 8, generator=gen)
    schedule = make_schedule(4)
    assert torch.equal(schedule.step(1, x, u), x - 0.25 * u)
    assert torch.equal(flow_step(x, u, 0.25), x - 0.25 * u)
    d = torch.tensor([[0.5], [0.25]])  # one step size per chunk, broadcast over its frames
    pair = Pair(x, torch.randn(2, 8, 16, generator=gen))
    stepped = pair.step(Pair(u, torch.ones(2, 8, 16)), d, frames_per_chunk=2)
    assert torch.equal(stepped.video[0], x[0] - 0.5 * u[0]) and torch.equal(stepped.video[1], x[1] - 0.25 * u[1])
    assert torch.equal(stepped.audio[1], pair.audio[1] - 0.25)


def test_sampler_can_keep_the_gradient_of_the_last_step_only():
    from mf.conditions import Conditions
    from mf.model import MFTransformer
    from mf.sampler import make_schedule, sample_chunk

    torch.manual_seed(0)
    model = MFTransformer.from_preset("micro")
    config = model.model_config
    with torch.no_grad():  # zero-initialised heads would give a velocity without any input dependence
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cond = Conditions(ref_latent=torch.randn(1, config.video_channels, config.latent_size, config.latent_size),
                      attributes=torch.zeros(1, config.attr_dim),
                      phone_ids=torch.zeros(1, config.mels_per_chunk, dtype=torch.long),
                      text_dropped=torch.zeros(1, dtype=torch.bool))
    grads = {}
    for grad in ("all", "last"):
        noise_v = torch.randn(1, config.frames_per_chunk, config.video_channels, config.latent_size,
                              config.latent_size, requires_grad=True)
        noise_a = torch.randn(1, config.mels_per_chunk, config.n_mels, requires_grad=True)
        with torch.no_grad():
            cache = model.new_cache(cond)
        model.zero_grad()
        out = sample_chunk(model, cache, cond, noise_v, noise_a, make_schedule(4), write="never", grad=grad)
        (out.video.square().sum() + out.audio.square().sum()).backward()
        grads[grad] = (noise_v.grad, model.video_out.weight.grad)
    assert grads["all"][0] is not None and float(grads["all"][0].abs().sum()) > 0
    assert grads["last"][0] is None                 # the noise only reaches the last step through no-grad steps
    assert float(grads["last"][1].abs().sum()) > 0  # ... but the last step's network pass carries gradient
    assert torch.is_grad_enabled()                  # the caller's grad mode is restored
