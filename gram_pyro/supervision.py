"""The loss of one supervision step, as an ``nn.Module``: what DistributedDataParallel wraps.

Supervision step n of a training batch (docs/design.md §4, :mod:`gram_pyro.train`) computes:
    ELBO:  the model against the guide for step n, from the posterior chain's state (elbo.py);
    prior: step n of the prior chain (no y, no gradient), the states the critic is fitted on;
    ACT:   BCE(q_halt(h_n), 1[the prior answer after step n is correct]), on every step;
    LPRM:  mean over n' of BCE(v(h_n'), r), or the paper's (sigmoid(v(h_n')) - r)^2 with
           ``lprm_loss="squared"`` (:func:`gram_pyro.critic.lprm_loss`), r = task.score of the chain's final
           prior answer (1 exactly when it is correct; Sudoku gives partial credit), on the last
           step only (the LPRM head gets no loss, and no gradient, before it);
    loss = -surrogate + act_weight * ACT + lprm_weight * LPRM     (each a mean over the batch).

The module's parameters are the net's own Parameter objects, so the optimizer steps
``net.parameters()`` whether DDP wraps the module or not. Some of them get no gradient on some
steps (the LPRM head before the last step, the Gaussian heads of the deterministic baseline),
which is why DDP is built with ``find_unused_parameters=True``.

With ``precision="bf16"`` the model, the guide and the critic run under bfloat16 autocast; the
heads that parameterize distributions run in float32 inside them (:func:`gram_pyro.nets.float32`),
and the KLs, log-probabilities and auxiliary losses are computed outside autocast, in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from gram_pyro.critic import lprm_loss
from gram_pyro.recursion import SharedRecursion


class SupervisionStep(nn.Module):
    """``forward(x, y, n, post_state, prior_state, prior_states) -> (loss, out)``.

    Args:
        net: the :class:`~gram_pyro.nets.GramNet`; model, guide: its programs; elbo: a
            :class:`~gram_pyro.elbo.GramELBO`; rules: the objective's transition rules.
        task: judges the prior chain's answers. act_weight, lprm_weight: the auxiliary weights.
        lprm_kind: the LPRM's loss, "bce" or "squared" (:func:`gram_pyro.critic.lprm_loss`).
        n_supervision: N_sup (the LPRM loss comes on step N_sup - 1). precision: "fp32"/"bf16".

    Call arguments: the batch ``x, y``; the step ``n``; the detached states the posterior and
    prior chains start from (None: z_0); the prior states of the earlier steps of this batch.
    ``out`` holds the next states (detached) and the detached per-term values the logs report.
    """

    def __init__(self, net, model, guide, elbo, rules, task, *, act_weight: float,
                 lprm_weight: float, n_supervision: int, precision: str = "fp32",
                 joint_critic: bool = True, lprm_kind: str = "bce"):
        super().__init__()
        self.joint_critic, self.lprm_kind = joint_critic, lprm_kind
        self.net = net
        self.model, self.guide, self.elbo, self.rules, self.task = model, guide, elbo, rules, task
        self.act_weight, self.lprm_weight = act_weight, lprm_weight
        self.n_supervision = n_supervision
        self.bf16 = precision == "bf16"

    def autocast(self, x):
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _under_autocast(self, program):
        """``program`` run under autocast, so that the ELBO's terms are computed outside it."""
        if not self.bf16:
            return program

        def run(x, *args, **kwargs):
            with self.autocast(x):
                return program(x, *args, **kwargs)
        return run

    def correct(self, x, logits) -> torch.Tensor:
        answers = logits.argmax(-1).cpu().numpy()
        ok = self.task.is_correct(x.cpu().numpy(), answers)
        return torch.as_tensor(ok, dtype=torch.float32, device=x.device)

    def forward(self, x, y, n: int, post_state=None, prior_state=None, prior_states=()):
        shared = SharedRecursion()
        # the elbo is looked up on every call: tests swap its particle_terms to inject NaNs
        terms = next(self.elbo.particle_terms(
            self._under_autocast(self.model), self._under_autocast(self.guide), x, y,
            steps=[n], state=post_state, shared=shared, rules=self.rules, heads=False))
        loss = -terms["surrogate"].mean()
        post_state = tuple(s.detach() for s in shared.final_state)
        with torch.no_grad():
            post_ok = self.correct(x, self.net.decode(post_state[0])).mean()
        out = {"post_state": post_state, "recon": -terms["recon"].mean().detach(),
               "kl": {k: v.mean() for k, v in terms["kl"].items()},
               "kl_total": terms["kl_total"].mean(), "posterior_acc": post_ok}
        if self.joint_critic:
            critic_loss, critic_out = self.critic_loss(x, n, prior_state, prior_states)
            loss = loss + critic_loss
            out.update(critic_out)
        return loss, out

    def critic_loss(self, x, n: int, prior_state, prior_states):
        """Step n of the prior chain (no y, no gradient into the trunk) and the critic's losses
        on it: ``act_weight * ACT + lprm_weight * LPRM`` (LPRM on the last step only)."""
        net, last = self.net, n == self.n_supervision - 1
        with torch.no_grad(), self.autocast(x):
            prior = self.model(x, steps=[n], state=prior_state, heads=False)
        answer_ok = self.correct(x, prior.logits)
        with self.autocast(x):
            if last:  # the value of every step's state is judged against the final answer
                halt_logits, value_logits = net.judge(torch.stack([*prior_states, prior.h]))
                halt_logit = halt_logits[-1]
            else:
                halt_logit, _ = net.judge(prior.h)
        act_loss = F.binary_cross_entropy_with_logits(halt_logit, answer_ok)
        loss = self.act_weight * act_loss
        lprm = torch.zeros((), device=x.device)
        if last:
            score = self.task.score(x.cpu().numpy(), prior.logits.argmax(-1).cpu().numpy())
            score = torch.as_tensor(score, dtype=torch.float32, device=x.device)
            lprm = lprm_loss(value_logits, score.expand_as(value_logits), self.lprm_kind)
            loss = loss + self.lprm_weight * lprm
        return loss, {"prior_state": (prior.h, prior.l), "act": act_loss.detach(),
                      "lprm": lprm.detach(), "prior_batch_acc": answer_ok.mean()}


