"""`fast_exit.exit_now`: a process that leaves without the interpreter's teardown still runs its atexit handlers,
flushes its buffered output, keeps its exit status, and waits for a running non-daemon thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sparsetrain.fast_exit import exit_status

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_exit_now_runs_atexit_handlers_and_flushes_buffered_output(tmp_path: Path) -> None:
    marker = tmp_path / "atexit.txt"
    done = _python(f"import atexit, sys\nfrom sparsetrain.fast_exit import exit_now\n"
                   f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
                   "sys.stdout.write('buffered, no newline')\nsys.stderr.write('err')\nexit_now(3)\n"
                   "print('never')")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "buffered, no newline" and done.stderr == "err"
    assert marker.read_text() == "ran", "the atexit handler did not run"


def test_exit_now_waits_for_a_running_non_daemon_thread(tmp_path: Path) -> None:
    marker = tmp_path / "thread.txt"
    done = _python(f"import threading, time\nfrom sparsetrain.fast_exit import exit_now\n"
                   f"def work():\n    time.sleep(0.5)\n    open({str(marker)!r}, 'w').write('finished')\n"
                   "threading.Thread(target=work).start()\nexit_now(0)")
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "finished", "exit_now left before a non-daemon thread finished"


def test_exit_status_follows_sys_exit(capsys) -> None:
    assert (exit_status(None), exit_status(0), exit_status(2)) == (0, 0, 2)
    assert exit_status("usage: bad") == 1 and capsys.readouterr().err == "usage: bad\n"


def test_the_cli_keeps_its_exit_codes() -> None:
    """`python -m sparsetrain` through `cli.entry`: 0 for --help, 2 for an unknown command and for argparse's own
    usage error (SystemExit inside a sub-command)."""
    runs = [subprocess.run([sys.executable, "-m", "sparsetrain", *args], cwd=REPO, capture_output=True, text=True,
                           timeout=300) for args in (["--help"], ["frobnicate"], ["export"])]
    assert [r.returncode for r in runs] == [0, 2, 2], [r.stderr[-500:] for r in runs]
    assert "run" in runs[0].stdout and "unknown command 'frobnicate'" in runs[1].stderr


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`sparsetrain --help | head -3` printed a BrokenPipeError traceback: the reader had closed the pipe. The pipe's
    read end is closed before the process writes (its imports take seconds), so its first write fails."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    with subprocess.Popen([sys.executable, "-m", "sparsetrain", "config", "--schema"], cwd=REPO, stdout=write_end,
                          stderr=subprocess.PIPE, text=True) as proc:
        os.close(write_end)
        _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141, (proc.returncode, err)
