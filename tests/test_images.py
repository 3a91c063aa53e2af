"""The digits image task, the conv stem, the Pyro VAE anchor and the sample-quality metrics."""

import gzip
import hashlib
import json
import math
import struct
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

from gram_pyro import images as im
from gram_pyro.build import build_net
from gram_pyro.elbo import guided_traces
from gram_pyro.errors import UserError
from gram_pyro.guides.vae import VAEGuide
from gram_pyro.likelihood import estimate, log_weights
from gram_pyro.models.vae import VAEModel
from gram_pyro.nets import ConvStem
from gram_pyro.tasks import get_task
from gram_pyro.tasks.digits import binarize, read_idx

from helpers import tiny_config


# -- data ---------------------------------------------------------------------------------------
def test_binarization_is_above_half_the_scale():
    assert binarize(np.array([[0, 7, 8, 9, 16]]), 16).tolist() == [[0, 0, 0, 1, 1]]
    assert binarize(np.array([[0, 127, 128, 255]]), 255).tolist() == [[0, 0, 1, 1]]


def test_digits_split_is_fixed_disjoint_and_complete():
    task = get_task("digits-8")
    a, b = task.build(cache=False), task.build(cache=False)
    sizes = {name: len(a.split(name).completions) for name in ("train", "val", "test")}
    assert sizes == {"train": 1258, "val": 180, "test": 359}
    for name in ("train", "val", "test"):
        assert np.array_equal(a.split(name).completions, b.split(name).completions)
        assert a.split(name).inputs.tolist() == [[0] * 64]  # one blank input, p(x)
    # the split is stable across versions: a digest of the test images in their order
    digest = hashlib.sha256(a.test.completions.astype(np.uint8).tobytes()).hexdigest()[:16]
    assert digest == TEST_DIGEST
    # the three splits are a partition of the source images (as a multiset of rows)
    source, labels = task.source()
    assert len(source) == len(labels) == 1797
    together = np.concatenate([a.train.completions, a.val.completions, a.test.completions])
    assert sorted(map(bytes, together.astype(np.uint8))) == sorted(map(bytes, source.astype(np.uint8)))
    [(images, lab)] = task.labelled("test")
    assert np.array_equal(images, a.test.completions) and len(lab) == 359
    assert get_task("digits-8").unconditional


def test_labelled_reads_the_source_once_for_all_the_splits_it_is_asked(monkeypatch):
    task = get_task("digits-8")
    reads = []
    real = type(task).source
    monkeypatch.setattr(type(task), "source", lambda self, *a: reads.append(a) or real(self, *a))
    parts = task.labelled("train", "val", "test")
    assert len(reads) == 1
    data = task.build(cache=False)
    for (images, labels), name in zip(parts, ("train", "val", "test")):
        assert np.array_equal(images, data.split(name).completions) and len(labels) == len(images)
    with pytest.raises(ValueError, match="split names"):
        task.labelled("training")


TEST_DIGEST = "ac660eb85da560f7"  # sklearn digits, data seed 0, recorded at the split's creation


def _idx_bytes(array: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.astype(np.uint8).tobytes()


def test_a_local_idx_file_is_read_resized_and_split(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (20, 28, 28)).astype(np.uint8)
    raw[0] = 0
    raw[0, :14, :] = 255  # the top half inked
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes(raw))
    assert np.array_equal(read_idx(str(path)), raw)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(raw)))
    assert np.array_equal(read_idx(str(gz)), raw)
    big = get_task("digits-28")
    data = big.build(path=str(path))
    assert sum(len(data.split(s).completions) for s in ("train", "val", "test")) == 20
    full, labels = big.source(str(path))
    assert labels is None and np.array_equal(full, (raw > 127.5).reshape(20, -1))
    small, _ = get_task("digits-8").source(str(gz))  # area-averaged to 8x8 before binarizing
    assert small.shape == (20, 64)
    assert small[0].reshape(8, 8)[:4].all() and not small[0].reshape(8, 8)[4:].any()
    np.savez(tmp_path / "m.npz", x_train=raw[:12], y_train=np.arange(12) % 10, x_test=raw[12:],
             y_test=np.arange(8) % 10)
    images, labels = big.source(str(tmp_path / "m.npz"))
    assert images.shape == (20, 784) and labels.tolist() == list(np.arange(12) % 10) + list(np.arange(8) % 10)


