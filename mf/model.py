"""The Mutual Forcing network: a dual-tower, block-causal audio-video flow transformer with a KV cache.

Owns ``MFTransformer`` (diffusers ``ModelMixin`` + ``ConfigMixin``); its cache is ``mf.kv_cache.KVCache``
and its blocks live in ``mf.layers`` (``Block.forward``, one pass planned by a ``PassPlan``). Longer than
400 lines because its five passes (forward, write_cache, step_and_write, forward_teacher_forcing,
prefix_kv) share one set of private helpers (token layout, attention mask, embeddings) that read the
model's weights and config; splitting them out would only move ``self`` into their arguments.

Structure
- Two towers. The video tower owns the patch embedding (2x2 patches of the [C, 8, 8] latent -> 16
  tokens per frame), its qkv/out projections, norms, MLP and output head; the audio tower owns the
  same for audio tokens (``mels_per_audio_token`` mel frames grouped into one token). Per-tower qkv
  and out projections, but ONE joint softmax attention over [video tokens; audio tokens] in every
  block (MM-DiT style), so every token can read the other modality.
- Positions: rotary embeddings. Half of each head's pairs rotate with time on one shared axis
  (unit = one video frame; video frame i at i, mel frame j at j / 4), a quarter with the patch row,
  a quarter with the patch column. Audio tokens sit at the centre of the patch grid.
- Conditioning: adaLN-single. Embeddings of flow time t, step size d and the character attributes
  are summed per chunk and projected once per tower to 6 modulations (shift/scale/gate x attn/mlp);
  each block adds its own learned table (zero-init: every block starts as identity). Phoneme ids are
  embedded at the mel rate and added to the audio tokens of the same mels and to the video tokens of
  the same frame; a learned "no script" embedding replaces them where ``text_dropped``.
- Reference frame: patch-embedded by the video tower (+ a learned prefix embedding), run once
  through the blocks at t = d = 0; its keys/values form the global prefix every chunk attends to.
  The prefix has no time: its keys carry only the spatial rotation, and queries meet them with their
  spatial rotation only (``mf.layers.attend``). So the sink is equally visible after 1 s and after 100 s. Rotary
  scores depend only on time differences, and the window bounds them: a query meets keys at most
  (window_chunks + 1) * frames_per_chunk - 1 frames back (35 for tiny), at 1 s as at 100 s (checked:
  same output to 2e-5 at chunk 750). Training covers that range when its teacher-forcing windows
  and stage-3 histories exceed the window (mf.train.stages recipes; tests/test_long_horizon.py).

Attention rule (one function, ``_visibility``, used by every path): a key is visible to a query if
it is a prefix key, or in the query's own segment (a chunk is bidirectional inside), or it carries
history (clean/cached tokens) from one of the ``window_chunks`` chunks before the query's chunk.
(Older chunks still reach a chunk indirectly, through the keys of window chunks that saw them, exactly
as in the streaming cache; teacher forcing reproduces that.)

Paths
- ``forward(video, audio, t, d, cond, kv_cache=None)``: K chunks that continue ``kv_cache`` (or start
  at chunk 0). Each chunk sees the prefix, the cache and the earlier given chunks (block-causal).
- ``write_cache(video, audio, cond, cache)``: the t = 0 pass over one finished chunk; stores its keys/
  values (rolling window of ``window_chunks`` chunks, prefix never evicted).
- ``forward_teacher_forcing(noisy, clean, t, d, cond)``: one pass over [prefix; clean chunks; noisy
  chunks]; noisy chunk k sees clean chunks k-W..k-1 and itself. Equals the cache path (tested).
- ``step_and_write(...)``: the cache write of a finished chunk fused into the next chunk's first
  denoising pass (same keys, same mask; the pipeline's default).
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import weakref
from functools import partial

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from mf.conditions import Conditions
from mf.configs import ModelConfig, get_preset
from mf.constants import MELS_PER_FRAME
from mf.kv_cache import PREFIX_CHUNK, KVCache
from mf.layers import DENOISE, PREFIX, WRITE, Block, Layout, PassPlan, ScalarEmbed
from mf.traced import TracedWrite

# Token groups for the attention rule.
GROUP_HISTORY = 1   # clean chunks (cache or teacher forcing) and causal inputs: visible to later chunks
GROUP_NOISY = 2     # noisy chunks of teacher forcing: visible only inside their own chunk
_MEMO_LOCK = threading.Lock()
_TRACED_WRITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> its TracedWrite


def _capturing() -> bool:
    """True while this thread captures a CUDA graph (host syncs are illegal then; see mf.graphs)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _signature_of_model_config(init):
    """Give ``init`` the signature ``(self, *, <every ModelConfig field> = its default)``.

    diffusers' ``register_to_config`` and ``from_pretrained`` read the ``__init__`` signature to know
    which config keys to save and pass back; deriving it from the dataclass keeps ``ModelConfig`` the
    one list of fields.
    """
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                 annotation=f.type) for f in dataclasses.fields(ModelConfig)]
    init.__signature__ = inspect.Signature(params)
    return init


