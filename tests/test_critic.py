"""The critic: value logits and BCE, the final fit on the model's own rollouts, its storage."""

import json
import time

import numpy as np
import pytest
import torch

from gram_pyro import metrics
from gram_pyro.checkpoint import load_checkpoint, load_run
from gram_pyro.critic import CRITIC_REPORT, collect, critic_parameters, fit_critic, refit_run
from gram_pyro.train import Trainer
from tests.helpers import tiny_config, tiny_programs


class FirstCellTask:
    """A stand-in judge: an answer is "correct" when its first cell holds a queen. An untrained
    model's noise decides that, so about half the trajectories are right and the critic, which
    reads the state the answer is decoded from, can learn which."""

    def __init__(self, task):
        self.task = task

    def is_correct(self, inputs, answers):
        return np.asarray(answers)[:, 0] == 1

    def score(self, inputs, answers):
        return self.is_correct(inputs, answers).astype(np.float32)


def test_the_value_is_the_sigmoid_of_a_logit():
    task, _, net, model, _ = tiny_programs()
    x = torch.as_tensor(task.build(seed=0).train.inputs[:3])
    out = model(x, num_samples=4)
    halt, value_logit = net.judge(out.h)
    assert value_logit.shape == (4, 3)
    assert torch.allclose(out.values[-1], torch.sigmoid(value_logit), atol=1e-6)


def test_the_fit_learns_a_learnable_target_and_touches_only_the_critic():
    torch.manual_seed(0)
    # the net without N-Queens' structure links, as this target was calibrated on: the test is
    # about the fit, not the encoder (with links the held-out BCE falls 0.09, AUC 0.91)
    task, _, net, model, _ = tiny_programs(extra=["init_sigma=3.0", "links=false"])
    judge = FirstCellTask(task)
    inputs = task.build(seed=0).train.inputs
    others = {k: v.clone() for k, v in net.state_dict().items()
              if k not in critic_parameters(net)}
    # enough trajectories that the critic generalizes rather than memorizes (with 640 it only
    # memorized: the held-out loss rose while the training loss fell)
    report = fit_critic(model, judge, np.repeat(inputs[:8], 25, axis=0), trajectories=16,
                        steps=300, lr=3e-3, seed=0)
    assert 0.2 < report["correct_share"] < 0.8
    before, after = report["before"], report["after"]
    assert after["lprm_bce"] < before["lprm_bce"] - 0.1, report
    assert after["within_auc"] > 0.8 and after["auc"] > 0.8, report
    assert after["act_bce"] < before["act_bce"]
    # the generative model is untouched, and every parameter is left as trainable as it was
    for k, v in net.state_dict().items():
        if k in others:
            assert torch.equal(v, others[k]), k
    assert all(p.requires_grad for p in net.parameters())


class Timed:
    """The model, recording each chunk's inputs and taking ``seconds`` per input per call."""

    def __init__(self, model, seconds: float = 0.0):
        self.model, self.seconds, self.chunks = model, seconds, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x, **kwargs):
        if kwargs["steps"] == [0]:
            self.chunks.append(len(x))
        time.sleep(self.seconds * len(x))
        return self.model(x, **kwargs)


def test_rollout_chunks_grow_only_while_they_end_before_the_deadline():
    """Collection under a deadline starts at one input and doubles, so long rows (ARC's) cannot
    overrun a short budget by a whole chunk; without one, every chunk is full."""
    torch.manual_seed(0)
    task, _, _, model, _ = tiny_programs()
    judge = FirstCellTask(task)
    inputs = np.repeat(task.build(seed=0).train.inputs[:4], 10, axis=0)  # 40 inputs
    timed = Timed(model)
    pool = collect(timed, judge, inputs, 8, chunk_size=128)  # 16 inputs a chunk
    assert timed.chunks == [16, 16, 8] and len(pool["final_ok"]) == 40
    timed = Timed(model)
    pool = collect(timed, judge, inputs, 8, chunk_size=128, deadline=time.monotonic() + 600)
    assert timed.chunks == [1, 2, 4, 8, 16, 9] and len(pool["final_ok"]) == 40
    assert pool["states"].shape[:3] == (40, 8, model.n_supervision)
    timed = Timed(model)
    pool = collect(timed, judge, inputs, 8, chunk_size=128, deadline=time.monotonic())
    assert timed.chunks == [1] and len(pool["final_ok"]) == 1  # late already: one input
    # 0.1 s per input and call: a chunk of 16 would overrun by seconds, these stop in time
    timed = Timed(model, seconds=0.1)
    deadline = time.monotonic() + 1.5
    pool = collect(timed, judge, inputs, 8, chunk_size=128, deadline=deadline)
    assert time.monotonic() - deadline < 0.5 * model.n_supervision, timed.chunks
    assert 2 <= len(pool["final_ok"]) < 16 and timed.chunks[:2] == [1, 2]


