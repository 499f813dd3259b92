"""``slmops.processes.pid_alive``: the one process-alive check (pipeline runs, roll-out leases)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from slmops.processes import pid_alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombie state is read from /proc")
def test_a_killed_child_not_yet_reaped_is_dead():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    child.kill()
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until wait() reaps it
        time.sleep(0.05)
    try:
        assert not pid_alive(child.pid)
    finally:
        child.wait()
