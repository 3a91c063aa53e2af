"""GRAM trained with Pyro's stock SVI, in the style of Pyro's ``examples/dmm.py``.

    python examples/svi.py --task nqueens-6 --num-epochs 10

The model p(y, eps | x) and the guide q(eps | x, y) share one network; ``pyro.infer.SVI`` with
``pyro.optim.AdamW`` and :class:`~gram_pyro.elbo.GramELBO` trains them. Each minibatch runs GRAM's
deep supervision: N_sup calls of ``svi.step``, each one supervision step (``steps=[n]``) that
starts from the previous step's final posterior state, detached, which the guide leaves in the
:class:`~gram_pyro.recursion.SharedRecursion` passed to both programs. After each epoch the
prior (which never sees the answer) is rolled out on held-out inputs.

``gram train`` computes the same ELBO step (tests/test_svi.py checks it) and adds what SVI does
not: the critic's losses, EMA weights, gradient-norm clipping, data parallelism, NaN handling and
exact resume.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pyro
import torch
from pyro.infer import SVI

from gram_pyro.build import build_net, programs
from gram_pyro.config import make_config
from gram_pyro.elbo import GramELBO
from gram_pyro.inference import prior_rollouts
from gram_pyro.recursion import SharedRecursion, transition_rules
from gram_pyro.tasks import get_task


def main(args):
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()  # pyro.module registers the net under "gram"
    pyro.enable_validation(__debug__)

    task = get_task(args.task)
    data = task.build(seed=0)
    x_train, y_train = (torch.as_tensor(a) for a in data.train.pairs())
    cfg = make_config("cpu", [f"d_model={args.d_model}", f"n_supervision={args.n_supervision}",
                              f"beta={args.beta}"], task=args.task)
    model, guide = programs(build_net(task, cfg), cfg)
    rules = transition_rules(cfg.objective, cfg.t_high)  # which transitions carry gradient

    optim = pyro.optim.AdamW({"lr": args.learning_rate, "betas": (0.9, 0.95),
                              "weight_decay": cfg.weight_decay})
    svi = SVI(model, guide, optim, loss=GramELBO(beta=cfg.beta, kl_balance=cfg.kl_balance))

    n_train = len(x_train)
    for epoch in range(1, args.num_epochs + 1):
        epoch_loss = 0.0
        for idx in torch.randperm(n_train).split(args.batch_size):
            x, y = x_train[idx], y_train[idx]
            state = None
            for n in range(cfg.n_supervision):  # deep supervision: one SVI step per step n
                shared = SharedRecursion()
                epoch_loss += svi.step(x, y, steps=[n], state=state, shared=shared, rules=rules)
                state = tuple(s.detach() for s in shared.final_state)
        logging.info(f"epoch {epoch:3d}  loss {epoch_loss / (n_train * cfg.n_supervision):.3f} "
                     "per example and supervision step")

    test = data.test.sample(args.eval_inputs)
    model.eval()
    traj = prior_rollouts(model, test.inputs, args.eval_samples)
    ok = task.is_correct(np.repeat(test.inputs, args.eval_samples, axis=0),
                         traj.answers.reshape(-1, task.answer_len))
    logging.info(f"prior-rollout accuracy on {len(test)} held-out inputs: {100 * ok.mean():.1f}%")


if __name__ == "__main__":
    assert pyro.__version__ >= "1.9"
    parser = argparse.ArgumentParser(description="GRAM trained with stock Pyro SVI")
    parser.add_argument("--task", default="nqueens-6")
    parser.add_argument("-n", "--num-epochs", type=int, default=10)
    parser.add_argument("-lr", "--learning-rate", type=float, default=3e-3)
    parser.add_argument("-b", "--batch-size", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-supervision", type=int, default=4)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--eval-inputs", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