@pytest.mark.parametrize("content, message", [
    (b"\x08\x03\x00\x00", "not an IDX file"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01", "unsigned-byte"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02\x00", "header says 8"),
])
def test_a_bad_idx_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        get_task("digits-8").build(path=str(path))


def test_digits_options_are_checked():
    with pytest.raises(UserError, match="needs a local MNIST-style file"):
        get_task("digits-28").build()
    with pytest.raises(UserError, match="no image file"):
        get_task("digits-8").build(path="/nonexistent/mnist.npz")
    with pytest.raises(UserError, match="blank image"):
        get_task("digits-8").parse_input("#" + "." * 63)
    task = get_task("digits-8")
    image = task.parse_answer("#." * 32)
    assert task.format_answer(image) == "#." * 32 and task.render(image).count("\n") == 7


# -- the conv stem ------------------------------------------------------------------------------
def test_conv_stem_keeps_the_shapes_and_reads_the_image():
    stem = ConvStem((8, 8), vocab=2, d_model=24)
    y = torch.randint(0, 2, (3, 5, 64))
    out = stem(y)
    assert out.shape == (3, 5, 64, 24)
    # a pixel's feature depends on its neighbours (two 5x5 convolutions: 9x9 receptive fields),
    # unlike an embedding; beyond them only GroupNorm's image-wide statistics move, far less
    torch.manual_seed(0)
    y2 = y.clone()
    y2[..., 9] = 1 - y2[..., 9]  # row 1, column 1
    change = (stem(y2) - out).abs().sum(-1)[0, 0].reshape(8, 8)
    near, far = change[:6, :6].min(), change[6:, :].max()
    assert near > 3 * far > 0


def test_stem_conv_builds_a_gram_net_with_the_same_posterior_shapes():
    task = get_task("digits-8")
    nets = {stem: build_net(task, tiny_config("digits-8", [f"stem={stem}"])) for stem in ("embed", "conv")}
    assert isinstance(nets["conv"].target_embed, ConvStem)
    u = torch.randn(2, 3, 65, 32)
    y = torch.randint(0, 2, (3, 64))
    for net in nets.values():
        loc, scale = net.posterior(u, y)
        assert loc.shape == scale.shape == u.shape
    with pytest.raises(UserError, match="stem=conv needs an image task"):
        build_net(get_task("nqueens-5"), tiny_config("nqueens-5", ["stem=conv"]))
    with pytest.raises(UserError, match="stem must be one of"):
        tiny_config("digits-8", ["stem=patch"])


# -- the Pyro VAE -------------------------------------------------------------------------------
def test_vae_elbo_matches_trace_elbo_on_the_same_traces():
    model, guide = VAEModel(16, z_dim=3, hidden=8), VAEGuide(16, z_dim=3, hidden=8)
    x = torch.zeros(5, 1, dtype=torch.long)
    y = torch.randint(0, 2, (5, 16))
    pyro.set_rng_seed(3)
    model_trace, guide_trace = guided_traces(model, guide, x, y)
    ours = (model_trace.log_prob_sum() - guide_trace.log_prob_sum()).item()
    pyro.set_rng_seed(3)
    stock = -pyro.infer.Trace_ELBO(max_plate_nesting=2).loss(model, guide, x, y)
    assert stock == pytest.approx(ours, rel=1e-6)
    # the importance-weighting code sees the same log weights, per image
    pyro.set_rng_seed(3)
    lw, _ = log_weights(model, guide, x, y, 1)
    assert lw.shape == (1, 5) and lw.sum().item() == pytest.approx(ours, rel=1e-5)
    # and its analytic-KL ELBO agrees with Trace_ELBO's Monte Carlo estimate
    est = estimate(model, guide, x, y, 4000)
    mc = -pyro.infer.Trace_ELBO(num_particles=4000, vectorize_particles=True,
                                max_plate_nesting=2).loss(model, guide, x, y) / 5
    assert est.elbo.mean() == pytest.approx(mc, abs=0.1)
    assert (est.iwae >= est.elbo - 1e-3).all()  # IWAE_K >= ELBO


