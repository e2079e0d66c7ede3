"""Throw-away local accounts for policy tests, and running commands as them.

``bgt-reader`` has no admin rights; ``bgt-admin`` is in ``bangui-admin``;
``bgt-operator`` is not either, and is what polkit tests grant rights to by a rule.
None has a home or a login shell. Creating them needs root.

An ``AccountLease`` creates what is missing and, when the last test session that
holds a lease on this machine ends, removes exactly what leases created: an account
or a group membership that existed before stays. Sessions run concurrently (several
worktrees on one host), and a bus started by one session resolved ``bangui-admin``
to a gid when it read its policy, so nothing is removed while another session still
holds a lease. The holders and what was created are kept in a small JSON file under
``/var/lib/bangui-test-accounts`` (persistent like /etc/passwd itself, root only),
guarded by ``flock``; a holder is a pid plus its start time, so a session killed
with SIGKILL is recognised as gone by the next one to end. The directory is removed
with the last lease.

Note: the venv interpreter usually lives below /root (0700), so an unprivileged user
cannot run it. Run CLI clients (busctl, gdbus, /usr/bin/python3) as the user instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.harness.util import HarnessError

READER_USER = "bgt-reader"
ADMIN_USER = "bgt-admin"
OPERATOR_USER = "bgt-operator"
ADMIN_GROUP = "bangui-admin"
STATE_DIR = Path("/var/lib/bangui-test-accounts")


class NotRootError(HarnessError):
    """The operation needs root (creating users, switching to them)."""


@dataclass(frozen=True)
class TestUser:
    """A local account: name, uid, primary gid and every group id it gets at login."""

    __test__ = False  # not a pytest test class

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def is_admin(self) -> bool:
        try:
            return grp.getgrnam(ADMIN_GROUP).gr_gid in self.groups
        except KeyError:
            return False


@dataclass(frozen=True)
class AccountSpec:
    """Groups to exist, and users to exist with (at least) these supplementary groups."""

    groups: tuple[str, ...]
    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


SUITE_ACCOUNTS = AccountSpec(
    groups=(ADMIN_GROUP,),
    users={READER_USER: (), ADMIN_USER: (ADMIN_GROUP,), OPERATOR_USER: ()},
)


def _lookup(name: str) -> TestUser | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return TestUser(name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(name, pw.pw_gid)))


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _is_member(user: str, group: str) -> bool:
    user_entry = _lookup(user)
    try:
        gr = grp.getgrnam(group)
    except KeyError:
        return False
    return user_entry is not None and (user in gr.gr_mem or user_entry.gid == gr.gr_gid)


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def holder_id(pid: int) -> str:
    """Process *pid* as a lease holder: ``pid:starttime`` (a reused pid does not match)."""
    return f"{pid}:{_start_time(pid)}"


def _alive(holder: str) -> bool:
    pid, _, start = holder.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start


class AccountLease:
    """Hold the suite's accounts for one session; the last holder removes what was created.

    ``acquire()`` creates what is missing and returns the users; ``release()`` (also on
    ``with`` exit) drops this holder and, if no live holder is left, deletes every
    account and membership a lease created, then the state directory.
    """

    def __init__(
        self,
        spec: AccountSpec = SUITE_ACCOUNTS,
        *,
        state_dir: Path = STATE_DIR,
        holder: str | None = None,
    ) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.holder = holder or holder_id(os.getpid())
        self.held = False

    # -------------------------------------------------------------- locking
    @contextlib.contextmanager
    def _locked(self) -> Iterator[Path]:
        """flock the lock file; retried if the last holder removed it meanwhile."""
        lock_path = self.state_dir / "lock"
        while True:
            self.state_dir.mkdir(mode=0o700, exist_ok=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:  # the directory went away between the two calls
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield self.state_dir / "state.json"
                    return
            finally:
                os.close(fd)

    @staticmethod
    def _load(path: Path) -> dict[str, list[str]]:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        return {key: list(data.get(key, [])) for key in ("holders", "created")}

    # ----------------------------------------------------------- acquire
    def acquire(self) -> dict[str, TestUser]:
        """Create the missing groups, users and memberships; register as a holder."""
        if os.geteuid() != 0:
            raise NotRootError("creating test users (useradd/groupadd) needs root")
        with self._locked() as path:
            state = self._load(path)
            created = state["created"]
            try:
                for group in self.spec.groups:
                    if not group_exists(group):
                        r = _run(["groupadd", "--system", group])
                        if r.returncode != 0 and not group_exists(group):
                            raise HarnessError(f"groupadd {group} failed: {r.stderr.strip()}")
                        if r.returncode == 0:
                            created.append(f"group:{group}")
                for name, groups in self.spec.users.items():
                    if _lookup(name) is None:
                        cmd = ["useradd", "-M", "-s", "/usr/sbin/nologin"]
                        if groups:
                            cmd += ["-G", ",".join(groups)]
                        r = _run([*cmd, name])
                        if r.returncode != 0 and _lookup(name) is None:
                            raise HarnessError(f"useradd {name} failed: {r.stderr.strip()}")
                        if r.returncode == 0:
                            created.append(f"user:{name}")
                    for group in groups:
                        if not _is_member(name, group):
                            r = _run(["usermod", "-a", "-G", group, name])
                            if r.returncode != 0:
                                raise HarnessError(
                                    f"usermod -a -G {group} {name}: {r.stderr.strip()}"
                                )
                            created.append(f"member:{group}:{name}")
            finally:
                # recorded even on failure, so that a later release removes it
                if self.holder not in state["holders"]:
                    state["holders"].append(self.holder)
                self.held = True
                path.write_text(json.dumps(state, indent=1) + "\n")
        users: dict[str, TestUser] = {}
        for name in self.spec.users:
            user = _lookup(name)
            if user is None:
                raise HarnessError(f"user {name} vanished right after it was created")
            users[name] = user
        return users

    # ----------------------------------------------------------- release
    def release(self) -> None:
        """Drop this holder; the last live holder deletes what leases created."""
        if not self.held:
            return
        self.held = False
        with self._locked() as path:
            state = self._load(path)
            holders = [h for h in state["holders"] if h != self.holder and _alive(h)]
            state["holders"] = holders
            if holders:
                path.write_text(json.dumps(state, indent=1) + "\n")
                return
            failed = _remove_created(state["created"])
            if failed:
                state["created"] = [entry for entry, _ in failed]
                path.write_text(json.dumps(state, indent=1) + "\n")
                raise HarnessError(
                    "could not remove test accounts: "
                    + "; ".join(f"{entry}: {why}" for entry, why in failed)
                )
            path.unlink(missing_ok=True)
            (self.state_dir / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # keep it if someone put a file there
                self.state_dir.rmdir()

    def __enter__(self) -> dict[str, TestUser]:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _remove_created(created: Sequence[str]) -> list[tuple[str, str]]:
    """Undo memberships, then users, then groups; return what could not be removed."""
    order = {"member": 0, "user": 1, "group": 2}
    failed: list[tuple[str, str]] = []
    for entry in sorted(set(created), key=lambda e: order.get(e.split(":", 1)[0], 3)):
        kind, _, rest = entry.partition(":")
        if kind == "member":
            group, _, user = rest.partition(":")
            if not _is_member(user, group):
                continue
            r = _run(["gpasswd", "-d", user, group])
        elif kind == "user":
            if _lookup(rest) is None:
                continue
            r = _run(["userdel", rest])
        elif kind == "group":
            if not group_exists(rest):
                continue
            r = _run(["groupdel", rest])
        else:
            failed.append((entry, "unknown kind of entry"))
            continue
        if r.returncode != 0:
            failed.append((entry, r.stderr.strip() or f"exit {r.returncode}"))
    return failed


def run_as(
    user: str | TestUser | None,
    cmd: Sequence[str],
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = "/",
    input: str | None = None,  # noqa: A002 - named as subprocess.run names it
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as ``user`` via ``runuser -u USER --`` (``None``: as ourselves).

    The user gets a fresh login group list (so ``bangui-admin`` membership applies),
    ``env`` (default: ours) and ``cwd`` (default ``/``, which every user may enter).
    """
    argv = list(cmd)
    if user is not None:
        name = user.name if isinstance(user, TestUser) else user
        if os.geteuid() != 0:
            raise NotRootError(f"running a command as {name} needs root")
        argv = ["runuser", "-u", name, "--", *argv]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        input=input,
        check=False,
    )
