"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """Initial-weight studio (no assets) with the micro model, its weights randomised so outputs vary.
    A module that needs another studio defines its own fixture of this name."""
    from mf.pipeline import load_studio

    s = load_studio(assets=tmp_path_factory.mktemp("no_assets"), preset="micro", codec_preset="micro")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return s
