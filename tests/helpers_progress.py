"""Show a long set-up step's progress on the terminal although pytest captures the tests' output."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest


def show(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal now, even under pytest's output capture (no ``-s`` needed)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        if reporter is not None:
            reporter.ensure_newline()  # not after the test's progress dot, on its own line
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run_showing_stderr(config: pytest.Config, command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command``; each stderr line is shown on the terminal as it comes, and kept in the result."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)  # a hung install must not hang the suite
    timer.start()
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            show(config, line.rstrip("\n"))
        stdout = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, "".join(lines))
