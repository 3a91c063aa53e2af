"""Data-parallel training (DDP on CPU with gloo), the epoch sampler, and bf16 autocast.

The 2-process runs are tiny. One spawned session (two ranks, module fixture) runs every
in-library scenario and leaves what each rank saw in a JSON file; the tests read it. One test
runs the real user path, ``python -m torch.distributed.run --nproc_per_node=2 -m gram_pyro.cli
train``, as a subprocess.
"""

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gram_pyro.checkpoint import load_checkpoint
from gram_pyro.cli import main
from gram_pyro.distributed import EpochSampler, rank_seed
from gram_pyro.errors import UserError
from gram_pyro.train import Trainer
from tests.helpers import TINY, tiny_config, tiny_programs

# noise-free and augmentation-free: a 2-process run is the 1-process run up to float rounding
EXACT = ["deterministic=true", "augment=false", "steps=8", "eval_interval=4"]
# the stochastic model, each rank drawing its own noise; with the joint critic (the paper preset's
# path), so that every parameter, the critic's too, trains under DDP
GRAM = ["steps=8", "eval_interval=4", "joint_critic=true"]
EXACT_TOL = 1e-4  # |loss difference| per step: float reduction order only
GRAM_TOL = 0.25   # relative, per step: different noise draws, the same model and data


# -- the spawned session ----------------------------------------------------------------------
def _audit_writes(root: str, seen: list):
    """Record every write-like file operation under ``root`` (Python audit events)."""
    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and os.fsdecode(args[0]).startswith(root):
                seen.append(f"open {os.fsdecode(args[0])}")
        elif event in ("os.rename", "os.remove", "os.mkdir") and args \
                and os.fsdecode(args[0]).startswith(root):
            seen.append(f"{event} {os.fsdecode(args[0])}")
    sys.addaudithook(hook)


def _poison(trainer, calls):
    from tests.test_train import poison
    poison(trainer, calls)


def _params(module) -> list:
    return [t.detach().clone() for t in module.state_dict().values()]


def _record_losses(trainer, into: list):
    original = trainer.train_batch

    def recording():
        logs = original()
        into.extend(log["loss"] for log in logs if "loss" in log)
        return logs
    trainer.train_batch = recording


def _fit(cfg, out) -> tuple:
    trainer = Trainer(cfg, out, progress=False)
    losses = []
    _record_losses(trainer, losses)
    trainer.fit()
    return trainer, losses


def _worker(rank: int, world: int, port: int, root: str):
    import faulthandler

    import torch.distributed as dist

    # a rank killed by a signal (an abort inside gloo) leaves its Python stack for the fixture
    faulthandler.enable(open(os.path.join(root, f"fault{rank}.txt"), "w"), all_threads=True)
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    writes: list = []
    runs = os.path.join(root, "runs")
    if rank:
        _audit_writes(runs, writes)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    report = {}
    # 1. exact: the same losses as one process, and identical weights on both ranks
    trainer, report["exact_losses"] = _fit(tiny_config(extra=EXACT), f"{runs}/exact")
    # 2. GRAM: every parameter trained, identical on both ranks (nothing left out of DDP)
    init = [p.detach().clone() for p in
            Trainer(tiny_config(extra=GRAM), f"{runs}/init", progress=False).net.parameters()]
    trainer, report["gram_losses"] = _fit(tiny_config(extra=GRAM), f"{runs}/gram")
    mine = _params(trainer.net) + _params(trainer.ema_net)
    everyone = trainer.group.gather(mine)
    report["identical"] = all(torch.equal(a, b) for a, b in zip(*everyone))
    report["untrained"] = [name for (name, p), p0 in zip(trainer.net.named_parameters(), init)
                           if torch.equal(p, p0)]
    # 3. exact resume: a run saved after 2 batches and resumed ends where an unbroken one does
    split = Trainer(tiny_config(extra=GRAM), f"{runs}/split", progress=False)
    split.train_batch()
    split.train_batch()
    split.save()
    del split
    resumed = Trainer(tiny_config(extra=GRAM), f"{runs}/split", resume=True, progress=False)
    report["resumed_at"] = resumed.step
    resumed.fit()
    report["resume_exact"] = all(torch.equal(a, b) for a, b in
                                 zip(_params(trainer.net), _params(resumed.net)))
    # 4. a NaN on rank 1 only: both ranks skip the batch together, and stay identical
    skipper = Trainer(tiny_config(extra=["steps=6", "on_nan=skip", "eval_interval=100"]),
                      f"{runs}/skip", progress=False)
    if rank == 1:
        _poison(skipper, {1})
    skipper.fit()
    report["skip"] = {"step": skipper.step, "nan_skips": skipper.nan_skips,
                      "identical": all(torch.equal(a, b) for a, b in
                                       zip(*skipper.group.gather(_params(skipper.net))))}
    # 5. ... and with on_nan=stop, both ranks stop with the same kind of error
    stopper = Trainer(tiny_config(extra=["steps=8"]), f"{runs}/stop", progress=False)
    if rank == 1:
        _poison(stopper, {2})
    try:
        stopper.fit()
        report["stop"] = None
    except UserError as e:
        report["stop"] = str(e)
    report["writes"] = writes
    Path(root, f"rank{rank}.json").write_text(json.dumps(report))
    # leave together, and free the trainers' DDP wrappers (which hold the process group) while
    # the interpreter is alive: gloo objects torn down at interpreter exit can abort the process
    dist.barrier()
    del trainer, resumed, skipper, stopper
    gc.collect()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    try:
        torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2,
                                    join=True)
    except torch.multiprocessing.ProcessExitedException as e:  # died by a signal: say where
        stacks = "\n".join(f"rank {r}:\n{(root / f'fault{r}.txt').read_text()}" for r in range(2))
        raise AssertionError(f"{e}\n{stacks}") from None
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


