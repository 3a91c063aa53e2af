import numpy as np

from gram_pyro import metrics
from gram_pyro.tasks import get_task


def _setup():
    task = get_task("nqueens-8")
    split = task.build(seed=0).test
    return task, split


def test_coverage_counts_distinct_valid_answers_against_all_completions():
    task, split = _setup()
    m = len(split)
    # perfect sampler: N samples cycling through every completion (N >= max completions)
    n = int(split.num_completions.max())
    samples = np.stack([split.completions_of(i)[np.arange(n) % split.num_completions[i]]
                        for i in range(m)])
    full = metrics.coverage(task, split, samples)
    assert full["micro"] == 1.0 and full["macro"] == 1.0
    # a collapsed sampler (always the first completion) finds exactly one answer per input
    first = np.repeat(split.completions[split.offsets[:-1], None], n, axis=1)
    one = metrics.coverage(task, split, first)
    assert np.all(one["found"] == 1)
    assert np.isclose(one["micro"], m / split.num_completions.sum())
    assert np.isclose(one["macro"], np.mean(1 / split.num_completions))
    assert one["micro"] < one["macro"] < 1  # micro weighs the many-solution inputs more


def test_coverage_ceiling_is_what_uniform_independent_sampling_expects_and_no_skew_beats_it():
    task, split = _setup()
    part = split.subset(np.arange(60))
    n, reps = 5, 400
    rng = np.random.default_rng(0)
    k = part.num_completions

    def draw(weights_of):  # mean micro and macro coverage of n independent draws per input
        micro, macro = [], []
        for _ in range(reps):
            picks = np.stack([part.completions_of(i)[rng.choice(k[i], n, p=weights_of(k[i]))]
                              for i in range(len(part))])
            c = metrics.coverage(task, part, picks)
            micro.append(c["micro"])
            macro.append(c["macro"])
        return np.mean(micro), np.mean(macro)

    ceiling = metrics.coverage_ceiling(part, n)
    assert k.max() > 1 and ceiling["micro"] < 1  # some input cannot be covered by 5 draws
    micro, macro = draw(lambda K: np.full(K, 1 / K))
    assert abs(micro - ceiling["micro"]) < 0.01 and abs(macro - ceiling["macro"]) < 0.01
    skewed = draw(lambda K: np.r_[0.6, np.full(K - 1, 0.4 / (K - 1))] if K > 1 else np.ones(1))
    assert skewed[0] < ceiling["micro"] - 0.02 and skewed[1] < ceiling["macro"] - 0.02
    # the closed form on the input with the most completions K: K (1 - (1 - 1/K)^20) found
    one = part.subset(np.flatnonzero(k == k.max())[:1])
    K = int(one.num_completions[0])
    assert np.isclose(metrics.coverage_ceiling(one, 20)["micro"], 1 - (1 - 1 / K) ** 20)
    assert metrics.coverage_ceiling(one, 10_000)["micro"] > 0.999


def test_invalid_or_inconsistent_answers_are_not_found():
    task, split = _setup()
    bad = np.zeros((len(split), 3, 64), np.int64)  # empty boards
    c = metrics.coverage(task, split, bad)
    assert c["micro"] == 0.0 and c["sample_accuracy"] == 0.0
    # a valid board that drops a given queen is not correct
    i = int(np.flatnonzero(split.inputs.sum(1) > 0)[0])
    wrong = [b for b in task.all_objects() if not task.is_consistent(split.inputs[i:i + 1], b[None])[0]][0]
    assert metrics.accuracy(task, split.inputs[i:i + 1], wrong[None]) == 0.0


def test_generation_stats_on_the_full_space():
    task = get_task("nqueens-8", unconditional=True)
    boards = task.all_objects()
    mixed = np.concatenate([boards, boards[:10], np.zeros((5, 64), np.int64)])
    s = metrics.generation_stats(task, mixed)
    assert s["coverage"] == 1.0 and s["distinct_valid"] == 92
    assert np.isclose(s["valid"], 102 / 107)
    assert np.isclose(s["unique_fraction"], 93 / 107)
