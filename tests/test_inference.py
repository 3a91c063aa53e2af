"""Width x depth rollouts, ACT, SMC, and evaluate's dump checked by an independent code path."""

import itertools
import json

import numpy as np
import pyro
import pytest
import pyro.distributions as dist
import torch

from gram_pyro.build import build_net
from gram_pyro.config import make_config
from gram_pyro.evaluate import evaluate_run, write_dump
from gram_pyro.inference import HaltRule, prior_rollouts, replay_halting
from gram_pyro.select import select
from gram_pyro.smc import ess, lprm_smc, systematic_resample
from gram_pyro.tasks import get_task
from gram_pyro.train import Trainer
from gram_pyro.models.gram import Rollout, plates
from tests.helpers import TINY, tiny_config, tiny_programs


def test_systematic_resampling_follows_the_weights():
    w = torch.tensor([0.5, 0.25, 0.125, 0.125])
    log_w = w.log()[:, None].expand(4, 3).contiguous()
    idx = systematic_resample(log_w)
    for col in range(3):
        counts = torch.bincount(idx[:, col], minlength=4)
        assert counts.tolist() == [2, 1, 0, 1] or counts.tolist() == [2, 1, 1, 0]
    assert torch.allclose(ess(torch.zeros(8, 2)), torch.full((2,), 8.0))
    assert torch.allclose(ess(torch.tensor([[0.0], [-1e9]])), torch.ones(1))


class CoinModel:
    """Toy with a known answer: at step 0 each particle flips a fair coin c that it keeps;
    the LPRM says v = 0.9 if c = 1 else 0.1. The tilted target p(c) v(c) gives P(c=1) = 0.9."""

    n_supervision = 3
    device = torch.device("cpu")

    def __call__(self, x, y=None, *, steps, state=None, num_samples=None, lprm_guidance=False,
                 lprm_prev=None, **_):
        (s,) = steps
        m = x.shape[0]
        with plates(m, num_samples):
            if state is None:
                c = pyro.sample("coin", dist.Bernoulli(0.5 * torch.ones(num_samples, m)))
            else:
                c = state[0]
            v = 0.1 + 0.8 * c
            log_v = v.log()
            pyro.factor(f"lprm_{s}", log_v if lprm_prev is None else log_v - lprm_prev)
        logits = torch.stack([1 - c, c], -1)[..., None, :] * 10.0
        return Rollout(c, c, logits, log_values=[log_v])

    def answers(self, out):  # what GramModel.answers gives at decode=argmax
        return out.logits.argmax(-1)


def test_smc_reaches_the_tilted_target():
    pyro.set_rng_seed(0)
    res = lprm_smc(CoinModel(), np.zeros((4, 1), np.int64), 4000, ess_threshold=0.7)
    coins = res.answers[..., 0]  # [M, N]
    w = np.exp(res.log_weights - res.log_weights.max(1, keepdims=True))
    share = (w * coins).sum(1) / w.sum(1)
    assert np.allclose(share, 0.9, atol=0.03), share
    assert res.resampled > 0  # ESS after step 1 is 0.61 N < 0.7 N: every input resamples


def test_act_halts_each_trajectory_on_its_own():
    task, cfg, net, model, guide = tiny_programs(extra=["n_supervision=6"])
    with torch.no_grad():
        net.halt_head.weight.normal_(0, 3.0)  # halting now depends on each noisy state
        net.halt_head.bias.zero_()
    x = task.build(seed=0).test.inputs[:4]
    pyro.set_rng_seed(0)
    out = prior_rollouts(model, x, 16, act=HaltRule(0.5), record=True)  # confidence alone
    assert len(np.unique(out.steps)) > 1  # trajectories stop at different steps
    assert any(len(np.unique(out.steps[i])) > 1 for i in range(len(x)))  # even within one input
    for i, j in itertools.product(range(len(x)), range(16)):
        k = out.steps[i, j]
        for s in range(k - 1, len(out.step_answers)):  # frozen from its halting step on
            assert np.array_equal(out.step_answers[s, i, j], out.answers[i, j])
    full = prior_rollouts(model, x, 16, act=False)
    assert (full.steps == 6).all()


@pytest.mark.parametrize("rule", [HaltRule(0.5), HaltRule(0.7, stable=True), HaltRule(0.0, stable=True)])
def test_replaying_a_halting_rule_on_a_record_equals_running_it(rule):
    """replay_halting on rollouts recorded without ACT gives what the rule gives online."""
    task, cfg, net, model, guide = tiny_programs(extra=["n_supervision=5"])
    with torch.no_grad():
        net.halt_head.weight.normal_(0, 3.0)
        net.halt_head.bias.zero_()
    x = task.build(seed=0).test.inputs[:4]
    pyro.set_rng_seed(3)
    recorded = prior_rollouts(model, x, 8, record=True)
    pyro.set_rng_seed(3)
    online = prior_rollouts(model, x, 8, act=rule)
    answers, steps = replay_halting(recorded, rule)
    assert np.array_equal(steps, online.steps) and np.array_equal(answers, online.answers)
    assert 1 < steps.mean() < 5 or rule.stable  # the rule halts some trajectories, not all at once
    if rule.stable:
        assert (steps >= 2).all()  # an unchanged answer needs a step before it


