#!/usr/bin/env bash
# The whole quality gate, as CI runs it (bash .ci/run -> this script, as root):
#   install deps, ruff (lint + format), mypy --strict, the systemd unit checks, pytest in
#   the venv, the suite again under Debian's /usr/bin/python3 (the .deb's deps), and the
#   Debian package: build + lintian, then install, the installed unit under a real
#   systemd, reinstall and purge (tests/package).
# Every step runs even after a failure; the exit code is non-zero if any step failed.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
UNIT=$ROOT/systemd/bangui-daemon.service
SECURITY_THRESHOLD=16 # systemd-analyze security exposure x10: at most 1.6
DEB_DIR=$(mktemp -d)
trap 'rm -rf "$DEB_DIR"' EXIT

declare -a SUMMARY=()
FAILED=0

step() {
    local name=$1 start rc
    shift
    printf '\n=== %s\n' "$name"
    start=$(date +%s)
    "$@"
    rc=$?
    local took=$(($(date +%s) - start))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name (${took}s)")
    else
        SUMMARY+=("FAIL  $name (exit $rc, ${took}s)")
        FAILED=1
    fi
}

unit_verify() {
    # verify checks that ExecStart= exists. The packaged /usr/bin/bangui-daemon is not
    # installed on a CI box, so verify a copy whose ExecStart runs the same entry point
    # through /usr/bin/python3; every other line is the shipped unit, unchanged.
    local tmp out rc
    tmp=$(mktemp -d)
    if [ -x /usr/bin/bangui-daemon ]; then
        cp "$UNIT" "$tmp/"
    else
        echo "(ExecStart rewritten to /usr/bin/python3 -m bangui_daemon for verify)"
        sed 's#^ExecStart=/usr/bin/bangui-daemon #ExecStart=/usr/bin/python3 -m bangui_daemon #' \
            "$UNIT" >"$tmp/$(basename "$UNIT")"
        grep -q '^ExecStart=/usr/bin/python3 -m bangui_daemon ' "$tmp/$(basename "$UNIT")" \
            || { echo "ExecStart= has an unexpected form"; rm -rf "$tmp"; return 1; }
    fi
    # verify runs man(1) for each man: page of Documentation=: the generated pages
    mkdir -p "$tmp/man/man5" "$tmp/man/man8"
    PYTHONPATH=$ROOT /usr/bin/python3 -B -m scripts.docgen "$tmp/gen" \
        && cp "$tmp/gen/"*.5 "$tmp/man/man5/" && cp "$tmp/gen/"*.8 "$tmp/man/man8/" \
        || { echo "scripts.docgen failed"; rm -rf "$tmp"; return 1; }
    # verify exits 0 on unknown keys and bad values: any output is a failure
    out=$(cd "$tmp" && MANPATH=$tmp/man systemd-analyze verify "./$(basename "$UNIT")" 2>&1)
    rc=$?
    rm -rf "$tmp"
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        printf '%s\n' "$out"
        echo "systemd-analyze verify: exit $rc, output above (must be silent)"
        return 1
    fi
    echo "systemd-analyze verify: clean"
}

unit_security() {
    systemd-analyze security --offline=true --no-pager --threshold="$SECURITY_THRESHOLD" \
        "$UNIT" | tail -n 1
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "exposure above ${SECURITY_THRESHOLD} (x10)"
    return "$rc"
}

pytest_venv() {
    "$VENV/bin/python" -m pytest -q
}

pytest_debian() {
    PYTHONPATH=$ROOT /usr/bin/python3 -m pytest -q -p no:cacheprovider
}

package_build() {
    bash "$ROOT/scripts/build-deb.sh" "$DEB_DIR"
}

package_test() {
    # skips (with the reason) only when the host cannot take it, e.g. bangui-daemon
    # is installed there for real; a missing .deb is a failure
    compgen -G "$DEB_DIR/bangui-daemon_*_all.deb" >/dev/null \
        || { echo "no .deb was built (see the step above)"; return 1; }
    BANGUI_DEB_DIR=$DEB_DIR "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider \
        tests/package
}

printf '=== install dependencies\n'
if ! bash "$ROOT/scripts/install-deps.sh"; then
    echo "check.sh: install-deps.sh failed; nothing else was run" >&2
    exit 1
fi

step "ruff check" "$VENV/bin/ruff" check .
step "ruff format --check" "$VENV/bin/ruff" format --check .
step "mypy --strict" "$VENV/bin/mypy" --strict
step "systemd-analyze verify" unit_verify
step "systemd-analyze security" unit_security
# pytest exits 5 when it collected no tests: non-zero, so it fails the step
step "pytest (venv $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'))" pytest_venv
step "pytest (Debian /usr/bin/python3)" pytest_debian
step "Debian package: build, lintian --pedantic" package_build
step "Debian package: install, unit under systemd, purge" package_test

printf '\n=== summary\n'
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" -ne 0 ]; then
    echo "check.sh: FAILED"
    exit 1
fi
echo "check.sh: all passed"