def test_train_vae_improves_the_validation_elbo_and_keeps_the_best():
    task = get_task("digits-8")
    (train, _), (val, _) = task.labelled("train", "val")
    model, guide, report = im.train_vae(train, val, steps=120, eval_every=40, batch_size=64, hidden=32)
    values = [v for _, v in report["curve"]]
    assert report["steps"] == 120 and len(values) == 3
    assert values[-1] > values[0]  # SVI improves the held-out ELBO
    assert report["best_val_elbo"] == pytest.approx(max(values), abs=1e-4)
    assert im.vae_elbo(model, guide, torch.as_tensor(val, dtype=torch.float32), 64) == \
        pytest.approx(report["best_val_elbo"], abs=1.0)
    samples = im.vae_samples(model, 10)
    assert samples.shape == (10, 64) and set(np.unique(samples)) <= {0, 1}


# -- the floor and the metrics ------------------------------------------------------------------
def test_factorized_floor_is_the_smoothed_pixel_frequency():
    train = np.array([[1, 0], [1, 1], [0, 0]])
    probs = im.factorized_probs(train)
    assert probs.tolist() == pytest.approx([3 / 5, 2 / 5])
    lp = im.factorized_log_prob(probs, np.array([[1, 0]]))
    assert lp[0] == pytest.approx(math.log(3 / 5) + math.log(3 / 5))


def test_quality_metrics_tell_real_from_noise():
    task = get_task("digits-8")
    (train, labels), (test, test_labels), (val, _) = task.labelled("train", "test", "val")
    judge = im.QualityJudge(train, labels, test, subset=len(val))
    assert judge.accuracy(test, test_labels) > 0.8
    real = judge.report(val)
    noise = judge.report((np.random.default_rng(0).random((len(val), 64)) < 0.3).astype(int))
    assert real["confidence"] > noise["confidence"]
    assert real["frechet"] < noise["frechet"]
    assert real["class_entropy"] > 2.0  # all ten classes
    copies = judge.report(train[:len(val)])
    assert copies["copies"] == 1.0 and copies["nn_hamming_mean"] == 0.0
    assert 0 < real["nn_hamming_mean"] < noise["nn_hamming_mean"]


def test_frechet_distance_and_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert im.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert im.frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-3)  # |shift|^2
    lo, hi = im.bootstrap_interval(a[:, 0])
    assert lo < a[:, 0].mean() < hi and hi - lo < 0.2
    assert im.nearest_hamming(np.array([[1, 1, 0]]), np.array([[0, 0, 0], [1, 0, 0]])).tolist() == [1]


# -- the CLI ------------------------------------------------------------------------------------
def test_generate_on_a_digits_run_writes_a_png_and_reports_quality(tmp_path):
    run = tmp_path / "d"
    base = [sys.executable, "-m", "gram_pyro"]
    sets = [a for kv in ("d_model=16", "n_layers=1", "k_low=1", "n_supervision=2", "batch_size=8",
                         "eval_inputs=1", "eval_samples=4", "eval_interval=4", "stem=conv")
            for a in ("--set", kv)]
    r = subprocess.run([*base, "train", "--task", "digits-8", "--out", str(run), "--steps", "3",
                        "--quiet", *sets], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["unconditional"] is True
    r = subprocess.run([*base, "generate", str(run), "-n", "40", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    q = report["quality"]
    assert report["image"] and q["samples"] == 40 and 0 <= q["confidence"] <= 1
    assert 0 <= q["class_entropy"] <= q["max_class_entropy"] and q["frechet"] >= 0
    assert (run / "generated.png").stat().st_size > 1000
    r = subprocess.run([*base, "generate", str(run), "-n", "5"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "image quality" in r.stdout and "valid:" not in r.stdout
