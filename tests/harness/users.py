"""Throw-away local users for policy tests, and running commands as them.

``bgt-reader`` has no admin rights; ``bgt-admin`` is in ``bangui-admin``. Both have no
home and no login shell. They are created when missing and deliberately left in place:
several test sessions may run on one host at the same time, and deleting a user under
a running session would break it. Creating them needs root.

Note: the venv interpreter usually lives below /root (0700), so an unprivileged user
cannot run it. Run CLI clients (busctl, gdbus, /usr/bin/python3) as the user instead.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.util import HarnessError

READER_USER = "bgt-reader"
ADMIN_USER = "bgt-admin"
ADMIN_GROUP = "bangui-admin"
_USERS: dict[str, tuple[str, ...]] = {READER_USER: (), ADMIN_USER: (ADMIN_GROUP,)}


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


def _lookup(name: str) -> TestUser | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return TestUser(name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(name, pw.pw_gid)))


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)


def ensure_admin_group() -> None:
    """Create the ``bangui-admin`` system group if missing; needs root.

    dbus-daemon resolves group names when it reads its config: a bus started before
    the group existed ignores the policy's ``group="bangui-admin"`` block until reload.
    """
    if os.geteuid() != 0:
        raise NotRootError("creating a group (groupadd) needs root")
    r = _run(["groupadd", "-f", "--system", ADMIN_GROUP])
    if r.returncode != 0:
        raise HarnessError(f"groupadd {ADMIN_GROUP} failed: {r.stderr.strip()}")


def ensure_test_users() -> dict[str, TestUser]:
    """Create (if missing) ``bangui-admin``, ``bgt-reader`` and ``bgt-admin``; needs root."""
    if os.geteuid() != 0:
        raise NotRootError("creating test users (useradd/groupadd) needs root")
    ensure_admin_group()
    users: dict[str, TestUser] = {}
    for name, groups in _USERS.items():
        if _lookup(name) is None:
            cmd = ["useradd", "-M", "-s", "/usr/sbin/nologin"]
            if groups:
                cmd += ["-G", ",".join(groups)]
            r = _run([*cmd, name])
            # exit 9: created meanwhile by a concurrent session, which is fine
            if r.returncode not in (0, 9) or _lookup(name) is None:
                raise HarnessError(f"useradd {name} failed: {r.stderr.strip()}")
        for group in groups:
            if name not in grp.getgrnam(group).gr_mem:
                r = _run(["usermod", "-a", "-G", group, name])
                if r.returncode != 0:
                    raise HarnessError(f"usermod -a -G {group} {name}: {r.stderr.strip()}")
        user = _lookup(name)
        assert user is not None
        users[name] = user
    return users


def run_as(
    user: str | TestUser | None,
    cmd: Sequence[str],
    *,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = "/",
    input: str | None = None,
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