class _LayerContexts:
    """``cache.context(layer)`` fetched when the layer runs, not before the pass (see ``_run_blocks``)."""

    def __init__(self, cache):
        self.cache = cache

    def __getitem__(self, layer: int) -> tuple:
        return self.cache.context(layer)


class MFTransformer(ModelMixin, ConfigMixin):
    """Dual-tower block-causal flow transformer predicting the average velocity u(x_t, t, d)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    @_signature_of_model_config
    def __init__(self, **fields):
        """Keyword arguments: the fields of ``mf.configs.ModelConfig`` (defaults = the tiny preset);
        prefer ``MFTransformer.from_preset(name)``. The typed config is ``self.model_config``; diffusers
        keeps the same fields as ``self.config`` (what ``save_pretrained`` writes)."""
        super().__init__()
        self.model_config = config = ModelConfig(**fields)
        # CPU inference cache writes run as traces (mf.traced: same bits, no GIL between kernels); False = eager
        self.traced_cache_write = True
        dim, p, n_mels = config.dim, config.patch_size, config.n_mels
        video_channels, mels_per_audio_token = config.video_channels, config.mels_per_audio_token
        self.head_dim = dim // config.heads
        # --- inputs ---
        self.video_in = nn.Linear(video_channels * p * p, dim)
        self.audio_in = nn.Linear(mels_per_audio_token * n_mels, dim)
        self.prefix_embed = nn.Parameter(torch.zeros(dim))
        self.video_phone = nn.Embedding(config.n_phonemes, dim)
        self.audio_phone = nn.Embedding(config.n_phonemes, dim)
        self.video_no_script = nn.Parameter(torch.zeros(dim))
        self.audio_no_script = nn.Parameter(torch.zeros(dim))
        # --- conditioning (adaLN-single) ---
        self.t_embed = ScalarEmbed(dim)
        self.d_embed = ScalarEmbed(dim)
        self.attr_embed = nn.Linear(config.attr_dim, dim)
        self.video_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.audio_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.video_final_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.audio_final_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        # --- blocks and outputs ---
        self.blocks = nn.ModuleList([Block(dim, config.heads, config.mlp_ratio) for _ in range(config.depth)])
        self.video_norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.audio_norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.video_out = nn.Linear(dim, video_channels * p * p)
        self.audio_out = nn.Linear(dim, mels_per_audio_token * n_mels)
        self._init_weights()
        self._rope_freqs()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MFTransformer":
        return cls(**get_preset(name, **overrides).to_dict())

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.video_phone, self.audio_phone):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.prefix_embed, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.d_embed.mlp[0].weight, std=0.02)
        # adaLN-Zero: modulations start at zero (blocks = identity), outputs start at zero velocity.
        for seq in (self.video_mod, self.audio_mod, self.video_final_mod, self.audio_final_mod):
            nn.init.zeros_(seq[1].weight)
            nn.init.zeros_(seq[1].bias)
        for lin in (self.video_out, self.audio_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _rope_freqs(self) -> None:
        pairs = self.head_dim // 2
        n_time, n_space = pairs // 2, pairs // 4
        time_freqs = self.model_config.rope_theta ** (-torch.arange(n_time, dtype=torch.float32) / n_time)
        space_freqs = 100.0 ** (-torch.arange(n_space, dtype=torch.float32) / n_space)
        self.register_buffer("time_freqs", time_freqs, persistent=False)
        self.register_buffer("space_freqs", space_freqs, persistent=False)

    # ------------------------------------------------------------------ token layout
    def _rope_tables(self, time_pos: torch.Tensor, yx: torch.Tensor):
        """Angles -> interleaved cos/sin [N, hd] with and without the time rotation."""
        ang_y, ang_x, cos_sp, sin_sp = self._space_tables(yx)
        return (*self._time_tables(time_pos, ang_y, ang_x), cos_sp, sin_sp)

    def _space_tables(self, yx: torch.Tensor):
        """Positions yx [N, 2] -> their spatial angles and the space-only cos/sin [N, hd] (time rotation zero)."""
        ang_y = yx[:, 0:1] * self.space_freqs
        ang_x = yx[:, 1:2] * self.space_freqs
        zero_t = yx.new_zeros(yx.shape[0], self.time_freqs.numel())
        space = torch.cat([zero_t, ang_y, ang_x], dim=-1).repeat_interleave(2, dim=-1)
        return ang_y, ang_x, space.cos(), space.sin()

    def _time_tables(self, time_pos: torch.Tensor, ang_y: torch.Tensor, ang_x: torch.Tensor):
        """Times [N] and spatial angles -> the full (time + space) cos/sin [N, hd]."""
        ang_t = time_pos[:, None] * self.time_freqs
        full = torch.cat([ang_t, ang_y, ang_x], dim=-1).repeat_interleave(2, dim=-1)
        return full.cos(), full.sin()

    def _layout(self, chunks: list[int], groups: list[int], device, with_video: bool = True,
                with_audio: bool = True) -> Layout:
        """Token positions for segments = chunks (video tokens of all segments first, then audio).

        Memoised (a few entries): the 4..50 steps of one chunk share one layout.
        """
        key = (tuple(chunks), tuple(groups), with_video, with_audio, str(device))
        return self._memo("_layout_memo", key, lambda: self._make_layout(chunks, groups, device, with_video,
                                                                         with_audio))

    def _memo(self, name: str, key, make):
        """A small per-model memo (8 entries, oldest evicted); safe when several threads share the model."""
        memo = self.__dict__.setdefault(name, {})
        value = memo.get(key)
        if value is None and key not in memo:
            value = make()
            with _MEMO_LOCK:
                while len(memo) >= 8:
                    memo.pop(next(iter(memo)))
                memo[key] = value
        return value

    def _make_layout(self, chunks, groups, device, with_video, with_audio) -> Layout:
        config = self.model_config
        fc = config.frames_per_chunk if with_video else 0
        tpf = config.tokens_per_frame
        at = config.audio_tokens_per_chunk if with_audio else 0
        # what does not depend on the chunks' positions: computed once per pass shape (a new chunk's first pass
        # then computes only its time rotation; same ops on the same values as computing it all, same bits)
        static = self._memo("_layout_static_memo", (len(chunks), fc, at, str(device)),
                            lambda: self._layout_static(len(chunks), fc, at, device))
        ang_y, ang_x, cos_sp, sin_sp, token_seg = static
        chunk_t = torch.tensor(chunks, dtype=torch.float32, device=device)
        # video: frame index (in frames); audio: first mel of the token's group, in frames (4 mels per frame)
        frame = (chunk_t[:, None] * fc + torch.arange(fc, device=device)).repeat_interleave(tpf, dim=1)
        mel = chunk_t[:, None] * config.mels_per_chunk + torch.arange(at, device=device) * config.mels_per_audio_token
        a_time = mel / MELS_PER_FRAME
        cos, sin = self._time_tables(torch.cat([frame.reshape(-1), a_time.reshape(-1)]), ang_y, ang_x)
        ch = torch.tensor(chunks, dtype=torch.long, device=device)
        gr = torch.tensor(groups, dtype=torch.long, device=device)
        return Layout(chunks, groups, cos, sin, cos_sp, sin_sp, ch[token_seg], gr[token_seg], token_seg)

    def _layout_static(self, n_chunks: int, fc: int, at: int, device) -> tuple:
        """The position-free part of ``_make_layout`` for ``n_chunks`` segments: the spatial angles, the
        space-only rotary tables (``_space_tables``) and each token's segment."""
        config = self.model_config
        grid = config.latent_size // config.patch_size
        rows = torch.arange(grid, device=device).repeat_interleave(grid).float()
        cols = torch.arange(grid, device=device).repeat(grid).float()
        v_yx = torch.stack([rows, cols], dim=-1).repeat(fc * n_chunks, 1)
        a_yx = torch.full((n_chunks * at, 2), (grid - 1) / 2.0, device=device)
        seg = torch.arange(n_chunks, device=device)
        token_seg = torch.cat([seg.repeat_interleave(fc * config.tokens_per_frame), seg.repeat_interleave(at)])
        return (*self._space_tables(torch.cat([v_yx, a_yx])), token_seg)

    def _cache_pass(self, cache, chunks: list[int], groups: list[int], device, with_video: bool = True,
                    with_audio: bool = True) -> tuple[Layout, torch.Tensor | None]:
        """(layout, mask) of a pass continuing ``cache``: a static cache (``mf.static_cache``) hands out its
        fixed-address buffers, filled by ``_layout`` and ``_visibility_matrix``; else mask None (memoised)."""
        static_pass = getattr(cache, "static_pass", None)
        if static_pass is not None:
            return static_pass(self, chunks, groups, with_video, with_audio)
        return self._layout(chunks, groups, device, with_video, with_audio), None

    def _visibility(self, layout: Layout, ctx_chunk: torch.Tensor, ctx_key: tuple) -> torch.Tensor | None:
        """Boolean [Nq, Nctx + Nq] attention mask (None when every key is visible). Memoised by chunk positions
        relative to the pass's first chunk: the rule compares chunk ids only with each other (and the prefix's
        mark), so every chunk of steady streaming finds the mask of the chunk before it."""
        base = layout.chunks[0] if layout.chunks else 0
        relative_ctx = ctx_key[:1] + tuple(index - base for index in ctx_key[1:])   # (prefix keys, chunks...)
        key = (tuple(c - base for c in layout.chunks), tuple(layout.groups), int(layout.token_seg.numel()),
               relative_ctx, str(ctx_chunk.device))
        return self._memo("_mask_memo", key, lambda: self._make_visibility(layout, ctx_chunk))

    def _make_visibility(self, layout: Layout, ctx_chunk: torch.Tensor) -> torch.Tensor | None:
        mask = self._visibility_matrix(layout, ctx_chunk)
        return None if bool(mask.all()) else mask

    def _visibility_matrix(self, layout: Layout, ctx_chunk: torch.Tensor) -> torch.Tensor:
        """THE attention rule as a boolean [Nq, Nctx + Nq] matrix (no host sync: static-shape runners)."""
        w = self.model_config.window_chunks
        q_chunk = layout.token_chunk[:, None]
        n_ctx = ctx_chunk.numel()
        # context keys: prefix, or cached history inside the query's window
        ctx = ctx_chunk[None, :]
        ctx_vis = (ctx == PREFIX_CHUNK) | ((ctx < q_chunk) & (ctx >= q_chunk - w))
        # keys of this pass: own segment, or history-carrying segments inside the window
        k_chunk = layout.token_chunk[None, :]
        k_hist = (layout.token_group == GROUP_HISTORY)[None, :]
        own = layout.token_seg[:, None] == layout.token_seg[None, :]
        self_vis = own | (k_hist & (k_chunk < q_chunk) & (k_chunk >= q_chunk - w))
        return torch.cat([ctx_vis, self_vis], dim=1) if n_ctx else self_vis

    # ------------------------------------------------------------------ embeddings
    def _cond_embed(self, t: torch.Tensor, d: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """t, d [B, S] -> [B, S, D]."""
        return self.t_embed(t) + self.d_embed(d) + self.attr_embed(attributes)[:, None, :]

    def _check_phone_ids(self, ids: torch.Tensor, n_seg: int) -> None:
        config = self.model_config
        if ids.shape[1] != n_seg * config.mels_per_chunk:
            raise ValueError(f"phone_ids cover {ids.shape[1]} mel frames, "
                             f"the chunks need {n_seg * config.mels_per_chunk}")
        if ids.numel() and not _capturing() and (int(ids.min()) < 0 or int(ids.max()) >= config.n_phonemes):
            raise ValueError(f"phone_ids must lie in [0, {config.n_phonemes}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")

    def _phone_features(self, cond: Conditions, n_seg: int):
        """Phoneme embeddings for the given segments: video [B, S, Fc, D] (per frame), audio [B, S, At, D]."""
        config = self.model_config
        b = cond.batch_size
        ids = cond.phone_ids
        if not torch.jit.is_tracing():   # a traced write checks them before it runs (write_cache)
            self._check_phone_ids(ids, n_seg)
        dropped = cond.text_dropped.view(b, 1, 1, 1)
        v = self.video_phone(ids).view(b, n_seg, config.frames_per_chunk, MELS_PER_FRAME, -1).mean(3)
        a = self.audio_phone(ids).view(b, n_seg, config.audio_tokens_per_chunk, config.mels_per_audio_token, -1).mean(3)
        v = torch.where(dropped, self.video_no_script.to(v.dtype), v)
        a = torch.where(dropped, self.audio_no_script.to(a.dtype), a)
        return v, a

    def _embed_chunks(self, video: torch.Tensor | None, audio: torch.Tensor | None, cond: Conditions):
        """video [B, S*Fc, C, h, w], audio [B, S*Fc*4, M] -> tokens [B, S, Vt, D], [B, S, At, D].

        Either modality may be None (uni-modal pretraining): its tower then has no tokens (0 per chunk).
        """
        config = self.model_config
        fc, p, g = config.frames_per_chunk, config.patch_size, config.mels_per_audio_token
        if video is None and audio is None:
            raise ValueError("at least one of video and audio latents is required")
        if video is None:
            b, n_mels = audio.shape[:2]
            if n_mels % config.mels_per_chunk:
                raise ValueError(f"audio has {n_mels} mel frames, not a multiple of {config.mels_per_chunk} per chunk")
            s = n_mels // config.mels_per_chunk
        else:
            b, n_frames = video.shape[:2]
            if n_frames % fc:
                raise ValueError(f"video has {n_frames} frames, not a multiple of frames_per_chunk={fc}")
            s = n_frames // fc
        pv, pa = self._phone_features(cond, s)
        d = config.dim
        if audio is None:
            xa = pa.new_zeros(b, s, 0, d)
        else:
            if audio.shape[:2] != (b, s * config.mels_per_chunk) or audio.shape[2] != config.n_mels:
                raise ValueError(f"audio must be [B={b}, {s * config.mels_per_chunk}, {config.n_mels}] for {s} chunks, "
                                 f"got {tuple(audio.shape)}")
            xa = self.audio_in(audio.reshape(b, s, config.audio_tokens_per_chunk, g * config.n_mels)) + pa
        if video is None:
            return pv.new_zeros(b, s, 0, d), xa
        if video.shape[2:] != (config.video_channels, config.latent_size, config.latent_size):
            raise ValueError(f"video latents must be [B, F, {config.video_channels}, {config.latent_size}, "
                             f"{config.latent_size}], got {tuple(video.shape)}")
        grid = config.latent_size // p
        patches = (video.reshape(b, s, fc, config.video_channels, grid, p, grid, p)
                   .permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, s, fc * grid * grid, config.video_channels * p * p))
        xv = self.video_in(patches)
        xv = (xv.view(b, s, fc, grid * grid, -1) + pv[:, :, :, None, :]).view(b, s, fc * grid * grid, -1)
        return xv, xa

    def _unpatchify(self, yv: torch.Tensor | None, ya: torch.Tensor | None):
        config = self.model_config
        fc, p, c = config.frames_per_chunk, config.patch_size, config.video_channels
        grid = config.latent_size // p
        video = audio = None
        if yv is not None:
            b, s = yv.shape[:2]
            video = (yv.reshape(b, s, fc, grid, grid, c, p, p).permute(0, 1, 2, 5, 3, 6, 4, 7)
                     .reshape(b, s * fc, c, config.latent_size, config.latent_size))
        if ya is not None:
            b, s = ya.shape[:2]
            audio = ya.reshape(b, s * config.mels_per_chunk, config.n_mels)
        return video, audio

    # ------------------------------------------------------------------ core pass
    def _run_blocks(self, xv, xa, emb, layout: Layout, ctx, ctx_chunk: torch.Tensor,
                    ctx_key: tuple = (), plan: PassPlan = DENOISE, mask: torch.Tensor | None = None,
                    on_layer=None):
        """Run all blocks over segment tokens xv [B,S,Vt,D], xa [B,S,At,D] (either may have 0 tokens).

        emb [B, S, D]: the per-segment conditioning embedding (t, d, attributes). ctx: per layer
        (prefix_k, prefix_v, history_k | None, history_v | None), or None (the prefix pass itself).
        Returns (xv, xa, kvs), kvs[layer] = rotated (k, v) of this pass's tokens; ``plan`` says what the
        last block may skip (``mf.layers.PassPlan``). ``mask``: the pass's visibility when the caller has it
        (a static cache's buffer); None = ``_visibility`` of the context. ``ctx`` is indexed per layer when
        that layer runs (a cache being written beside this pass hands layer l over when it is ready).
        ``on_layer(li, (k, v))``: called as soon as each block's keys/values exist (before its attention).
        """
        b, s, vt, d = xv.shape
        at = xa.shape[2]
        mod_v = self.video_mod(emb).view(b, s, 6, d) if vt else None   # [B, S, 6, D] shared adaLN
        mod_a = self.audio_mod(emb).view(b, s, 6, d) if at else None
        if mask is None and ctx is not None:
            mask = self._visibility(layout, ctx_chunk, ctx_key)
        rope = tuple(table.to(xv.dtype) for table in (layout.cos, layout.sin, layout.cos_sp, layout.sin_sp))
        kvs = []
        for li, block in enumerate(self.blocks):
            last = li == len(self.blocks) - 1
            layer_ctx = None if ctx is None else partial(ctx.__getitem__, li)  # read when attention needs it
            xv, xa, kv = block(xv, xa, mod_v, mod_a, rope, layer_ctx, mask, layout, plan, last,
                               None if on_layer is None else partial(on_layer, li))
            kvs.append(kv)
        return xv, xa, kvs

    def _traced_write(self) -> TracedWrite:
        """This model's ``mf.traced.TracedWrite`` (kept outside the module: copies and state dicts never see it)."""
        with _MEMO_LOCK:
            traced = _TRACED_WRITES.get(self)
            if traced is None:
                config = self.model_config
                traced = _TRACED_WRITES[self] = TracedWrite(self, config.window_chunks * config.tokens_per_chunk)
        return traced

    def _split_kvs(self, kvs, layout: Layout, seg: int):
        """Keys/values of one segment out of a pass's [video of all segs; audio of all segs] tokens.

        Slices, no index search: no host sync, so a CUDA graph can capture it."""
        s, config = len(layout.chunks), self.model_config
        vt, at = config.video_tokens_per_chunk, config.audio_tokens_per_chunk
        if layout.token_seg.numel() != s * (vt + at):
            raise ValueError("_split_kvs needs a pass with both modalities")
        v_part, a_part = slice(seg * vt, (seg + 1) * vt), slice(s * vt + seg * at, s * vt + (seg + 1) * at)
        return [(torch.cat([k[:, :, v_part], k[:, :, a_part]], 2), torch.cat([v[:, :, v_part], v[:, :, a_part]], 2))
                for k, v in kvs]

    def _output(self, xv, xa, emb):
        b, s, _, d = xv.shape
        yv = ya = None
        if xv.shape[2]:
            fv = self.video_final_mod(emb).view(b, s, 2, d)
            yv = self.video_out(self.video_norm_out(xv) * (1 + fv[:, :, 1:2]) + fv[:, :, 0:1])
        if xa.shape[2]:
            fa = self.audio_final_mod(emb).view(b, s, 2, d)
            ya = self.audio_out(self.audio_norm_out(xa) * (1 + fa[:, :, 1:2]) + fa[:, :, 0:1])
        return self._unpatchify(yv, ya)

    # ------------------------------------------------------------------ public API
    def prefix_kv(self, cond: Conditions) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys/values of the reference-frame prefix (t = d = 0)."""
        config = self.model_config
        ref = cond.ref_latent
        b = ref.shape[0]
        if ref.shape[1:] != (config.video_channels, config.latent_size, config.latent_size):
            raise ValueError(f"ref_latent must be [B, {config.video_channels}, {config.latent_size}, "
                             f"{config.latent_size}], got {tuple(ref.shape)}")
        if cond.attributes.shape[1] != config.attr_dim:
            raise ValueError(f"attributes must have {config.attr_dim} entries, got {cond.attributes.shape[1]}")
        p, grid = config.patch_size, config.latent_size // config.patch_size
        patches = (ref.reshape(b, config.video_channels, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5)
                   .reshape(b, 1, grid * grid, config.video_channels * p * p))
        xv = self.video_in(patches) + self.prefix_embed
        xa = xv.new_zeros(b, 1, 0, xv.shape[-1])
        zero = ref.new_zeros(b, 1)
        emb = self._cond_embed(zero, zero, cond.attributes)
        rows = torch.arange(grid, device=ref.device).repeat_interleave(grid).float()
        cols = torch.arange(grid, device=ref.device).repeat(grid).float()
        yx = torch.stack([rows, cols], dim=-1)
        cos, sin, cos_sp, sin_sp = self._rope_tables(torch.zeros(grid * grid, device=ref.device), yx)
        n = grid * grid
        zl = torch.zeros(n, dtype=torch.long, device=ref.device)
        layout = Layout([PREFIX_CHUNK], [GROUP_HISTORY], cos, sin, cos_sp, sin_sp, zl + PREFIX_CHUNK,
                         zl + GROUP_HISTORY, zl)
        empty = torch.zeros(0, dtype=torch.long, device=ref.device)
        _, _, kvs = self._run_blocks(xv, xa, emb, layout, None, empty, plan=PREFIX)
        return kvs

    def new_cache(self, cond: Conditions) -> KVCache:
        """An empty cache holding the prefix of ``cond.ref_latent``."""
        cache = KVCache(window=self.model_config.window_chunks)
        cache.set_prefix(self.prefix_kv(cond))
        return cache

    def _check_td(self, t: torch.Tensor, d: torch.Tensor, b: int, s: int, device, dtype):
        t = torch.as_tensor(t, device=device, dtype=dtype)
        d = torch.as_tensor(d, device=device, dtype=dtype)
        t = t.expand(b, s) if t.dim() < 2 else t
        d = d.expand(b, s) if d.dim() < 2 else d
        if t.shape != (b, s) or d.shape != (b, s):
            raise ValueError(f"t and d must be [B={b}, K={s}] (one value per chunk), "
                             f"got {tuple(t.shape)}, {tuple(d.shape)}")
        return t, d

    def forward(self, video: torch.Tensor, audio: torch.Tensor, t, d, cond: Conditions,
                kv_cache: KVCache | None = None):
        """Velocity for K chunks continuing ``kv_cache`` (or starting at chunk 0 without one).

        video [B, K*Fc, C, h, w], audio [B, K*Fc*4, M], t/d [B, K] (or scalars) -> (u_video, u_audio).
        Chunk k of the input sees the prefix, the cached chunks inside its window, the earlier input
        chunks inside its window (block-causal) and itself.
        """
        xv, xa = self._embed_chunks(video, audio, cond)
        b, s = xv.shape[:2]
        t, d = self._check_td(t, d, b, s, xv.device, torch.float32)
        if kv_cache is None:
            prefix = self.prefix_kv(cond)
            ctx = [(pk, pv, None, None) for pk, pv in prefix]
            ids = torch.full((prefix[0][0].shape[2],), PREFIX_CHUNK, dtype=torch.long, device=xv.device)
            key = (int(ids.numel()),)
            start = 0
        else:
            if kv_cache.prefix[0][0].shape[0] != b:
                raise ValueError(f"kv_cache holds batch {kv_cache.prefix[0][0].shape[0]}, input has {b}")
            ctx = _LayerContexts(kv_cache)   # read per layer as it runs
            ids = kv_cache.context_chunk_ids
            key = kv_cache.context_key
            start = kv_cache.next_chunk
        layout, mask = self._cache_pass(kv_cache, [start + i for i in range(s)], [GROUP_HISTORY] * s, xv.device,
                                        video is not None, audio is not None)
        emb = self._cond_embed(t, d, cond.attributes)
        xv, xa, _ = self._run_blocks(xv, xa, emb, layout, ctx, ids, key, mask=mask)
        return self._output(xv, xa, emb)

    def write_cache(self, video: torch.Tensor, audio: torch.Tensor, cond: Conditions, cache: KVCache,
                    on_layer=None) -> KVCache:
        """Store one finished (clean) chunk in ``cache`` with a t = d = 0 pass; returns the cache.

        ``on_layer(li, (k, v))``: each layer's keys/values as soon as they exist (``KVCache.incoming``'s
        ``publish``: a pass in another thread reads them before the whole write is done)."""
        if self.traced_cache_write:
            kvs = self._traced_write_pass(video, audio, cond, cache, on_layer)
            if kvs is not None:
                cache.append(cache.next_chunk, kvs)
                return cache
        xv, xa = self._embed_chunks(video, audio, cond)
        b, s = xv.shape[:2]
        if s != 1:
            raise ValueError(f"write_cache takes exactly one chunk, got {s}")
        zero = xv.new_zeros(b, 1)
        emb = self._cond_embed(zero, zero, cond.attributes)
        index = cache.next_chunk
        layout, mask = self._cache_pass(cache, [index], [GROUP_HISTORY], xv.device)
        ctx = [cache.context(i) for i in range(len(self.blocks))]
        _, _, kvs = self._run_blocks(xv, xa, emb, layout, ctx, cache.context_chunk_ids, cache.context_key,
                                     plan=WRITE, mask=mask, on_layer=on_layer)
        cache.append(index, [(k.detach(), v.detach()) for k, v in kvs])
        return cache

    def _write_head(self, video, audio, cond: Conditions):
        """``write_cache``'s arithmetic before the blocks, for one chunk of both modalities: its tokens and the
        t = d = 0 modulations (xv, xa, mod_v, mod_a); what ``mf.traced`` traces as the write's head."""
        xv, xa = self._embed_chunks(video, audio, cond)
        b, s, _, d = xv.shape
        zero = xv.new_zeros(b, 1)
        emb = self._cond_embed(zero, zero, cond.attributes)
        return xv, xa, self.video_mod(emb).view(b, s, 6, d), self.audio_mod(emb).view(b, s, 6, d)

    def _traced_write_pass(self, video, audio, cond: Conditions, cache, on_layer):
        """The keys/values of ``write_cache`` run as traces (``mf.traced.TracedWrite``: the same bits, no Python
        between kernels) when the write has the shape of steady CPU streaming: one chunk of both modalities,
        a rolling ``KVCache`` holding a full window, every key visible. None otherwise (the caller writes eagerly, and
        reports a wrong input)."""
        config = self.model_config
        if (type(cache) is not KVCache or video is None or audio is None or video.dtype != torch.float32
                or video.shape[1:] != (config.frames_per_chunk, config.video_channels, config.latent_size,
                                       config.latent_size)
                or audio.shape != (video.shape[0], config.mels_per_chunk, config.n_mels)
                or cond.batch_size != video.shape[0] or cache.prefix[0][0].shape[0] != video.shape[0]):
            return None
        traced = self._traced_write()
        n_prefix = cache.context_key[0]
        if not traced.applies(video, n_prefix, cache.context_chunk_ids.numel() - n_prefix):
            return None
        layout = self._layout([cache.next_chunk], [GROUP_HISTORY], video.device)   # a rolling cache: no mask buffer
        if self._visibility(layout, cache.context_chunk_ids, cache.context_key) is not None:
            return None
        self._check_phone_ids(cond.phone_ids, 1)
        ctx = [cache.context(i) for i in range(len(self.blocks))]
        rope = (layout.cos, layout.sin, layout.cos_sp, layout.sin_sp)
        return traced.write(video, audio, cond, rope, ctx, n_prefix, on_layer)

    def forward_teacher_forcing(self, noisy_video, noisy_audio, clean_video, clean_audio, t, d, cond: Conditions):
        """Training pass over [prefix; clean chunks 0..K-1; noisy chunks 0..K-1] in one forward.

        Noisy chunk k sees the prefix, clean chunks k-W..k-1 and itself; clean chunk k sees the prefix,
        clean chunks k-W..k (exactly what the cache would hold). Returns the velocity of the noisy
        chunks (u_video [B, K*Fc, C, h, w], u_audio [B, K*Fc*4, M]). ``cond.phone_ids`` covers K chunks.
        """
        for noisy, clean in ((noisy_video, clean_video), (noisy_audio, clean_audio)):
            if (noisy is None) != (clean is None) or (noisy is not None and noisy.shape != clean.shape):
                raise ValueError("noisy and clean chunks must have the same shapes (and the same modalities)")
        nv, na = self._embed_chunks(noisy_video, noisy_audio, cond)
        cv, ca = self._embed_chunks(clean_video, clean_audio, cond)
        b, k = nv.shape[:2]
        t, d = self._check_td(t, d, b, k, nv.device, torch.float32)
        zero = torch.zeros_like(t)
        emb = torch.cat([self._cond_embed(zero, zero, cond.attributes), self._cond_embed(t, d, cond.attributes)], 1)
        layout = self._layout(list(range(k)) * 2, [GROUP_HISTORY] * k + [GROUP_NOISY] * k, nv.device,
                              noisy_video is not None, noisy_audio is not None)
        prefix = self.prefix_kv(cond)
        ids = torch.full((prefix[0][0].shape[2],), PREFIX_CHUNK, dtype=torch.long, device=nv.device)
        ctx = [(pk, pv, None, None) for pk, pv in prefix]
        xv, xa, _ = self._run_blocks(torch.cat([cv, nv], 1), torch.cat([ca, na], 1), emb, layout, ctx, ids,
                                     (int(ids.numel()),), plan=PassPlan(outputs_from=k))
        return self._output(xv, xa, emb[:, k:])

    def step_and_write(self, noisy_video, noisy_audio, t, d, clean_video, clean_audio, cond_noisy: Conditions,
                       cond_clean: Conditions, cache: KVCache):
        """Fused: write the finished chunk ``clean`` into ``cache`` and run the next chunk's first step.

        Exactly ``write_cache(clean)`` followed by ``forward(noisy, kv_cache=cache)`` (same keys, same
        mask), in one pass with one weight read per layer. Returns (u_video, u_audio) of the noisy chunk.
        """
        cv, ca = self._embed_chunks(clean_video, clean_audio, cond_clean)
        nv, na = self._embed_chunks(noisy_video, noisy_audio, cond_noisy)
        b = nv.shape[0]
        t, d = self._check_td(t, d, b, 1, nv.device, torch.float32)
        zero = torch.zeros_like(t)
        emb = torch.cat([self._cond_embed(zero, zero, cond_clean.attributes),
                         self._cond_embed(t, d, cond_noisy.attributes)], 1)
        index = cache.next_chunk
        layout, mask = self._cache_pass(cache, [index, index + 1], [GROUP_HISTORY, GROUP_NOISY], nv.device)
        ctx = [cache.context(i) for i in range(len(self.blocks))]
        xv, xa, kvs = self._run_blocks(torch.cat([cv, nv], 1), torch.cat([ca, na], 1), emb, layout, ctx,
                                       cache.context_chunk_ids, cache.context_key,
                                       plan=PassPlan(outputs_from=1), mask=mask)
        cache.append(index, [(k.detach(), v.detach()) for k, v in self._split_kvs(kvs, layout, 0)])
        return self._output(xv, xa, emb[:, 1:])