class LikelihoodStep(nn.Module):
    """The AR baseline's training loss (``model=ar``), with :class:`SupervisionStep`'s call
    signature so the trainer runs both: ``-log p(y | x)`` per example, the model's trace of the
    observed answer (with its empty guide this is exactly ``Trace_ELBO``'s loss: maximum
    likelihood). ``out`` reports it as ``recon``, and as ``posterior_acc`` the share of the batch
    whose teacher-forced argmax answer is correct (the analogue of GRAM's y-conditioned
    decoding). There is no state to carry: ``post_state`` is None."""

    def __init__(self, model, task, *, precision: str = "fp32"):
        super().__init__()
        self.model, self.task = model, task
        self.bf16 = precision == "bf16"

    def forward(self, x, y, n: int = 0, post_state=None, prior_state=None, prior_states=()):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            trace = poutine.trace(self.model).get_trace(x, y)
        loss = -trace.log_prob_sum() / x.shape[0]
        with torch.no_grad():  # the argmax of every site's teacher-forced logits
            guess = torch.stack([trace.nodes[f"y_{j}"]["fn"].logits.argmax(-1)
                                 for j in range(y.shape[-1])], dim=-1)
            ok = self.task.is_correct(x.cpu().numpy(), guess.cpu().numpy())
        zero = torch.zeros((), device=x.device)
        return loss, {"post_state": None, "recon": loss.detach(), "kl": {}, "kl_total": zero,
                      "posterior_acc": torch.as_tensor(ok, dtype=torch.float32,
                                                       device=x.device).mean()}
