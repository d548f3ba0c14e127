"""Specification of the package boundaries and shared contracts (docs/ARCHITECTURE.md).

- imports flow one way: ``mf`` never imports ``eval`` or ``app``; ``eval`` never imports ``app``;
- ``MFTransformer``'s config fields are exactly ``ModelConfig``'s (one list of fields);
- ``load_studio(model_dir=..., codecs=...)`` loads a given checkpoint with already loaded codecs and
  names a folder without weights;
- the one update rule ``flow_step`` is what ``Schedule.step`` and the training ``Pair.step`` apply.
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
