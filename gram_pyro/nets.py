"""The neural pieces of GRAM (docs/design.md §1), each named after what it parameterizes.

Symbols:
    x      input tokens ``[..., L]``; ``e_x = embed(x) * sqrt(D) + pos`` its encoding (computed once).
    h, l   the slow (high) and fast (low) latent states, ``[..., P + L, D]`` (P prefix tokens).
    f_low  ``l <- f_low(l + h + e_x)``, run K times per transition with h fixed.
    f_high ``u_t = f_high(h + l)``, the deterministic high-level proposal.
    eps_t  Gaussian guidance: prior ``N(mu_p(u_t), sigma_p(u_t)^2)``, posterior
           ``N(mu_q(u_t, y), sigma_q(u_t, y)^2)``; then ``h_t = u_t + eps_t``.

Choices the paper leaves open, made here:
    - sigma = softplus(raw) + sigma_floor (a floor keeps log-densities finite);
    - y enters q through a learned target embedding added to u_t at the answer positions;
    - f_low and f_high share weights by default (TRM found sharing better);
    - one learned prefix token (P = 1) carries the ACT halt and LPRM value heads ("token 0");
    - those heads read the state through a critic of their own (``critic_layers`` blocks over a
      detached copy of h), so judging a trajectory never pulls on the reasoning trunk, and the
      judge can look at the whole board rather than one linear probe of token 0.
Blocks are post-norm (RMSNorm after each residual add), which keeps the state bounded under
recursion.

Precision: under bfloat16 autocast (``--precision bf16``) the blocks run in bfloat16, but every
piece that parameterizes a distribution (the Gaussian heads, the decoder logits, the ACT and LPRM
heads) runs in float32 (:func:`float32`), so log-densities, KLs and log-sum-exps stay float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def float32(x: torch.Tensor):
    """Autocast off on ``x``'s device: the context in which the probabilistic heads run."""
    return torch.autocast(x.device.type, enabled=False)


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) * W3 x)``: the feed-forward of every block and of the Gaussian heads."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int | None = None):
        super().__init__()
        self.gate_up = nn.Linear(d_in, 2 * d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_out or d_in, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MixerBlock(nn.Module):
    """Post-norm MLP-mixer block: an MLP across the sequence axis, then one across features."""

    def __init__(self, seq_len: int, d_model: int, expansion: float):
        super().__init__()
        self.token_mix = SwiGLU(seq_len, max(8, int(expansion * seq_len)))
        self.norm1 = nn.RMSNorm(d_model)
        self.channel_mix = SwiGLU(d_model, int(expansion * d_model))
        self.norm2 = nn.RMSNorm(d_model)

    def forward(self, x):
        x = self.norm1(x + self.token_mix(x.transpose(-1, -2)).transpose(-1, -2))
        return self.norm2(x + self.channel_mix(x))


def rotary(x, cos, sin):
    """Rotary position embedding on the last axis of ``x`` (pairs of halves)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class AttentionBlock(nn.Module):
    """Post-norm self-attention block with RoPE, then a SwiGLU feed-forward."""

    def __init__(self, seq_len: int, d_model: int, expansion: float, n_heads: int):
        super().__init__()
        if d_model % (2 * n_heads):
            raise ValueError(f"d_model={d_model} must be divisible by 2 * n_heads={2 * n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, int(expansion * d_model))
        self.norm2 = nn.RMSNorm(d_model)
        d_head = d_model // n_heads
        freq = 1.0 / (10000 ** (torch.arange(0, d_head // 2) / (d_head // 2)))
        angle = torch.arange(seq_len)[:, None] * freq[None]
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, x, mask=None):
        """``mask`` ``[L, L]`` bool (True: may attend), e.g. the AR baseline's prefix-causal mask;
        None: every position sees every other (the recursion's blocks)."""
        *lead, L, D = x.shape
        q, k, v = self.qkv(x).view(*lead, L, 3, self.n_heads, D // self.n_heads).unbind(-3)
        q, k, v = (t.transpose(-2, -3) for t in (q, k, v))  # [..., heads, L, d_head]
        q, k = rotary(q, self.cos, self.sin), rotary(k, self.cos, self.sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(-2, -3).reshape(*lead, L, D)
        x = self.norm1(x + self.out(a))
        return self.norm2(x + self.ffn(x))

    def extend(self, x, cache, mask):
        """:meth:`forward` for positions ``start .. start + n - 1`` only, ``x`` ``[..., n, D]``,
        given ``cache = (k, v)`` of positions ``0 .. start - 1`` (None: start = 0) and the full
        ``mask``. Returns the outputs and the cache extended by them: incremental decoding (a
        KV cache), exact when no earlier position attends to a later one under ``mask``."""
        *lead, n, D = x.shape
        start = 0 if cache is None else cache[0].shape[-2]
        q, k, v = self.qkv(x).view(*lead, n, 3, self.n_heads, D // self.n_heads).unbind(-3)
        q, k, v = (t.transpose(-2, -3) for t in (q, k, v))
        cos, sin = self.cos[start:start + n], self.sin[start:start + n]
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=-2), torch.cat([cache[1], v], dim=-2)
        rows = mask[start:start + n, :start + n]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=rows).transpose(-2, -3).reshape(*lead, n, D)
        x = self.norm1(x + self.out(a))
        return self.norm2(x + self.ffn(x)), (k, v)


class RecursiveNet(nn.Module):
    """A stack of blocks; used as f_low and f_high (the same instance when weights are shared)."""

    def __init__(self, seq_len, d_model, n_layers, expansion, block="mixer", n_heads=4):
        super().__init__()
        if block == "mixer":
            make = lambda: MixerBlock(seq_len, d_model, expansion)  # noqa: E731
        elif block == "attention":
            make = lambda: AttentionBlock(seq_len, d_model, expansion, n_heads)  # noqa: E731
        else:
            raise ValueError(f"unknown block {block!r}; use 'mixer' or 'attention'")
        self.layers = nn.ModuleList(make() for _ in range(n_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Encoder(nn.Module):
    """``e_x = embed(x) * sqrt(D) + pos``; prefix tokens get learned embeddings of their own.

    With ``links`` ``[L, F]`` (the task's structure, :meth:`~gram_pyro.tasks.base.Task.links`)
    position p also adds ``sum_f E_f[x[links[p, f]]] * sqrt(D / F)``, one embedding table per
    slot f, over its linked positions (-1: none): a colouring node sees its adjacency row, a
    Sudoku cell its peers' givens. The input format is unchanged; only the encoder reads more.

    With ``puzzles`` > 0 (ARC), ``x[..., 0]`` is a puzzle identity, not a token: it reads as a
    blank, and prefix token 0 adds that identity's learned embedding (TRM's puzzle embedding,
    one D-vector per identity, zero at the start).
    """

    def __init__(self, vocab: int, seq_len: int, d_model: int, n_prefix: int, links=None,
                 puzzles: int = 0):
        super().__init__()
        self.puzzle = None
        if puzzles:
            self.puzzle = nn.Embedding(puzzles, d_model)
            nn.init.zeros_(self.puzzle.weight)
        self.scale = math.sqrt(d_model)
        self.embed = nn.Embedding(vocab, d_model)
        self.prefix = nn.Parameter(torch.randn(n_prefix, d_model) / self.scale)
        self.pos = nn.Parameter(torch.randn(n_prefix + seq_len, d_model) / self.scale)
        nn.init.normal_(self.embed.weight, std=1.0 / self.scale)
        self.link_embed = None
        if links is not None:
            links = torch.as_tensor(links, dtype=torch.long)
            positions, slots = links.shape
            # select[p * F + f, q] = 1 where position p's slot f links to q: a matmul then counts,
            # per position, slot and token value, the linked tokens (0 or 1 each)
            select = torch.zeros(positions, slots, positions)
            p, f = torch.nonzero(links >= 0, as_tuple=True)
            select[p, f, links[p, f]] = 1.0
            self.register_buffer("link_select", select.reshape(positions * slots, positions),
                                 persistent=False)
            self.link_embed = nn.Embedding(slots * vocab, d_model)  # row f * vocab + value
            nn.init.normal_(self.link_embed.weight, std=1.0 / self.scale)
            self.link_scale = math.sqrt(d_model / slots)

    def forward(self, x):
        identity = None
        if self.puzzle is not None:
            identity = x[..., 0]
            x = torch.cat([torch.zeros_like(x[..., :1]), x[..., 1:]], dim=-1)
        tokens = self.embed(x) * self.scale
        if self.link_embed is not None:
            # sum_f E_f[x[links[p, f]]] as counts [..., L, F * V] times the table [F * V, D]: two
            # small matmuls, where gathering [..., L, F, D] rows cost a training step a third
            # of its time on N-Queens 10x10 (docs/design.md §8)
            onehot = F.one_hot(x, self.embed.num_embeddings).to(self.link_select.dtype)
            counts = (self.link_select @ onehot).reshape(*x.shape, -1)
            tokens = tokens + (counts @ self.link_embed.weight) * self.link_scale
        prefix = self.prefix.expand(*x.shape[:-1], *self.prefix.shape) * self.scale
        if identity is not None:
            first = prefix[..., :1, :] + self.puzzle(identity)[..., None, :] * self.scale
            prefix = torch.cat([first, prefix[..., 1:, :]], dim=-2)
        return torch.cat([prefix, tokens], dim=-2) + self.pos


class ConvStem(nn.Module):
    """The paper's image stem (docs/design.md §10): 2 x [conv 5x5 -> SiLU -> GroupNorm] over the
    image, then every pixel's features projected to D. Patches are single pixels, so the sequence
    keeps one position per pixel and the stem is a drop-in for a per-pixel embedding:
    ``[..., H*W]`` classes in, ``[..., H*W, D]`` out (classes scaled to [0, 1] intensities)."""

    def __init__(self, shape, vocab: int, d_model: int, channels: int = 32, groups: int = 8):
        super().__init__()
        self.shape, self.levels = tuple(shape), max(vocab - 1, 1)
        layers, width = [], 1
        for _ in range(2):
            layers += [nn.Conv2d(width, channels, 5, padding=2), nn.SiLU(),
                       nn.GroupNorm(groups, channels)]
            width = channels
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(channels, d_model)

    def forward(self, y):
        h, w = self.shape
        batch = y.shape[:-1]
        image = y.reshape(-1, 1, h, w).to(self.proj.weight.dtype) / self.levels
        features = self.body(image).flatten(2).transpose(1, 2)  # [B, H*W, C]
        return self.proj(features).reshape(*batch, h * w, -1)


class GaussianHead(nn.Module):
    """Per-token ``(mu, sigma)`` of the guidance noise: one SwiGLU MLP per parameter,
    ``sigma = softplus(raw) + sigma_floor``."""

    def __init__(self, d_model: int, expansion: float, sigma_floor: float, init_sigma: float = 1.0):
        super().__init__()
        hidden = int(expansion * d_model)
        self.mu = SwiGLU(d_model, hidden)
        self.raw_sigma = SwiGLU(d_model, hidden)
        self.sigma_floor = sigma_floor
        # start with mu = 0 and sigma = init_sigma: h_t = u_t + eps_t begins as pure noise
        nn.init.zeros_(self.mu.down.weight)
        nn.init.zeros_(self.raw_sigma.down.weight)
        self.sigma_bias = nn.Parameter(torch.full((d_model,), math.log(math.expm1(init_sigma))))

    def forward(self, u):
        with float32(u):  # float32 even under bf16 autocast
            u = u.float()
            return self.mu(u), F.softplus(self.raw_sigma(u) + self.sigma_bias) + self.sigma_floor


class GuideMixer(nn.Module):
    """A residual block that mixes q's input ``u_t + embed(y)`` across positions before the
    posterior head, for the guide fitted for likelihood alone (``gram fit-guide --mixer``).
    Without it q reads each position's answer token alone; with it every position's noise can
    depend on the whole answer at every transition. Its output layer starts at zero, so the
    fit starts from the training guide exactly."""

    def __init__(self, seq_len, d_model, expansion, block="mixer", n_heads=4):
        super().__init__()
        self.core = RecursiveNet(seq_len, d_model, 1, expansion, block, n_heads)
        self.out = nn.Linear(d_model, d_model)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, v):
        return v + self.out(self.core(v))


class GramNet(nn.Module):
    """Everything GRAM learns, in one container (the ``pyro.module`` of model and guide).

    Args:
        seq_len, input_vocab, answer_len, answer_vocab, answer_offset: the task layout.
        d_model: D. n_layers: blocks per f. block: "mixer" or "attention".
        expansion: SwiGLU width factor of the blocks; head_expansion: that of the Gaussian heads
            (None or 0: the same).
        levels: 2, the h/l recursion of TRM; 1, a single level (the Looped Transformer).
        share_core: f_low and f_high share weights.
        n_prefix: P learned prefix tokens; heads read token 0.
        critic_layers: blocks of the critic the ACT and LPRM heads read through (0: the heads are
            linear probes of token 0 of h itself).
        links: the task's structure links for the encoder (see :class:`Encoder`), or None.
        image_shape: ``(H, W)`` of an image task whose answer q reads through the convolutional
            :class:`ConvStem` instead of a per-pixel target embedding (``stem=conv``), or None.
        puzzles: the puzzle identities of a task with a puzzle slot (ARC; see :class:`Encoder`).
    """

    def __init__(self, *, seq_len, input_vocab, answer_len, answer_vocab, answer_offset=0,
                 d_model=64, n_layers=2, block="mixer", n_heads=4, expansion=2.0,
                 share_core=True, n_prefix=1, sigma_floor=1e-3, init_sigma=1.0, critic_layers=1,
                 links=None, image_shape=None, head_expansion=None, levels=2, puzzles=0):
        super().__init__()
        head_expansion = head_expansion or expansion
        self.levels = levels
        self.seq_len, self.n_prefix = seq_len, n_prefix
        self.answer_len, self.answer_vocab = answer_len, answer_vocab
        self.answer_start = n_prefix + answer_offset
        total = n_prefix + seq_len
        self.encoder = Encoder(input_vocab, seq_len, d_model, n_prefix, links, puzzles)
        self.f_high = RecursiveNet(total, d_model, n_layers, expansion, block, n_heads)
        self.f_low = self.f_high if share_core else RecursiveNet(total, d_model, n_layers,
                                                                 expansion, block, n_heads)
        self.prior_head = GaussianHead(d_model, head_expansion, sigma_floor, init_sigma)
        self.posterior_head = GaussianHead(d_model, head_expansion, sigma_floor, init_sigma)
        if image_shape is None:
            self.target_embed = nn.Embedding(answer_vocab, d_model)
        else:
            if image_shape[0] * image_shape[1] != answer_len:
                raise ValueError(f"image shape {image_shape} does not hold {answer_len} pixels")
            self.target_embed = ConvStem(image_shape, answer_vocab, d_model)
        self.decoder = nn.Linear(d_model, answer_vocab)
        self.critic = RecursiveNet(total, d_model, critic_layers, expansion, block, n_heads) \
            if critic_layers else None
        self.halt_head = nn.Linear(d_model, 1)
        self.lprm_head = nn.Linear(d_model, 1)
        # z_0: drawn once at construction, stored with the model, never trained
        self.register_buffer("h0", torch.randn(d_model))
        self.register_buffer("l0", torch.randn(d_model))
        self.d_model = d_model
        self._mixer_shape = (total, d_model, expansion, block, n_heads)
        self.guide_mixer = None  # only a guide fitted for likelihood has one (add_guide_mixer)

    def add_guide_mixer(self) -> GuideMixer:
        """Give q a :class:`GuideMixer` (zero at the start, on the net's device), once."""
        if self.guide_mixer is None:
            self.guide_mixer = GuideMixer(*self._mixer_shape).to(self.h0.device)
        return self.guide_mixer

    def initial_state(self, batch_shape) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*batch_shape, self.n_prefix + self.seq_len, self.d_model)
        return self.h0.expand(shape), self.l0.expand(shape)

    def encode(self, x):
        return self.encoder(x)

    def propose(self, h, l, e_x, k_low: int):
        """K low-level refinements with h fixed, then the high-level proposal u_t. With one
        level (the Looped Transformer baseline) there is no l: u_t is K + 1 applications of the
        core to ``h + e_x``, the same number of core calls as the two levels make."""
        if self.levels == 1:
            u = h
            for _ in range(k_low + 1):
                u = self.f_high(u + e_x)
            return l, u
        for _ in range(k_low):
            l = self.f_low(l + h + e_x)
        return l, self.f_high(h + l)

    def prior(self, u):
        return self.prior_head(u)

    def posterior(self, u, y):
        """q's parameters from u_t and the answer y ``[..., answer_len]`` (embedded in place)."""
        emb = self.target_embed(y)
        pad_before = self.answer_start
        pad_after = u.shape[-2] - pad_before - self.answer_len
        emb = F.pad(emb, (0, 0, pad_before, pad_after))
        v = u + emb
        return self.posterior_head(v if self.guide_mixer is None else self.guide_mixer(v))

    def decode(self, h):
        """Answer logits ``[..., answer_len, answer_vocab]`` (float32)."""
        answer = h[..., self.answer_start:self.answer_start + self.answer_len, :]
        with float32(answer):
            return self.decoder(answer.float())

    def judge(self, h) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ACT halt logit, LPRM value logit)`` of states ``h`` ``[..., P + L, D]``, each ``[...]``.

        ``sigmoid(value logit)`` is the predicted probability that the trajectory's final answer
        is correct; both heads are trained by binary cross-entropy on their logits.
        Gradients reach the critic and the heads only: h is detached first.
        """
        feature = h.detach()
        if self.critic is not None:
            feature = self.critic(feature)
        with float32(feature):
            feature = feature[..., 0, :].float()
            return self.halt_head(feature).squeeze(-1), self.lprm_head(feature).squeeze(-1)
