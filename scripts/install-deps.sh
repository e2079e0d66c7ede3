#!/usr/bin/env bash
# Install what the build, the tests and the demo need, idempotently.
#
#   - Debian packages (bookworm), only when one is missing: the real fail2ban and D-Bus
#     tools the integration tests drive, Debian's python3-* runtime packages (the
#     .deb depends on those; check.sh runs the suite under /usr/bin/python3 too), and
#     what building and linting the .deb needs (debhelper, dh-python, lintian...).
#     Services are never started: a temporary policy-rc.d denies it, and a
#     fail2ban-server that appeared anyway is stopped (no firewall is set up by us).
#   - .venv with the project installed editable plus its dev tools.
#
# Run as root for the apt part; without root it only checks that packages are there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    fail2ban sqlite3
    dbus-daemon dbus-bin libglib2.0-bin
    systemd                      # busctl, systemd-analyze
    polkitd                      # polkitd, pkaction, pkcheck: the polkit tests' own polkitd
    python3 python3-venv
    python3-dbus-fast python3-aiosqlite python3-aiohttp python3-geoip2 python3-maxminddb
    python3-structlog python3-sdnotify python3-prometheus-client
    crowdsec                     # a real Local API for the CrowdSec bridge tests (offline)
    python3-pytest python3-pytest-asyncio
    gjs gir1.2-glib-2.0 dunst xvfb   # desktop tests: a GLib client, a notification server
    # the Debian package: build (scripts/build-deb.sh), lint, man pages, sysusers
    build-essential debhelper dh-python pybuild-plugin-pyproject python3-all
    python3-setuptools lintian man-db util-linux
)

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing_packages() {
    local pkg status
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [ "$status" = installed ] || printf '%s\n' "$pkg"
    done
}

system_f2b_pids() {
    # fail2ban-servers on the system socket (not our test sandboxes in temp dirs)
    local pid
    for pid in $(pgrep -x fail2ban-server || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/run/fail2ban/'; then
            printf '%s\n' "$pid"
        fi
    done
}

POLICY_RC=/usr/sbin/policy-rc.d
CREATED_POLICY_RC=0
cleanup() {
    if [ "$CREATED_POLICY_RC" = 1 ]; then
        rm -f "$POLICY_RC"
    fi
}
trap cleanup EXIT

install_packages() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "all ${#PACKAGES[@]} Debian packages present; skipping apt"
        return 0
    fi
    log "missing: ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
        die "run as root to install them (apt-get install ${missing[*]})"
    fi
    if [ ! -e "$POLICY_RC" ]; then
        # deny every service start during the install; removed again on exit
        printf '#!/bin/sh\n# temporary, written by bangui scripts/install-deps.sh\nexit 101\n' \
            >"$POLICY_RC"
        chmod 0755 "$POLICY_RC"
        CREATED_POLICY_RC=1
    else
        log "keeping the existing $POLICY_RC"
    fi
    local before
    before=$(system_f2b_pids | sort)

    # wait for a concurrent apt/dpkg instead of failing on its lock
    local -a apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
    local attempt
    for attempt in 1 2 3; do
        if "${apt[@]}" update </dev/null; then
            break
        fi
        [ "$attempt" = 3 ] && die "apt-get update failed"
        log "apt-get update failed (attempt $attempt); retrying"
        sleep 10
    done
    if printf '%s\n' "${missing[@]}" | grep -qx crowdsec \
        && [ ! -e /etc/crowdsec/online_api_credentials.yaml ]; then
        # An existing (comment-only) file keeps crowdsec's postinst from registering
        # with the Central API: the tests run its Local API offline, on loopback.
        mkdir -p /etc/crowdsec
        printf '# bangui install-deps: no Central API on this machine\n' \
            >/etc/crowdsec/online_api_credentials.yaml
    fi
    "${apt[@]}" install --no-install-recommends "${missing[@]}" </dev/null

    local after pid
    after=$(system_f2b_pids | sort)
    for pid in $(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after")); do
        log "a system fail2ban-server (pid $pid) was started by the install; stopping it"
        fail2ban-client -s /run/fail2ban/fail2ban.sock stop >/dev/null 2>&1 \
            || kill "$pid" 2>/dev/null || true
    done
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] || die "still missing after apt: ${missing[*]}"
}

python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

setup_venv() {
    local py
    py=$(command -v python3) || die "python3 not on PATH"
    python_ok "$py" || die "$py is older than 3.11"
    if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
        log "creating $VENV with $py"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    # reinstall only when pyproject.toml changed (or the last install did not finish)
    local stamp=$VENV/.bangui-install-stamp want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$VENV/bin/python" -c 'import bangui_daemon, pytest, pytest_asyncio, mypy' 2>/dev/null \
        && [ -x "$VENV/bin/ruff" ]; then
        log "venv up to date ($VENV)"
        return 0
    fi
    log "pip install -e '.[dev]' into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]" </dev/null
    printf '%s\n' "$want" >"$stamp"
}

install_packages
setup_venv
log "done"
