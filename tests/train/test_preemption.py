"""Preemption with real processes and signals: stop signals end with a checkpoint and exit code 75,
the resumed run equals an uninterrupted one, wall-time checkpoints survive kill -9, every rank of a
distributed run stops at the same step, and a stopped rank is named when a collective times out."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.train.conftest import (
    free_port,
    make_image_tree,
    metric_rows,
    tiny_argv,
    trainer_process,
    wait_for_logged_step,
)
from train.checkpoint import load_checkpoint
from train.config import load_config
from train.preemption import REQUEUE_EXIT_CODE, CheckpointSchedule, StopSignals

LONG = {"epochs": 50}  # far more steps than a test waits for: the signal always lands mid-run


def _finish(process: subprocess.Popen, limit_s: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=limit_s)
    return process.returncode, out, err


def _state(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=False)


def _assert_equal_weights(a: Path, b: Path) -> None:
    first, second = _state(a)["model"], _state(b)["model"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _run(argv: list[str], **env: str) -> None:
    code, out, err = _finish(trainer_process(argv, **env))
    assert code == 0, err


def test_sigterm_checkpoints_exits_75_and_the_resume_equals_an_uninterrupted_run(image_tree, tmp_path):
    out = tmp_path / "preempted"
    process = trainer_process(tiny_argv(image_tree, out, **LONG))
    wait_for_logged_step(out, 2, process)
    process.send_signal(signal.SIGTERM)
    code, printed, err = _finish(process)
    assert code == REQUEUE_EXIT_CODE, err
    stopped = _state(out)["step"]
    assert f"stopped by SIGTERM at step {stopped}/" in printed and "checkpoint" in printed
    assert not (out / "DONE").exists()
    target = stopped + 2
    _run(tiny_argv(image_tree, tmp_path / "straight", max_steps=target, **LONG))
    _run(tiny_argv(image_tree, out, max_steps=target, **LONG))
    _assert_equal_weights(tmp_path / "straight", out)
    steps = [row["step"] for row in metric_rows(out, "step")]
    assert steps == list(range(1, target + 1))  # no step logged twice, none missing
    (resume,) = metric_rows(out, "resume")
    assert resume["step"] == stopped and resume["changed"] == {"max_steps": [None, target]}


def test_ctrl_c_to_the_process_group_with_data_workers_still_checkpoints(image_tree, tmp_path):
    out = tmp_path / "run"
    process = trainer_process(tiny_argv(image_tree, out, num_workers=1, **LONG))
    wait_for_logged_step(out, 1, process)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: workers get it too
    code, printed, err = _finish(process)
    assert code == REQUEUE_EXIT_CODE, err
    assert "stopped by SIGINT" in printed
    config = load_config(tiny_argv(image_tree, out, num_workers=1, **LONG))
    assert load_checkpoint(out / "last.pt", dataclasses.asdict(config))["step"] >= 1


def test_wall_time_checkpoints_survive_kill_9(tmp_path):
    data = make_image_tree(tmp_path / "images", per_class=32)  # 16 steps per epoch
    out = tmp_path / "run"
    process = trainer_process(tiny_argv(data, out, ckpt_minutes=1e-6, **LONG))  # due after every step
    wait_for_logged_step(out, 3, process)
    process.kill()
    process.communicate()
    step = _state(out)["step"]
    assert 2 <= step and step % 16, "a checkpoint from within the epoch, written by the wall-time rule"
    config = load_config(tiny_argv(data, out, ckpt_minutes=1e-6, **LONG))
    assert load_checkpoint(out / "last.pt", dataclasses.asdict(config))["step"] == step  # intact


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_checkpoint_schedule_by_steps_minutes_and_signal():
    clock, signals = _Clock(), StopSignals()
    schedule = CheckpointSchedule(5, 2.0, signals, 1, torch.device("cpu"), clock)
    assert not schedule.after_step(1).save
    assert schedule.after_step(5).save  # by count
    clock.now = 119.0
    assert not schedule.after_step(6).save
    clock.now = 120.0
    assert schedule.after_step(7).save  # by wall time since the last save
    schedule.saved()
    assert not schedule.after_step(8).save
    signals.received = "SIGUSR1"
    decision = schedule.after_step(9)
    assert decision.save and decision.stop
    off = CheckpointSchedule(0, 0.0, StopSignals(), 1, torch.device("cpu"), clock)
    clock.now = 1e9
    assert not off.after_step(10).save


def _two_ranks(argv: list[str]) -> list[subprocess.Popen]:
    port = str(free_port())
    return [
        trainer_process(
            argv, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        for r in range(2)
    ]


def _finish_all(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    return [_finish(p) for p in processes]


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(image_tree, tmp_path):
    out = tmp_path / "preempted"
    ranks = _two_ranks(tiny_argv(image_tree, out, **LONG))
    wait_for_logged_step(out, 2, *ranks)
    ranks[1].send_signal(signal.SIGUSR1)  # rank 0 is not told: it learns it from the all-reduce
    results = _finish_all(ranks)
    assert [code for code, _, _ in results] == [REQUEUE_EXIT_CODE] * 2, [err for _, _, err in results]
    stopped = _state(out)["step"]
    assert f"stopped by a stop signal to another rank at step {stopped}/" in results[0][1]
    target = stopped + 2
    for run in (tmp_path / "straight", out):
        results = _finish_all(_two_ranks(tiny_argv(image_tree, run, max_steps=target, **LONG)))
        assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    _assert_equal_weights(tmp_path / "straight", out)
    assert [row["step"] for row in metric_rows(out, "step")] == list(range(1, target + 1))


def test_a_stopped_rank_is_named_when_a_collective_times_out(image_tree, tmp_path):
    out = tmp_path / "run"
    ranks = _two_ranks(tiny_argv(image_tree, out, collective_timeout=0.1, **LONG))  # 6 s
    try:
        wait_for_logged_step(out, 2, *ranks)
        ranks[1].send_signal(signal.SIGSTOP)
        code, _, err = _finish(ranks[0], limit_s=120)
        assert code != 0
        assert "waited more than collective_timeout = 0.1 min" in err
        assert "rank 1 did not answer (stopped" in err
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signals_are_recorded_and_handlers_restored(number):
    before = signal.getsignal(number)
    with StopSignals() as signals:
        os.kill(os.getpid(), number)
        assert signals.received == signal.Signals(number).name
    assert signal.getsignal(number) is before
