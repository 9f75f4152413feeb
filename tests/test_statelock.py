"""One agent per state dir: a second `boxtel run` refuses at once (exit 75, naming the holder); the lock
goes with its holder, SIGKILL included; `boxtel status` tells an agent whose socket is gone from none."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agent import control, statelock
from tests.diag_support import is_socket
from tests.support import ROOT, boxtel, toml_dumps, wait_until

SIMULATED = {"simulate": True}


def test_a_second_agent_on_the_same_state_dir_refuses_within_a_second(broker, make_config, run_agent, tmp_path):
    config = make_config(broker, SIMULATED)
    first = run_agent(config)
    wait_until(lambda: is_socket(control.socket_path(str(config))), what="the first agent's socket")
    # A stray manual start beside the service: same state dir, its own socket.
    stray = make_config(broker, {**SIMULATED, "diagnostics": {"socket": str(tmp_path / "stray.sock")}})
    started = time.monotonic()
    second = run_agent(stray)
    code = second.process.wait(timeout=20)
    assert code == 75, second.log()
    lines = second.log().strip().splitlines()
    state_dir = str(tmp_path / "state")
    assert lines == [f"boxtel: another boxtel agent (pid {first.pid}) holds the state dir {state_dir}: stop it "
                     "first (systemctl stop boxtel), or give this one its own box.state_dir"]
    # "within a second" of the agent's own start (the interpreter's start-up is not the agent's).
    assert time.monotonic() - started < 10
    # The same config again (a manual start beside the service): refused the same way, socket untouched.
    again = run_agent(config, log_path=tmp_path / "again.log")
    assert again.process.wait(timeout=20) == 75
    assert again.log().strip().splitlines() == lines
    assert first.alive()
    assert control.request(control.socket_path(str(config)), "status")["status"]["service"]["pid"] == first.pid

    first.kill()  # the kernel drops the flock with its holder
    third = run_agent(stray)
    wait_until(lambda: is_socket(str(tmp_path / "stray.sock")), what="the next agent's socket")
    assert control.request(str(tmp_path / "stray.sock"), "status")["status"]["service"]["pid"] == third.pid
    assert (tmp_path / "state" / "agent.lock").read_text().strip() == str(third.pid)


def test_status_tells_an_agent_without_its_socket_from_no_agent(broker, make_config, run_agent):
    config = make_config(broker, SIMULATED)
    agent = run_agent(config)
    path = control.socket_path(str(config))
    wait_until(lambda: is_socket(path), what="the control socket")
    os.unlink(path)  # tmpfiles clean-up, a technician's rm: the agent runs on, unreachable
    for command in ("status", "pins", "watch"):
        done = boxtel(command, "-c", str(config))
        assert done.returncode == 69, done
        assert "no boxtel agent is running" not in done.stderr
        assert f"the agent (pid {agent.pid}) holds the state dir" in done.stderr
        assert "does not answer" in done.stderr and done.stderr.count("\n") == 1
    doctor = boxtel("doctor", "-c", str(config))
    assert f"FAIL agent: the agent (pid {agent.pid}) holds the state dir" in doctor.stdout, doctor.stdout
    # and doctor did not log in with the box's id, which would have taken the agent's connection over
    assert "WARN mqtt login: not tried: a login as test-001 would take the running agent's connection over" \
        in doctor.stdout

    agent.kill()
    done = boxtel("status", "-c", str(config))
    assert done.returncode == 69
    assert "no boxtel agent is running" in done.stderr and "nothing holds the state dir" in done.stderr


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _nobody_can_run_boxtel() -> bool:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import agent"], cwd=ROOT, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_boxtel(), reason="needs root, setpriv(1) and a checkout nobody may read")
def test_a_technician_who_may_not_read_the_state_dir_is_told_so_not_that_no_agent_runs():
    # The unit's state dir is 0700 and the agent's own; a technician in the socket's group is not root.
    folder = Path(tempfile.mkdtemp(prefix="boxtel-tech-"))
    try:
        folder.chmod(0o755)
        state_dir = folder / "state"
        held = statelock.acquire(state_dir)  # held by this process, as by an agent
        state_dir.chmod(0o700)
        config = folder / "agent.toml"
        config.write_text(toml_dumps({"box": {"id": "test-001", "state_dir": str(state_dir)},
                                      "diagnostics": {"socket": str(folder / "control.sock")}}))
        config.chmod(0o644)
        done = subprocess.run([*AS_NOBODY, sys.executable, "-m", "agent", "status", "-c", str(config)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        held.release()
        assert done.returncode == 69, done
        assert "no boxtel agent is running" not in done.stderr
        assert f"the state dir {state_dir} cannot tell whether an agent runs (Permission denied): try with sudo" \
            in done.stderr, done.stderr
    finally:
        shutil.rmtree(folder)
