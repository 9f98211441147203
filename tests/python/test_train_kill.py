"""kill -9 of `slideformer train` at seven moments, one run directory: after every kill the last
checkpoint loads, --resume (or a fresh start, before the first checkpoint) continues, and the run
ends with weights and optimizer state bit-identical to an uninterrupted run on the same threads."""
import ctypes
import json
import os
import select
import signal
import struct
import subprocess

import torch

from test_cli import BIN, assert_same_tensors, checked, checkpoint_tensors, run

ARGS = ["--preset", "fashion", "--limit", "256", "--batch-size", "32", "--threads", "1", "--epochs", "3"]

IN_CREATE, IN_MOVED_TO = 0x100, 0x80
libc = ctypes.CDLL("libc.so.6", use_errno=True)


class DirectoryWatch:
    """inotify on a directory: waits for a name to be created or renamed into it."""

    def __init__(self, directory):
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, bytes(directory), IN_CREATE | IN_MOVED_TO) >= 0

    def wait_for(self, name, mask, process, timeout=120):
        while True:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            assert ready, f"no event for {name} in {timeout} s"
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _, event_mask, _, length = struct.unpack_from("iIII", data, offset)
                event_name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if event_name == name and event_mask & mask:
                    return
            assert process.poll() is None, f"train ended before {name} appeared"

    def close(self):
        os.close(self.fd)


def train_and_kill(out, *extra, at):
    """Starts `train`, SIGKILLs it at the moment `at` names and returns its output so far.
    at: "start" (header printed), ("line", prefix) (a progress line), "tmp created" (a checkpoint
    write has begun) or "checkpoint renamed" (one has just been completed)."""
    watch = DirectoryWatch(out)
    process = subprocess.Popen([str(BIN), "train", *ARGS, "--out", str(out), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        if at == "tmp created":
            watch.wait_for("checkpoint.pt.tmp", IN_CREATE, process)
        elif at == "checkpoint renamed":
            watch.wait_for("checkpoint.pt", IN_MOVED_TO, process)
        else:
            prefix = "training " if at == "start" else at[1]
            for line in process.stdout:
                seen.append(line)
                if line.startswith(prefix):
                    break
            else:
                raise AssertionError(f"train ended before a line starting with {prefix!r}: {seen}")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        watch.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL, seen
    return "".join(seen)


def progress(out):
    archive = torch.jit.load(str(out / "checkpoint.pt"))
    return archive.epoch, archive.step_in_epoch


def assert_last_checkpoint_loads(out):
    result = run("eval", "--checkpoint", out / "checkpoint.pt", "--limit", "32")
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout


def metrics_without_timings(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_second")}
            for line in lines]


def test_kill_9_at_seven_moments_then_resume_gives_the_uninterrupted_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    checked("train", *ARGS, "--out", straight)
    killed.mkdir()

    # 1. At the start of a fresh run: nothing written, a fresh run starts again.
    train_and_kill(killed, at="start")
    assert not (killed / "checkpoint.pt").exists()

    # 2. During the first checkpoint write: only the temporary file exists; --resume says so, a
    #    fresh run is not disturbed by it.
    train_and_kill(killed, at="tmp created")
    assert (killed / "checkpoint.pt.tmp").exists() and not (killed / "checkpoint.pt").exists()
    no_checkpoint = run("train", *ARGS, "--out", killed, "--resume")
    assert no_checkpoint.returncode == 1
    assert f"{killed}/checkpoint.pt: no checkpoint to resume" in no_checkpoint.stderr

    # 3. Right after a checkpoint was renamed into place (epoch 1 done).
    train_and_kill(killed, at="checkpoint renamed")
    assert not (killed / "checkpoint.pt.tmp").exists()
    assert progress(killed) == (1, 0)
    assert_last_checkpoint_loads(killed)

    # 4. During an epoch of a resumed run.
    train_and_kill(killed, "--resume", at=("line", "epoch 2/3  step 3/8"))
    assert progress(killed) == (1, 0)
    assert_last_checkpoint_loads(killed)

    # 5. At the start of a resumed run.
    train_and_kill(killed, "--resume", at="start")
    assert progress(killed) == (1, 0)

    # 6. During the evaluation after epoch 2's last step (the checkpoint of epoch 2 may be in
    #    progress: either checkpoint is fine).
    train_and_kill(killed, "--resume", at=("line", "epoch 2/3  step 8/8"))
    assert progress(killed) in [(1, 0), (2, 0)]
    assert_last_checkpoint_loads(killed)

    # 7. During a checkpoint write of a resumed run: the previous checkpoint stays whole.
    before = progress(killed)
    train_and_kill(killed, "--resume", at="tmp created")
    assert (killed / "checkpoint.pt.tmp").exists()
    assert progress(killed) == before
    assert_last_checkpoint_loads(killed)

    checked("train", *ARGS, "--out", killed, "--resume")
    assert progress(killed) == (3, 0)
    assert not (killed / "checkpoint.pt.tmp").exists()
    assert_same_tensors(checkpoint_tensors(killed / "checkpoint.pt"), checkpoint_tensors(straight / "checkpoint.pt"))
    # The metrics come from the checkpoint's history: one line per epoch, as in the straight run.
    assert metrics_without_timings(killed) == metrics_without_timings(straight)