def _one_process(extra, tmp_path):
    return _fit(tiny_config(extra=extra), tmp_path / "one")[1]


def test_two_processes_reproduce_the_one_process_loss_curve(session, tmp_path):
    one = _one_process(EXACT, tmp_path)
    for rank in session:  # every rank logs the global (all-reduced) loss
        assert len(rank["exact_losses"]) == len(one) == 8
        assert np.max(np.abs(np.subtract(rank["exact_losses"], one))) < EXACT_TOL


def test_stochastic_gram_losses_are_finite_and_close_to_one_process(session, tmp_path):
    one = np.array(_one_process(GRAM, tmp_path))
    two = np.array(session[0]["gram_losses"])
    assert two.shape == one.shape and np.isfinite(two).all()
    assert two.tolist() == session[1]["gram_losses"]
    assert np.all(np.abs(two - one) <= GRAM_TOL * np.abs(one)), (two, one)


def test_every_parameter_trains_and_is_identical_on_both_ranks(session):
    assert session[0]["identical"] and session[1]["identical"]
    assert session[0]["untrained"] == [], session[0]["untrained"]


def test_a_two_process_run_resumes_exactly(session):
    for rank in session:
        assert rank["resumed_at"] == 4 and rank["resume_exact"]


def test_a_nan_on_one_rank_is_handled_by_both(session):
    for rank in session:
        assert rank["skip"] == {"step": 7, "nan_skips": 1, "identical": True}
    assert "non-finite on 1 of 2 processes" in session[0]["stop"]
    assert "loss became nan" in session[1]["stop"]


def test_rank_1_writes_nothing_into_the_run_folders(session):
    assert session[1]["writes"] == []


