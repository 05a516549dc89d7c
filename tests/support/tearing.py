"""The kill-at-write-point harness of the tearing tests: the child's side and the parent's side.

Child side (a script run as a subprocess, e.g. ``tests/integration/tearing_child.py``): the
arguments ``STATE_DIR N MODE [REST...]`` (:class:`ChildArgs`); :func:`tearing` replaces
``Nvm._write_point`` by a :class:`Tear` that counts the write points and sends the process
``SIGKILL`` when the count reaches ``N`` (``N`` = 0: never); :func:`report` prints
``POINTS <count>``, one ``POINT <i> <label>`` line per write point (1-based, in order), any
result lines, and ``DONE``.

Parent side (the test): :func:`run_child` runs such a script with a timeout, :func:`write_points`
reads the write-point labels of a run that was never killed, :func:`check_child` checks that a
run died at its point (or finished, past the last point), :func:`commit_points` finds the points
after which a commit is visible (the image's rename).

Not covered: what each child does and what each test checks after reopening the card.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from iotid.se import Nvm
from iotid.se.nvm import IMAGE_NAME

#: A child's return code when it was killed at its write point.
KILLED = -signal.SIGKILL
#: The temporary image a torn commit can leave behind (the card removes it on open).
TMP_NAME = Path(IMAGE_NAME).with_suffix(".tmp").name
CHILD_TIMEOUT = 60


# -- the child -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChildArgs:
    """``STATE_DIR N MODE [REST...]`` as given to a child script."""

    state: Path
    kill_at: int
    mode: str
    rest: list[str]

    @classmethod
    def parse(cls, argv: Sequence[str]) -> ChildArgs:
        return cls(Path(argv[1]), int(argv[2]), argv[3], list(argv[4:]))

    @property
    def durable(self) -> bool:
        """False when ``--volatile`` follows the mode."""
        return "--volatile" not in self.rest


class Tear:
    """Counts write points; kills this process with SIGKILL at point number ``kill_at``."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.labels: list[str] = []

    def __call__(self, label: str) -> None:
        # Not a function, so not bound: installed on the class, it is called with the label only.
        self.labels.append(label)
        if len(self.labels) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def tearing(kill_at: int) -> Iterator[Tear]:
    """Within the block every ``Nvm`` write point goes through a :class:`Tear`."""
    tear = Tear(kill_at)
    with mock.patch.object(Nvm, "_write_point", tear):
        yield tear


def report(tear: Tear, *results: str) -> None:
    """Print the write points, then ``results`` (one a line), then ``DONE``."""
    print(f"POINTS {len(tear.labels)}")
    for i, label in enumerate(tear.labels, 1):
        print(f"POINT {i} {label}")
    for line in results:
        print(line)
    print("DONE", flush=True)


# -- the parent ----------------------------------------------------------------------------------
def run_child(
    script: Path, state: Path, kill_at: int, *args: str, durable: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python SCRIPT STATE KILL_AT ARGS... [--volatile]``, output captured, bounded by a
    timeout (``--volatile`` when not ``durable``)."""
    cmd = [sys.executable, str(script), str(state), str(kill_at), *args]
    if not durable:
        cmd.append("--volatile")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)


def write_points(
    proc: subprocess.CompletedProcess[str], results: int = 0
) -> tuple[list[str], list[str]]:
    """The labels of a run that was never killed, and its ``results`` result lines."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "DONE"
    end = len(lines) - 1 - results
    labels = [line.split(" ", 2)[2] for line in lines[1:end]]
    assert len(labels) == int(lines[0].removeprefix("POINTS "))
    return labels, lines[end:-1]


def commit_points(labels: list[str]) -> list[int]:
    """1-based numbers of the write points after which a commit is visible (the renames)."""
    return [i for i, label in enumerate(labels, 1) if label == "after rename"]


def check_child(proc: subprocess.CompletedProcess[str], kill_at: int, count: int) -> None:
    """Killed at point ``kill_at`` if there is such a point, else finished."""
    if kill_at <= count:
        assert proc.returncode == KILLED, f"point {kill_at}: rc {proc.returncode}\n{proc.stderr}"
        assert "DONE" not in proc.stdout
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[-1] == "DONE"
