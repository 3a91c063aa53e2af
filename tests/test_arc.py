"""ARC-AGI: the encoding, the views and their inverses, the protocol's split, the vote and
pass@2, the puzzle embeddings, and one tiny run through training and the protocol."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gram_pyro.arc import arc_report, pass_at_k, vote
from gram_pyro.build import build_net, programs
from gram_pyro.errors import UserError
from gram_pyro.tasks import get_task, task_names
from gram_pyro.tasks.arc import (EOS, PAD, apply_view, decode_grid, encode_grid, invert_view,
                                 load_source)
from gram_pyro.train import Trainer

from helpers import tiny_config

SMALL = {"eval_tasks": 3, "training_set": False, "views": 4}  # arc-1-10: three puzzles


def test_grids_round_trip_through_the_token_encoding():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (3, 7), (10, 10), (10, 1), (9, 10)]:
        g = rng.integers(0, 10, (h, w))
        t = encode_grid(g, 10)
        assert t.shape == (100,) and np.array_equal(decode_grid(t, 10), g)
        board = t.reshape(10, 10)
        if h < 10:
            assert (board[h, :min(w + 1, 10)] == EOS).all()
        assert (board[h + 1:, :] == PAD).all() and (board[:, w + 1:] == PAD).all()
    bad = encode_grid(np.ones((3, 3), np.int64), 10)
    bad[11] = PAD  # a hole inside the grid (row 1, column 1)
    assert decode_grid(bad, 10) is None
    assert decode_grid(np.zeros(100, np.int64), 10) is None  # no grid at all
    with pytest.raises(UserError, match="does not fit"):
        encode_grid(np.zeros((11, 2), np.int64), 10)


def test_every_view_of_every_training_task_inverts_to_the_puzzle():
    source = load_source(1)
    for p, name in enumerate(sorted(source["train"])):
        for pair in source["train"][name]["train"] + source["train"][name]["test"]:
            for g in (np.asarray(pair["input"]), np.asarray(pair["output"])):
                for v in range(8):
                    seen = apply_view(g, p, v)
                    assert sorted(seen.shape) == sorted(g.shape)
                    assert (seen == 0).sum() == (g == 0).sum()  # the background stays
                    assert np.array_equal(invert_view(seen, p, v), g)
    assert len(source["train"]) == 400 and len(source["eval"]) == 400


def test_the_encoded_rows_map_back_through_their_views():
    task = get_task("arc-1-10")
    data = task.build(**SMALL)
    for row, answer in zip(*data.train.pairs()):
        for v in range(task.views):
            seen_row, seen_answer = task.to_view(row, answer, v)
            assert seen_row[0] == row[0] + v  # its own identity
            assert task.is_correct(seen_row[None], seen_answer[None]).all()
            back_row, back_answer = task.to_base(seen_row, seen_answer)
            assert np.array_equal(back_row, row) and np.array_equal(back_answer, answer)
    x, y = task.augment(*data.train.pairs(), np.random.default_rng(0))
    assert task.is_correct(x, y).all() and (x[:, 0] % task.views != 0).any()


def test_no_evaluation_test_output_enters_training():
    task = get_task("arc-1")
    data = task.build()
    names = data.meta["evaluation_tasks"]
    assert len(names) == 400 and len(data.meta["training_tasks"]) == 400
    train_pairs = {(x.tobytes(), y.tobytes()) for x, y in zip(*data.train.pairs())}
    train_inputs = {x.tobytes() for x in data.train.inputs}
    x_test, y_test = data.test.pairs()
    assert len(x_test) >= 400
    for x, y in zip(x_test, y_test):
        assert (x.tobytes(), y.tobytes()) not in train_pairs
        assert x.tobytes() not in train_inputs  # not even the test input with another output
    # every demonstration pair of an evaluation task is trained on, and held in as validation
    val = {(x.tobytes(), y.tobytes()) for x, y in zip(*data.val.pairs())}
    assert val and val <= train_pairs


def test_the_vote_ranks_by_weight_and_pass_at_2_needs_the_top_two():
    right, wrong1, wrong2 = np.eye(2, dtype=np.int64), np.zeros((2, 2), np.int64), np.ones((1, 3))
    assert pass_at_k(vote([right] * 5), [right], 2)  # perfect predictions
    assert not pass_at_k(vote([wrong1, wrong2, None]), [right], 2)  # always wrong
    ranked = vote([wrong1] * 3 + [wrong2] * 2 + [right])  # right, but third
    assert [c for _, _, c in ranked] == [3, 2, 1] and not pass_at_k(ranked, [right], 2)
    assert pass_at_k(ranked, [right], 3)
    ranked = vote([wrong1] * 3 + [right] * 2 + [wrong2])  # second: pass@2, not pass@1
    assert pass_at_k(ranked, [right], 2) and not pass_at_k(ranked, [right], 1)
    # weights (the LPRM) can reorder the vote
    ranked = vote([wrong1, wrong1, right], weights=[0.1, 0.1, 0.9])
    assert np.array_equal(ranked[0][0], right)
    # a grid of the right colours in the wrong shape is wrong
    assert not pass_at_k(vote([right.reshape(1, 4)]), [right], 2)


def test_the_puzzle_identity_is_an_embedding_not_a_token():
    task = get_task("arc-1-10")
    task.build(**SMALL)
    cfg = tiny_config("arc-1-10", data_options=SMALL)
    net = build_net(task, cfg)
    assert net.encoder.puzzle.num_embeddings == 3 * 4
    with torch.no_grad():
        net.encoder.puzzle.weight.normal_()
    x = torch.as_tensor(task.build(**SMALL).train.inputs[:1])
    other = x.clone()
    other[:, 0] += 1
    a, b = net.encode(x), net.encode(other)
    assert not torch.allclose(a[:, 0], b[:, 0])  # prefix token 0 reads the identity
    assert torch.allclose(a[:, 1:], b[:, 1:])  # the grid's tokens do not


def test_a_tiny_arc_run_trains_and_runs_the_protocol(tmp_path, monkeypatch):
    cfg = tiny_config("arc-1-10", ["steps=3", "critic_fit_steps=0"], data_options=SMALL)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result["step"] >= 3 and 0 <= result["val_prior_acc"] <= 1
    from gram_pyro.checkpoint import load_run

    task, cfg, net = load_run(tmp_path / "run")
    data = task.build(**cfg.data_options)
    model, _ = programs(net, cfg)
    import gram_pyro.arc as arc

    calls = []
    real = arc.prior_rollouts
    monkeypatch.setattr(arc, "prior_rollouts", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    report = arc_report(model, task, data.test, views=2, samples=3)
    assert report["tasks"] == 3 and report["inputs"] == len(data.test)
    assert 0 <= report["pass@2"] <= 1 and report["pass@1"] <= report["pass@2"]
    assert 0 <= report["lprm"]["pass@2"] <= 1 and report["lprm"]["pass@1"] <= report["lprm"]["pass@2"]
    assert report["views"] == 2 and all(r["distinct"] <= 6 for r in report["per_input"])
    # both votes score one set of trajectories: one batch of 2 views per test input
    assert len(calls) == len(data.test) and all(len(rows) == 2 for rows in calls)

    from gram_pyro.evaluate import sample_puzzle

    calls.clear()
    text = task.format_input(data.test.inputs[0])
    r = sample_puzzle(tmp_path / "run", text, 3)
    # the table's samples are view 0's of the vote: the puzzle is sampled once, on its 4 views
    assert len(calls) == 1 and len(calls[0]) == SMALL["views"]
    assert sum(d["count"] for d in r["answers"]) == 3
    assert r["arc"]["trajectories"] == 3 * SMALL["views"] and r["arc"]["pass@2"] in (True, False)


def test_a_local_folder_of_official_files_is_read(tmp_path):
    for part, name in (("training", "aaaa0001"), ("evaluation", "bbbb0002")):
        (tmp_path / part).mkdir()
        pair = {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}
        (tmp_path / part / f"{name}.json").write_text(json.dumps({"train": [pair], "test": [pair]}))
    task = get_task("arc-2-8")
    data = task.build(path=str(tmp_path), views=2)
    assert data.meta["training_tasks"] == ["aaaa0001"] and data.meta["evaluation_tasks"] == ["bbbb0002"]
    assert len(data.test) == 1 and task.format_input(data.test.inputs[0]).startswith("bbbb0002 ")
    row = task.parse_input("bbbb0002 [[1,2],[3,4]]")
    assert task.is_correct(row[None], task.parse_answer("[[4,3],[2,1]]")[None]).all()
    with pytest.raises(UserError, match="unknown ARC puzzle"):
        task.parse_input("cccc0003 [[1]]")
    with pytest.raises(UserError, match="needs training/ and evaluation/"):
        load_source(2, str(tmp_path / "training"))


def test_arc_names_and_bad_input_are_one_line_errors(tmp_path):
    assert "arc-1" in task_names() and "arc-2-10" in task_names()
    assert get_task("arc-1").seq_len == 901 and get_task("arc-1-10").seq_len == 101
    with pytest.raises(UserError, match="no unconditional form"):
        get_task("arc-1", unconditional=True)
    r = subprocess.run([sys.executable, "-m", "gram_pyro", "train", "--task", "arc-1", "--out",
                        str(tmp_path / "run"), "--data", f"path={tmp_path / 'nowhere'}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no ARC data folder" in r.stderr and "Traceback" not in r.stderr


def test_the_gpu_arc_command_rehearses_on_cpu_with_the_full_data(tmp_path):
    bench = __import__("pathlib").Path(__file__).resolve().parent.parent / "benchmarks"
    r = subprocess.run(["bash", str(bench / "gpu_paper.sh"), str(tmp_path / "out"), "--task", "arc-1",
                        "--device", "cpu", "--tiny"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cfg = json.loads((tmp_path / "out" / "run" / "config.json").read_text())
    assert summary["steps"] > 0 and 0 <= summary["arc_pass@2"] <= 1
    assert cfg["task"] == "arc-1" and cfg["data_options"] == {"views": "1000"}


def test_row_sign_sgd_moves_only_the_rows_with_a_gradient():
    from gram_pyro.train import RowSignSGD

    w = torch.nn.Parameter(torch.randn(5, 3))
    before = w.detach().clone()
    grad = torch.zeros(5, 3)
    grad[1] = torch.tensor([0.5, -2.0, 0.0])
    grad[3, 2] = 1e-9
    w.grad = grad
    RowSignSGD([w], lr=0.1, weight_decay=0.5).step()
    for r in (0, 2, 4):
        assert torch.equal(w[r], before[r])  # untouched: no decay, no movement
    for r in (1, 3):
        want = before[r] * (1 - 0.1 * 0.5) - 0.1 * grad[r].sign()
        assert torch.allclose(w[r], want)


def test_the_trainer_moves_only_the_puzzle_rows_of_the_batch(tmp_path):
    """The table is outside AdamW (whose stale moments would move every row seen before) and
    outside the clipping; a batch's steps change exactly its identities' rows."""
    cfg = tiny_config("arc-1-10", ["batch_size=2", "critic_fit_steps=0"], data_options=SMALL)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    table = trainer.net.encoder.puzzle.weight
    assert all(p is not table for g in trainer.opt.param_groups for p in g["params"])
    assert all(p is not table for p in trainer.clipped)
    batches = []
    sample = trainer.sample_batch
    trainer.sample_batch = lambda: batches.append(sample()) or batches[-1]
    for _ in range(3):
        before = table.detach().clone()
        trainer.train_batch()
        changed = set(torch.nonzero((table != before).any(1)).flatten().tolist())
        x = batches[-1][0]
        assert changed == set(x[:, 0].tolist())
    assert len({int(i) for b in batches for i in b[0][:, 0]}) > 2  # the batches' rows differ
