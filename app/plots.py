"""Plotly figures the generation tabs show: the denoising trajectory and per-chunk timings.

The trajectory figure answers "what do 4 steps do differently from 50?": the latent of one chunk
after every denoising step, for each step count, projected with scikit-learn PCA fitted on all of
them together (one shared 2-D basis, so the paths are comparable). Same seed, same start noise:
the few-step path takes big jumps, the 50-step path a smooth curve; where they end is what matters.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from sklearn.decomposition import PCA

_COLORS = {4: "#e4572e", 8: "#f3a712", 50: "#29335c"}


def flatten_latent(item) -> np.ndarray:
    """One step's latent(s) as a flat float64 vector: a tensor, a (video, audio) pair, or a dict."""
    if isinstance(item, dict):
        parts = [item[k] for k in sorted(item)]
    elif isinstance(item, (tuple, list)):
        parts = list(item)
    else:
        parts = [item]
    flat = []
    for part in parts:
        if part is None:
            continue
        if hasattr(part, "detach"):
            part = part.detach().float().cpu().numpy()
        flat.append(np.asarray(part, dtype=np.float64).reshape(-1))
    if not flat:
        raise ValueError("a step latent held no arrays")
    return np.concatenate(flat)


def trajectory_figure(paths: dict[int, list], *, chunk_index: int = 0, title: str | None = None) -> go.Figure:
    """``paths``: steps -> list of per-step latents (after each step) for the same chunk and seed."""
    paths = {int(k): v for k, v in paths.items() if v}
    if not paths:
        raise ValueError("no step latents to plot")
    vectors = {k: np.stack([flatten_latent(x) for x in v]) for k, v in paths.items()}
    sizes = {v.shape[1] for v in vectors.values()}
    if len(sizes) != 1:
        raise ValueError(f"step latents of different sizes cannot share a projection: {sorted(sizes)}")
    stacked = np.concatenate(list(vectors.values()), axis=0)
    n_components = min(2, stacked.shape[0], stacked.shape[1])
    pca = PCA(n_components=n_components, random_state=0).fit(stacked)
    fig = go.Figure()
    for steps in sorted(vectors):
        xy = pca.transform(vectors[steps])
        if xy.shape[1] == 1:
            xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
        n = xy.shape[0]
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name=f"{steps} steps",
            line=dict(color=_COLORS.get(steps), width=2),
            marker=dict(size=[6] * (n - 1) + [13], symbol=["circle"] * (n - 1) + ["star"]),
            text=[f"{steps} steps: after step {i + 1}/{n}" for i in range(n)], hoverinfo="text",
        ))
    total_var = float(np.var(stacked, axis=0).sum())
    ratio = np.nan_to_num(pca.explained_variance_ratio_) if total_var > 0 else np.zeros(n_components)
    if total_var <= 1e-12 * max(1.0, float(np.abs(stacked).mean())):
        # All latents equal: the network's velocity is zero (e.g. untrained output layers start at zero).
        fig.add_annotation(text="every step leaves the latent unchanged: the model predicts zero velocity "
                                "(initial weights?)", showarrow=False, x=0.5, y=0.9, xref="paper", yref="paper")
    fig.update_layout(
        title=title or f"Denoising trajectory of chunk {chunk_index} (PCA of the latent after each step; ★ = final)",
        xaxis_title=f"PC1 ({100 * ratio[0]:.0f}% of variance)",
        yaxis_title=f"PC2 ({100 * ratio[1]:.0f}% of variance)" if len(ratio) > 1 else "PC2",
        height=380, margin=dict(l=40, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.2),
        template="plotly_white",
    )
    return fig


def chunk_timing_figure(chunks, *, selected: int | None = None) -> go.Figure:
    """Stacked bars of model and decode seconds per chunk; the selected chunk is outlined."""
    idx = [int(c.index) for c in chunks]
    model = [float((c.timings or {}).get("model_s", 0.0)) for c in chunks]
    decode = [float((c.timings or {}).get("decode_s", 0.0)) for c in chunks]
    line = [3 if i == selected else 0 for i in idx]
    fig = go.Figure([
        go.Bar(x=idx, y=model, name="model", marker=dict(color="#29335c", line=dict(width=line, color="#e4572e"))),
        go.Bar(x=idx, y=decode, name="decode", marker=dict(color="#f3a712", line=dict(width=line, color="#e4572e"))),
    ])
    fig.update_layout(barmode="stack", title="Seconds per chunk", xaxis_title="chunk", yaxis_title="s",
                      height=260, margin=dict(l=40, r=10, t=40, b=40), template="plotly_white",
                      legend=dict(orientation="h", y=-0.3))
    return fig
