"""The suite leaves the machine's accounts as it found them (tests/harness/users.py).

Real groupadd/useradd on throw-away names unique to this process, with a private
state directory, so that the suite's own lease is not disturbed.
"""

from __future__ import annotations

import grp
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.users import AccountLease, AccountSpec, group_exists, holder_id

NAME = f"bgt-lease-{os.getpid()}"


def user_exists(name: str) -> bool:
    return subprocess.run(["id", name], capture_output=True, check=False).returncode == 0


@pytest.fixture
def spec() -> Iterator[AccountSpec]:
    if os.geteuid() != 0:
        pytest.skip("needs root (groupadd/useradd)")
    yield AccountSpec(groups=(NAME,), users={NAME + "u": (NAME,)})
    # whatever a failed test left behind
    subprocess.run(["userdel", NAME + "u"], capture_output=True, check=False)
    subprocess.run(["groupdel", NAME], capture_output=True, check=False)


@pytest.fixture
def other_holder() -> Iterator[str]:
    """Another live process, standing for a second test session."""
    proc = subprocess.Popen(["sleep", "60"])
    yield holder_id(proc.pid)
    proc.kill()
    proc.wait()


def test_accounts_stay_while_another_session_holds_them(
    spec: AccountSpec, other_holder: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    ours = AccountLease(spec, state_dir=state)
    theirs = AccountLease(spec, state_dir=state, holder=other_holder)
    users = ours.acquire()
    theirs.acquire()
    assert grp.getgrnam(NAME).gr_gid in users[NAME + "u"].groups
    ours.release()
    assert group_exists(NAME)
    assert user_exists(NAME + "u")
    theirs.release()
    assert not group_exists(NAME)
    assert not user_exists(NAME + "u")
    assert not state.exists()


def test_what_existed_before_stays(spec: AccountSpec, tmp_path: Path) -> None:
    subprocess.run(["groupadd", "--system", NAME], check=True)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", NAME + "u"], check=True)
    with AccountLease(spec, state_dir=tmp_path / "state") as users:
        assert grp.getgrnam(NAME).gr_gid in users[NAME + "u"].groups  # membership added
    assert group_exists(NAME)
    assert user_exists(NAME + "u")
    assert NAME + "u" not in grp.getgrnam(NAME).gr_mem  # ... and taken back


def test_a_killed_session_does_not_keep_the_accounts(spec: AccountSpec, tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    killed = holder_id(proc.pid)  # a zombie until waited for: /proc still has it
    proc.wait()  # gone, never released: like a pytest killed with SIGKILL
    state = tmp_path / "state"
    AccountLease(spec, state_dir=state, holder=killed).acquire()
    with AccountLease(spec, state_dir=state, holder=holder_id(os.getpid())):
        assert group_exists(NAME)
    assert not group_exists(NAME)
    assert not user_exists(NAME + "u")