# -- the user path: torchrun ------------------------------------------------------------------
def test_torchrun_cli_trains_data_parallel_and_only_rank_0_writes(tmp_path):
    sets = [a for kv in [*TINY, "pyro_validation=false", *EXACT[:2], "eval_interval=2"]
            for a in ("--set", kv)]
    args = ["train", "--task", "nqueens-5", "--steps", "4", "--quiet", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "gram_pyro.cli", *args, "--out",
                        str(tmp_path / "ddp")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training deterministic baseline") == 1, r.stdout
    assert "2 processes x 8 examples per batch" in r.stdout
    assert r.stdout.count("step=4") == 1, r.stdout
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == \
        [".lock", "checkpoint.pt", "config.json", "critic.json", "metrics.jsonl"]  # rank 0's lock
    ckpt = load_checkpoint(tmp_path / "ddp")
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rng"]) == 2
    assert ckpt["sampler"] == {"epoch": 0, "cursor": 32}  # 2 batches of 16
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    curves = [[json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").open()]
              for d in ("ddp", "one")]
    assert len(curves[0]) == 2 and np.allclose(*curves, rtol=0, atol=EXACT_TOL), curves


def test_batch_not_divisible_by_the_processes_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    code = main(["train", "--task", "nqueens-5", "--out", str(tmp_path / "r"), "--set",
                 "batch_size=16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "batch_size 16 is the global batch and must be divisible by the number of processes (3)" \
        in err
    assert not (tmp_path / "r").exists()


def test_train_help_documents_torchrun_and_the_global_batch(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "torchrun --nproc_per_node=P -m gram_pyro.cli train" in text
    assert "GLOBAL batch" in text and "--precision {auto,fp32,bf16}" in text


# -- the epoch sampler ------------------------------------------------------------------------
def test_the_ranks_shares_make_up_the_one_process_batch_and_cover_each_epoch():
    one = EpochSampler(10, 4, seed=3)
    ranks = [EpochSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(5):  # 20 indices: exactly two epochs, batches straddling the boundary
        batch = one.next()
        shares = [s.next() for s in ranks]
        assert sorted(batch) == sorted(np.concatenate(shares)) and len(shares[0]) == 2
        seen += batch.tolist()
    assert sorted(seen[:10]) == sorted(seen[10:]) == list(range(10)) and seen[:10] != seen[10:]
    assert one.state_dict() == {"epoch": 2, "cursor": 0}


def test_the_sampler_resumes_where_it_stopped():
    a = EpochSampler(7, 3, seed=0)
    a.next()
    b = EpochSampler(7, 3, seed=0)
    b.load_state_dict(a.state_dict())
    assert [a.next().tolist() for _ in range(4)] == [b.next().tolist() for _ in range(4)]
    with pytest.raises(UserError, match="divisible"):
        EpochSampler(7, 3, seed=0, world_size=2)


def test_rank_0_keeps_the_run_seed_and_the_other_ranks_get_their_own():
    assert rank_seed(5, 0) == 5
    assert len({rank_seed(5, r) for r in range(4)} | {rank_seed(6, 1)}) == 5


# -- bf16 -------------------------------------------------------------------------------------
def test_probabilistic_heads_stay_float32_under_bf16_autocast():
    task, cfg, net, model, guide = tiny_programs()
    x = torch.as_tensor(task.build(seed=0).train.inputs[:3], dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, l = net.initial_state((3,))
        l, u = net.propose(h, l, net.encode(x), k_low=1)
        # autocast really is on: the blocks' matmuls run in bf16 (the post-norm stream is fp32)
        assert net.f_high.layers[0].channel_mix(u).dtype == torch.bfloat16
        y = torch.zeros(3, net.answer_len, dtype=torch.long)
        outs = [*net.prior(u), *net.posterior(u, y), net.decode(u), *net.judge(u)]
    assert all(t.dtype == torch.float32 for t in outs), [t.dtype for t in outs]


def test_a_bf16_run_trains_with_a_finite_falling_loss(tmp_path):
    trainer = Trainer(tiny_config(extra=["lr=3e-3", "pyro_validation=false", "precision=bf16"]),
                      tmp_path / "r", progress=False)
    curve = []
    for _ in range(20):
        curve += [log["loss"] for log in trainer.train_batch()]
    assert np.isfinite(curve).all()
    assert np.mean(curve[-10:]) < 0.8 * np.mean(curve[:10])


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_hardware_has_it_and_the_run_stores_its_choice(
        tmp_path, monkeypatch, native):
    import gram_pyro.build as build

    monkeypatch.setattr(build, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert build.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert build.resolve_precision("fp32", cpu) == "fp32"  # an explicit choice is kept
    trainer = Trainer(tiny_config(extra=["precision=auto", "pyro_validation=false"]),
                      tmp_path / "r", progress=False)
    chosen = "bf16" if native else "fp32"
    assert trainer.cfg.precision == chosen and trainer.step_loss.bf16 == native
    trainer.train_batch()
    trainer.save()
    assert json.loads(load_checkpoint(tmp_path / "r")["config"])["precision"] == chosen


def test_bad_precision_is_a_user_error():
    with pytest.raises(UserError, match="precision must be"):
        tiny_config(extra=["precision=fp16"])
