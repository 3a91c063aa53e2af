"""The autoregressive baseline p(y | x) = prod_j p(y_j | x, y_<j) (docs/design.md §11).

The paper's strongest multi-solution baseline: a Transformer that writes the answer one token
at a time, trained by maximum likelihood and sampled token by token. It has no latent variable:
its diversity comes from sampling ``y_j ~ Categorical(logits_j)``, one named site ``y_{j}`` per
answer position, in a plain Python loop. (Not ``pyro.markov``: y_j depends on every earlier
token, and a Markov window would declare independences the model does not have.)

The network is a prefix language model over ``[x_1 .. x_L, BOS, y_1 .. y_{A-1}]``: the input
positions see one another, and answer position j sees the whole input and the answer tokens
before it (:func:`prefix_causal_mask`), so one pass gives the logits of every position under
teacher forcing (training, likelihoods). Sampling decodes incrementally: the input once, then
one new position per token, attending to the cached keys and values of the earlier ones
(:meth:`ARNet.start`, :meth:`ARNet.advance`; the same logits as a full pass). It uses GRAM's signature
and plates (``trajectories`` at dim -2 over samples, ``batch`` at dim -1 over inputs), so the
rollout, evaluation and generation code judge it with the same checker.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from gram_pyro.models.gram import batch_shape, plates
from gram_pyro.nets import AttentionBlock, float32


def prefix_causal_mask(n_input: int, n_answer: int) -> torch.Tensor:
    """``[L + A, L + A]`` bool, True where query i may attend to key k: every position sees the
    input; an answer position also sees the answer positions up to itself (the token there is
    the one before: BOS, then y_1 ...); no input position sees the answer."""
    n = n_input + n_answer
    i, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (k < n_input) | ((i >= n_input) & (k <= i))


class ARNet(nn.Module):
    """``forward(x [..., L], answers [..., A]) -> logits [..., A, V]``, where the logits at
    position j read only ``x`` and ``answers[..., :j]`` (the rest may hold anything)."""

    def __init__(self, *, seq_len, input_vocab, answer_len, answer_vocab, d_model, n_layers,
                 n_heads, expansion):
        super().__init__()
        self.seq_len, self.answer_len, self.answer_vocab = seq_len, answer_len, answer_vocab
        self.scale = math.sqrt(d_model)
        self.input_embed = nn.Embedding(input_vocab, d_model)
        self.answer_embed = nn.Embedding(answer_vocab + 1, d_model)  # the last row is BOS
        self.pos = nn.Parameter(torch.randn(seq_len + answer_len, d_model) / self.scale)
        for e in (self.input_embed, self.answer_embed):
            nn.init.normal_(e.weight, std=1.0 / self.scale)
        self.blocks = nn.ModuleList(
            AttentionBlock(seq_len + answer_len, d_model, expansion, n_heads)
            for _ in range(n_layers))
        self.head = nn.Linear(d_model, answer_vocab)
        self.register_buffer("mask", prefix_causal_mask(seq_len, answer_len), persistent=False)

    def forward(self, x, answers):
        bos = answers.new_full((*answers.shape[:-1], 1), self.answer_vocab)
        shifted = torch.cat([bos, answers[..., :-1]], dim=-1)
        x = x.expand(*answers.shape[:-1], x.shape[-1])
        e = torch.cat([self.input_embed(x), self.answer_embed(shifted)], dim=-2) * self.scale + self.pos
        for block in self.blocks:
            e = block(e, self.mask)
        with float32(e):
            return self.head(e[..., self.seq_len:, :].float())

    def start(self, x, shape):
        """Incremental decoding: the input and BOS through every block, ``x`` broadcast to
        ``shape``. Returns the logits of y_1 ``[*shape, V]`` and the blocks' caches."""
        x = x.expand(*shape, x.shape[-1])
        bos = x.new_full((*shape, 1), self.answer_vocab)
        e = torch.cat([self.input_embed(x), self.answer_embed(bos)], dim=-2) * self.scale \
            + self.pos[:self.seq_len + 1]
        return self._extend(e, [None] * len(self.blocks))

    def advance(self, token, caches):
        """The next answer token ``[*shape]`` through every block, with the caches of the earlier
        positions; the logits of the token after it, and the extended caches."""
        position = caches[0][0].shape[-2]
        e = self.answer_embed(token[..., None]) * self.scale + self.pos[position:position + 1]
        return self._extend(e, caches)

    def _extend(self, e, caches):
        out = []
        for block, cache in zip(self.blocks, caches):
            e, cache = block.extend(e, cache, self.mask)
            out.append(cache)
        with float32(e):
            return self.head(e[..., -1, :].float()), out


class ARSample(NamedTuple):
    """What a run of :class:`ARModel` returns: the answer ``[..., A]`` (the observed y, or the
    tokens drawn) and its log-probability under the model, ``[...]`` (untempered)."""

    answer: torch.Tensor
    log_prob: torch.Tensor


class ARModel(nn.Module):
    """Pyro model ``model(x, y=None, *, num_samples=None, temperature=1.0) -> ARSample``.

    With ``y`` every site ``y_{j}`` is observed and the logits come from one teacher-forced pass;
    without it each token is drawn in turn (``temperature`` divides the logits; 1 is the model).
    ``n_supervision`` is 1: one call writes a whole answer, which is what the rollout code
    counts as one step.
    """

    n_supervision = 1

    def __init__(self, net: ARNet):
        super().__init__()
        self.net = net

    @property
    def device(self) -> torch.device:
        return self.net.pos.device

    def forward(self, x, y=None, *, num_samples=None, temperature=1.0):
        pyro.module("ar", self.net)
        net = self.net
        shape = batch_shape(x, num_samples)
        log_prob = torch.zeros(shape, device=x.device)
        with plates(x.shape[0], num_samples, x.device):
            if y is not None:
                logits = net(x, y.expand(*shape, y.shape[-1]))
                for j in range(net.answer_len):
                    step = dist.Categorical(logits=logits[..., j, :])
                    token = pyro.sample(f"y_{j}", step, obs=y[..., j])
                    log_prob = log_prob + step.log_prob(token)
                return ARSample(y.expand(*shape, y.shape[-1]), log_prob)
            tokens = []
            logits, caches = net.start(x, shape)  # a KV cache: one new position per token
            for j in range(net.answer_len):
                token = pyro.sample(f"y_{j}", dist.Categorical(logits=logits / temperature))
                log_prob = log_prob + dist.Categorical(logits=logits).log_prob(token)
                tokens.append(token)
                if j + 1 < net.answer_len:
                    logits, caches = net.advance(token, caches)
        return ARSample(torch.stack(tokens, dim=-1), log_prob)
