"""nan_loss: the display loss or a train/test output is NaN/inf."""

from __future__ import annotations

from . import block, output, replay_run, run_blocks


def test_nan_loss_edges() -> None:
    a = run_blocks([block(0, loss=3.4e38), block(2, loss="inf"), block(4, loss="-nan")])
    (f,) = [f for f in a.findings if f.type == "nan_loss"]
    assert (f.iteration, f.last_iteration, a.counts["nan_loss"]) == (2, 4, 2)


def test_a_nan_train_output_is_seen_at_the_next_display() -> None:
    a = run_blocks([block(0, loss=2.0), [*block(2, loss=2.0), output("loss", "nan")], block(4, loss=2.0)])
    (f,) = [f for f in a.findings if f.type == "nan_loss"]
    assert (f.iteration, f.values) == (4, {"train_output:loss": "nan"})
    assert f.message == "non-finite loss at iteration 4: {'train_output:loss': 'nan'}"


def test_lenet_nan_from_iteration_4() -> None:
    a = replay_run("lenet_nan")
    (f,) = [f for f in a.findings if f.type == "nan_loss"]
    assert (f.iteration, f.last_iteration, f.display_iterations, f.open) == (4, 60, 29, True)
    assert f.values == {"loss": "nan"} and f.evidence_lines == [858]
