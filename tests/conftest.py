"""Fixtures shared by several test modules."""

import os

import pytest
import torch
from shared_data import REAL_AV_HOWTO

REAL_AV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_av")


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


@pytest.fixture(scope="module")
def talk3():
    """talk3 of ../shared/data/real_av and its mouth track (located once per module that uses it)."""
    if not os.path.exists(os.path.join(REAL_AV, "talk3.mp4")):
        pytest.skip(REAL_AV_HOWTO)
    from eval.mouth import locate_mouth
    from mf.media import read_av

    clip = read_av(os.path.join(REAL_AV, "talk3.mp4"))
    return clip, locate_mouth(clip.frames)
