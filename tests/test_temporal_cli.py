"""The random walk (``temporal='random_walk'``) through results files, the command line and the
report: a temporal MapResult round-trips through every results format; ``bayesmix fit
--temporal`` end to end, with ``--times`` and several stacks as sequences; bad specs and times
files are one-line errors before any work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesmix
from bayesmix._writers import map_result_from_table
from bayesmix.cli import main

SHAPE = (8, 8)


def _walk_stack(n, rng, ref_a, ref_b, step=0.02, noise=0.1):
    x = np.clip(0.5 + np.cumsum(step * rng.standard_normal(n)), 0.0, 1.0)
    d = np.linalg.norm(ref_a - ref_b)
    frames = x[:, None, None] * ref_a + (1 - x[:, None, None]) * ref_b
    return frames + noise * d * rng.standard_normal((n, *SHAPE)), x


@pytest.fixture(scope="module")
def refs():
    sim = bayesmix.simulate(2, shape=SHAPE, noise=0.1, seed=0)
    return sim.ref_a, sim.ref_b


@pytest.fixture(scope="module")
def stacks(refs):
    rng = np.random.default_rng(1)
    return [_walk_stack(n, rng, *refs) for n in (150, 100)]


@pytest.fixture()
def files(tmp_path, refs, stacks):
    np.save(tmp_path / "a.npy", refs[0])
    np.save(tmp_path / "b.npy", refs[1])
    for k, (frames, _) in enumerate(stacks):
        np.save(tmp_path / f"s{k}.npy", frames)
    return tmp_path


@pytest.fixture(scope="module")
def walk_result(refs, stacks):
    frames = np.concatenate([s[0] for s in stacks])
    seq = np.repeat(["first", "second"], [len(s[0]) for s in stacks])
    times = np.concatenate([np.arange(len(s[0])) * 0.5 for s in stacks])
    return bayesmix.fit_map(frames, *refs, temporal="random_walk", sequence_id=seq, times=times)


@pytest.mark.parametrize("ext", ["csv", "parquet", "nc"])
def test_temporal_result_round_trips_through_every_format(walk_result, tmp_path, ext):
    res = walk_result
    path = bayesmix.write_results(res, tmp_path / f"r.{ext}")
    back = map_result_from_table(bayesmix.read_results(path))
    assert back.temporal is not None and back.model.temporal == res.model.temporal
    assert back.temporal.q == res.temporal.q and back.temporal.n_sequences == 2
    a, b = res.to_dataframe(0.8), back.to_dataframe(0.8)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, check_index_type=False)
    assert a.attrs == b.attrs
    for mine, theirs in zip(res.interval(0.8), back.interval(0.8), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert list(np.unique(back.temporal.sequence)) == ["first", "second"]


def test_given_q_round_trips(refs, stacks, tmp_path):
    frames = stacks[1][0]
    res = bayesmix.fit_map(frames, *refs, temporal="random_walk:q=0.03")
    back = map_result_from_table(
        bayesmix.read_results(bayesmix.write_results(res, tmp_path / "r.csv"))
    )
    assert back.temporal.q_fixed and back.temporal.q == pytest.approx(0.03)
    assert back.to_dataframe().attrs["temporal"] == "random_walk:q=0.03"
    np.testing.assert_array_equal(back.interval()[0], res.interval()[0])


def test_cli_temporal_end_to_end_with_times(files, capsys):
    np.savetxt(files / "t.csv", np.arange(150) * 2.0, header="time", comments="")
    argv = ["fit", str(files / "s0.npy"), "--ref-a", str(files / "a.npy"), "--ref-b",
            str(files / "b.npy"), "--temporal", "random_walk", "--times", str(files / "t.csv"),
            "--out", str(files / "r.parquet"), "--report", str(files / "r.html")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "random walk: q =" in out
    df = bayesmix.read_results(files / "r.parquet")
    for col in ("time", "sequence", "mean_alone", "sd_alone", "cavity_mean", "cavity_sd"):
        assert col in df.columns, col
    np.testing.assert_array_equal(df["time"], np.arange(150) * 2.0)
    assert df.attrs["temporal"] == "random_walk" and df.attrs["times"].endswith("t.csv")
    for key in ("temporal_q", "temporal_q_sd", "temporal_q_fixed", "temporal_log_evidence"):
        assert key in df.attrs, key
    # Smoothing narrows the intervals against each frame on its own.
    assert np.median(df["sd"]) < 0.7 * np.median(df["sd_alone"])
    html = (files / "r.html").read_text()
    assert "<h2>Sequence</h2>" in html and "random walk step q" in html


def test_two_stacks_are_two_sequences(files, stacks, capsys):
    argv = ["fit", str(files / "s0.npy"), str(files / "s1.npy"), "--ref-a",
            str(files / "a.npy"), "--ref-b", str(files / "b.npy"), "--temporal",
            "random_walk:q=0.02", "--out", str(files / "r.csv"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    df = bayesmix.read_results(files / "r.csv")
    assert len(df) == 250
    np.testing.assert_array_equal(df["sequence"], np.repeat([0, 1], [150, 100]))
    assert set(df["source"]) == {str(files / "s0.npy"), str(files / "s1.npy")}
    # Without --times a frame's time is its index in the joined stack; each sequence's walk
    # starts afresh from the prior.
    np.testing.assert_array_equal(df["time"], np.r_[np.arange(150), np.arange(150, 250)])
    assert df.attrs["temporal_q_fixed"] in (1, True) and df.attrs["temporal_q"] == 0.02
    truth = np.concatenate([s[1] for s in stacks])
    assert np.sqrt(np.mean((df["mean"] - truth) ** 2)) < np.sqrt(
        np.mean((df["mean_alone"] - truth) ** 2)
    )


def _one_line_exit_2(argv, capsys, files, words):
    before = sorted(p.name for p in files.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bayesmix: error:"), err
    assert all(w in err for w in words), err
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written


@pytest.mark.parametrize(("spec", "words"), [
    ("random_wobble", ["--temporal 'random_wobble'", "random_walk"]),
    ("random_walk:q=-1", ["q must be finite and > 0"]),
    ("random_walk:step=1", ["takes q as key=value"]),
])  # fmt: skip
def test_bad_temporal_spec_is_one_line_before_work(files, capsys, spec, words):
    argv = ["fit", str(files / "s0.npy"), "--ref-a", str(files / "a.npy"), "--ref-b",
            str(files / "b.npy"), "--temporal", spec, "--out", str(files / "r.csv")]  # fmt: skip
    _one_line_exit_2(argv, capsys, files, words)


@pytest.mark.parametrize(("name", "text", "words"), [
    ("t.csv", "time\n0\n1\nabc\n", ["--times", "'abc' is not a number"]),
    ("t.txt", "0 1\n2 3\n", ["one time per line"]),
    ("t.csv", "0\n1\nnan\n", ["NaN or Inf"]),
    ("t.csv", "0\n1\n2\n", ["one time per frame (150), got 3"]),
    ("t.dat", "0\n", ["use one of .npy, .csv, .txt"]),
    ("missing.npy", None, ["no such file"]),
])  # fmt: skip
def test_bad_times_file_is_one_line_before_work(files, capsys, name, text, words):
    if text is not None:
        (files / name).write_text(text)
    argv = ["fit", str(files / "s0.npy"), "--ref-a", str(files / "a.npy"), "--ref-b",
            str(files / "b.npy"), "--temporal", "random_walk", "--times", str(files / name),
            "--out", str(files / "r.csv")]  # fmt: skip
    _one_line_exit_2(argv, capsys, files, words)


def test_times_need_a_temporal_model_and_distinct_times(files, capsys):
    np.save(files / "t.npy", np.zeros(150))
    base = ["fit", str(files / "s0.npy"), "--ref-a", str(files / "a.npy"), "--ref-b",
            str(files / "b.npy"), "--times", str(files / "t.npy"), "--out",
            str(files / "r.csv")]  # fmt: skip
    _one_line_exit_2(base, capsys, files, ["--temporal random_walk"])
    _one_line_exit_2([*base, "--temporal", "random_walk"], capsys, files, ["share the time"])


def test_nuts_walk_with_pixel_level_noise_is_refused_before_work(files, capsys):
    argv = ["fit", str(files / "s0.npy"), "--ref-a", str(files / "a.npy"), "--ref-b",
            str(files / "b.npy"), "--temporal", "random_walk", "--method", "nuts",
            "--noise", "student_t", "--out", str(files / "r.csv")]  # fmt: skip
    _one_line_exit_2(argv, capsys, files, ["pixel-level likelihood"])


def test_report_of_a_temporal_map_result_has_the_sequence_section(walk_result, tmp_path):
    path = bayesmix.report(walk_result, tmp_path / "r.html")
    html = path.read_text()
    assert "<h2>Sequence</h2>" in html and "2</td>" in html  # two sequences
    assert "random walk step q" in html and "(maximum marginal likelihood" in html


def test_report_thins_long_sequences_and_names_the_left_out(refs, tmp_path):
    rng = np.random.default_rng(3)
    frames, _ = _walk_stack(6000, rng, *refs, step=0.005)
    seq = np.repeat(np.arange(6), 1000)
    res = bayesmix.fit_map(frames, *refs, temporal="random_walk", sequence_id=seq)
    html = bayesmix.report(res, tmp_path / "r.html").read_text()
    assert "2 more are not shown" in html and "Long sequences are thinned" in html
    plain = bayesmix.fit_map(frames[:50], *refs)
    html = bayesmix.report(plain, tmp_path / "p.html").read_text()
    assert "<h2>Sequence</h2>" not in html


@pytest.mark.slow  # a NUTS run from the CLI; the walk's NUTS path runs by default in test_temporal_nuts
def test_report_of_a_temporal_nuts_run(refs, stacks, tmp_path):
    import inspect

    if "temporal" not in inspect.signature(bayesmix.sample).parameters:
        pytest.skip("bayesmix.sample does not take temporal= yet")
    frames = np.concatenate([stacks[0][0][:60], stacks[1][0][:40]])
    seq = np.repeat([0, 1], [60, 40])
    idata = bayesmix.sample(frames, *refs, temporal="random_walk", sequence_id=seq,
                            num_chains=2, num_warmup=100, num_samples=100,
                            progress=False)  # fmt: skip
    html = bayesmix.report(idata, tmp_path / "n.html").read_text()
    assert "<h2>Sequence</h2>" in html and "(posterior mean +/- sd, NUTS)" in html
    section = html[html.index("<h2>Sequence</h2>") :].split("</section>")[0]
    assert section.count("data:image/png;base64,") == 2  # trajectories and q's posterior