def _plain_valid(board: str, n: int) -> bool:
    queens = [divmod(i, n) for i, ch in enumerate(board) if ch == "Q"]
    return len(queens) == n and all(
        r1 != r2 and c1 != c2 and abs(r1 - r2) != abs(c1 - c2)
        for (r1, c1), (r2, c2) in itertools.combinations(queens, 2))


def _plain_completions(puzzle: str, n: int) -> set:
    out = set()
    for cols in itertools.permutations(range(n)):
        board = "".join("Q" if cols[r] == c else "." for r in range(n) for c in range(n))
        if _plain_valid(board, n) and all(b == "Q" for p, b in zip(puzzle, board) if p == "Q"):
            out.add(board)
    return out


def test_dump_round_trips_and_an_independent_checker_agrees(tmp_path):
    cfg = make_config("cpu", [*TINY, "steps=6", "pyro_validation=false"], task="nqueens-6")
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    report, traj, part, task, chosen = evaluate_run(tmp_path / "run", samples=5, limit=12)
    n_written = write_dump(tmp_path / "dump.jsonl", task, part, traj, chosen)
    rows = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text().splitlines()]
    assert n_written == len(rows) == 12
    found = correct = total_completions = 0
    for i, row in enumerate(rows):
        assert set(row) == {"input", "samples", "lprm", "selected"}
        assert np.array_equal(task.parse_input(row["input"]), part.inputs[i])
        assert [task.format_answer(a) for a in traj.answers[i]] == row["samples"]
        completions = _plain_completions(row["input"], 6)
        ok = [s in completions for s in row["samples"]]
        correct += sum(ok)
        found += len({s for s, k in zip(row["samples"], ok) if k})
        total_completions += len(completions)
        best = int(np.argmax(row["lprm"]))
        assert row["selected"] == row["samples"][best]  # lprm selection
    assert np.isclose(correct / (12 * 5), report["sample_accuracy"])
    assert np.isclose(found / total_completions, report["coverage_micro"])


def test_weighted_vote_sums_lprm_values_per_answer():
    task = get_task("nqueens-4")
    a, b = task.all_objects()  # the two 4-queens solutions
    c = np.zeros_like(a)
    answers = np.array([[a, a, a, b, b], [a, a, a, c, b]])
    values = np.array([[0.1, 0.1, 0.1, 0.9, 0.9], [0.5, 0.5, 0.5, 0.9, 0.2]])
    vote = select(task, answers, values, "vote")
    lprm = select(task, answers, values, "lprm")
    weighted = select(task, answers, values, "weighted")
    assert (vote[0] == a).all() and (lprm[0] == b).all() and (weighted[0] == b).all()  # 1.8 > 0.3
    assert (lprm[1] == c).all() and (weighted[1] == a).all()  # 1.5 for a beats 0.9 for c


def test_generate_best_of_picks_by_the_lprm(monkeypatch, tmp_path):
    """``best`` keeps the highest-valued of K trajectories; ``screen`` the first the LPRM
    accepts (value above 0.5), else the highest."""
    import gram_pyro.generate as generate_module
    from gram_pyro.inference import Trajectories

    task = get_task("nqueens-4", unconditional=True)
    good, other = task.all_objects()
    bad = np.zeros_like(good)

    def fake_rollouts(model, x, num_samples, **kw):
        m = len(x)
        answers = np.stack([np.stack([bad, good, other][:num_samples])] * m)  # [m, K, A]
        values = np.tile(np.array([0.4, 0.95, 0.9])[:num_samples], (m, 1))
        return Trajectories(answers, values, np.full((m, num_samples), 2))

    cfg = tiny_config("nqueens-4", ["steps=1"], unconditional=True)
    net = build_net(task, cfg)
    monkeypatch.setattr(generate_module, "load_run", lambda run_dir, device: (task, cfg, net))
    monkeypatch.setattr(generate_module, "prior_rollouts", fake_rollouts)
    report, boards, valid, _ = generate_module.generate(tmp_path, 6, best_of=3, pick_rule="best")
    assert report["best_of"] == 3 and boards.shape == (6, good.size)
    assert (boards == good).all() and valid.all() and report["valid"] == 1.0
    assert (generate_module.generate(tmp_path, 6, best_of=3)[1] == good).all()  # first accepted
    values = np.array([[0.6, 0.9, 0.2], [0.1, 0.3, 0.2], [0.2, 0.1, 0.7]])
    assert list(generate_module.pick(values, "screen")) == [0, 1, 2]
    assert list(generate_module.pick(values, "best")) == [1, 1, 2]
