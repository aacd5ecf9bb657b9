"""The notebook-12 runner: a training child process, its live readers, stop and resume."""
import time

import pytest

from ddetr_lib.course.training import EXIT_STOPPED, TrainingRun, read_jsonl, train_command
from ddetr_lib.data.synthetic import generate

ARGS = ["--config", "toy_deformable_detr", "--device", "cpu", "--batch-size", "2", "--log-every", "1",
        "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "tiny", setting="demo", seed=3, num_train=8, num_val=4)


def test_read_jsonl_skips_a_half_written_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_train_command_uses_torchrun_for_several_processes():
    assert train_command(["--x"], 1)[1:3] == ["-m", "ddetr_lib.train"]
    cmd = train_command(["--x"], 4)
    assert "torch.distributed.run" in cmd and "--nproc_per_node=4" in cmd and cmd[-1] == "--x"
    with pytest.raises(ValueError, match="nproc"):
        train_command([], 0)


@pytest.mark.slow
def test_a_run_reports_progress_and_finishes(tiny_root, tmp_path):
    stale = tmp_path / "run" / "metrics.jsonl"  # an earlier run's progress must not be read as this one's
    stale.parent.mkdir()
    stale.write_text('{"step": 99, "epoch": 9, "iter": 1, "iters_per_epoch": 9, "sec_per_step": 1.0}\n')
    run = TrainingRun.start([*ARGS, "--data-root", tiny_root, "--epochs", "1", "--steps-per-epoch", "2",
                             "--overwrite"], tmp_path / "run")
    assert run.metrics() == []
    panel = run.dashboard(refresh_s=0.5)
    assert run.wait(timeout=600) == 0, run.console()
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2] and {"loss", "loss_ce", "lr", "sec_per_step"} <= set(rows[0])
    assert "test_AP" in run.epochs()[-1]
    p = run.progress()
    assert p["step"] == p["total"] == 2
    assert run.figure_png()[:8] == b"\x89PNG\r\n\x1a\n"
    bar, _stop = panel.children[0].children
    assert bar.value == bar.max == 2 and "finished" in panel.children[1].value


@pytest.mark.slow
def test_stop_writes_a_checkpoint_and_resume_continues(tiny_root, tmp_path):
    out = tmp_path / "run"
    run = TrainingRun.start([*ARGS, "--data-root", tiny_root, "--epochs", "30", "--steps-per-epoch", "2"], out)
    deadline = time.time() + 600
    while not run.metrics() and run.running() and time.time() < deadline:
        time.sleep(0.5)
    run.stop()
    assert run.wait(timeout=600) == EXIT_STOPPED, run.console()
    assert (out / "checkpoint.pth").exists()
    done = run.metrics()[-1]["step"]  # 2 steps per epoch; where the stop landed depends on timing
    epochs = done // 2 + 1  # the epoch it stopped in (or the next one, at an epoch's end)
    again = TrainingRun.start([*ARGS, "--data-root", tiny_root, "--epochs", str(epochs), "--steps-per-epoch", "2",
                               "--resume", out / "checkpoint.pth"], out)
    assert again.wait(timeout=600) == 0, again.console()
    assert again.metrics()[-1]["step"] == 2 * epochs > done