def test_training_ends_with_the_fit_and_load_run_applies_it(tmp_path):
    cfg = tiny_config("nqueens-5", ["steps=6"])
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "r")
    fit = ckpt["critic_fit"]
    assert fit["step"] == 6
    report = json.loads((tmp_path / "r" / CRITIC_REPORT).read_text())
    assert report["step"] == 6 and report["steps"] == 6  # capped at the run's own length
    assert json.loads(fit["report"])["inputs"] == report["inputs"]
    _, _, net = load_run(tmp_path / "r")
    for k, p in critic_parameters(net).items():
        assert torch.equal(p, fit["weights"][k]), k
    # the training state is the unfitted one; the raw weights come without the fit
    assert not torch.equal(ckpt["ema"]["lprm_head.weight"], fit["weights"]["lprm_head.weight"])
    _, _, raw = load_run(tmp_path / "r", ema=False)
    assert torch.equal(raw.lprm_head.weight, ckpt["model"]["lprm_head.weight"])


def test_refit_run_rewrites_only_the_critic(tmp_path):
    cfg = tiny_config("nqueens-5", ["steps=4", "critic_fit_steps=0"])
    Trainer(cfg, tmp_path / "r", progress=False).fit()
    before = load_checkpoint(tmp_path / "r")
    assert "critic_fit" not in before and not (tmp_path / "r" / CRITIC_REPORT).exists()
    report = refit_run(tmp_path / "r", steps=5, inputs=8, trajectories=2)
    after = load_checkpoint(tmp_path / "r")
    assert after["critic_fit"]["step"] == before["step"] and report["steps"] == 5
    for key in ("model", "ema", "optimizer"):
        assert after[key].keys() == before[key].keys()
    for k in before["ema"]:
        assert torch.equal(after["ema"][k], before["ema"][k]), k
    assert json.loads((tmp_path / "r" / CRITIC_REPORT).read_text())["steps"] == 5


def test_sudoku_score_is_one_exactly_when_correct_and_gives_partial_credit():
    from gram_pyro.tasks import get_task

    task = get_task("sudoku-4", unconditional=True)
    grids = task.all_objects()
    blank = np.zeros((len(grids), 16), np.int64)
    assert (task.score(blank, grids) == 1).all()
    rng = np.random.default_rng(0)
    broken = grids.copy()
    cells = rng.integers(0, 16, len(grids))
    broken[np.arange(len(grids)), cells] = (broken[np.arange(len(grids)), cells] + 1) % 4
    score = task.score(blank, broken)
    assert not task.is_correct(blank, broken).any()
    # the changed cell clashes with one cell in its row, one in its column and one in its box
    # (the box's may be the row's or the column's): 3 or 4 of the 16 cells break a rule
    assert set(np.round(score * 16).astype(int)) <= {12, 13} and len(set(score)) == 2
    # a given that is not kept costs its cell, even in an otherwise valid grid
    conditional = get_task("sudoku-4")
    puzzle = np.where(np.arange(16) < 4, (grids[0] + 2) % 4 + 1, 0)[None]
    assert conditional.score(puzzle, grids[:1])[0] == pytest.approx(12 / 16)


@pytest.mark.parametrize("scores,positive,expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
    ([1, 1, 1, 1], [0, 1, 0, 1], 0.5),  # ties count half
    ([0.2, 0.1], [1, 1], float("nan")),  # one class only: undefined
])
def test_auc(scores, positive, expected):
    got = metrics.auc(np.array(scores), np.array(positive))
    assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected)


def test_within_auc_ignores_the_ranking_of_inputs():
    # every trajectory of input 1 outscores every one of input 0, and input 1 is mostly right:
    # the pooled AUC is high, but within each input the score ranks backwards
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]])
    ok = np.array([[1, 0, 0, 0], [1, 1, 1, 0]])
    assert metrics.auc(scores, ok) > 0.5
    assert metrics.within_auc(scores, ok) == 0.0
