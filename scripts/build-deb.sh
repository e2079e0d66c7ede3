#!/usr/bin/env bash
# Build the Debian source and binary packages from the working tree and lint them.
#
#   scripts/build-deb.sh [OUTDIR]     (default: dist/)
#
# The tree is exported first (git's tracked and untracked-but-not-ignored files, as
# they are on disk), so a build never sees .venv, caches or an old debian/ build dir.
# Then: dpkg-buildpackage -us -uc (3.0 native: .dsc + .tar.xz + .deb), the files the
# package must ship, and lintian --pedantic on the .changes (source and .deb): any E:
# or W: fails. Build-deps: scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(realpath -m "${1:-$PWD/dist}")
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir -p "$out" "$work/src"

git ls-files -z --cached --others --exclude-standard \
    | (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) \
    | tar --null -T - -c | tar -x -C "$work/src"
# Debian's python3 must build it: a pyenv or venv python first on PATH would not.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
(cd "$work/src" && dpkg-buildpackage -us -uc >"$work/build.log" 2>&1) \
    || { tail -40 "$work/build.log"; exit 1; }
changes=$(echo "$work"/bangui-daemon_*.changes)
deb=$(echo "$work"/bangui-daemon_*_all.deb)
listing=$(dpkg -c "$deb")
for path in ./usr/bin/bangui-daemon ./usr/bin/banguictl \
    ./lib/systemd/system/bangui-daemon.service \
    ./usr/share/dbus-1/system.d/org.bangui.Daemon1.conf \
    ./usr/share/dbus-1/system-services/org.bangui.Daemon1.service \
    ./usr/share/dbus-1/interfaces/org.bangui.Daemon1.xml \
    ./usr/lib/sysusers.d/bangui-daemon.conf \
    ./etc/bangui/bangui.toml ./etc/bangui/lists/ \
    ./usr/share/man/man8/bangui-daemon.8.gz ./usr/share/man/man1/banguictl.1.gz \
    ./usr/share/man/man5/bangui.toml.5.gz ./usr/share/man/man5/bangui-daemon.dbus.5.gz \
    ./usr/share/bash-completion/completions/banguictl \
    ./usr/share/doc/bangui-daemon/README.Debian \
    ./usr/share/polkit-1/actions/org.bangui.Daemon1.policy \
    ./usr/share/polkit-1/rules.d/50-org.bangui.Daemon1.rules \
    ./usr/lib/systemd/user/bangui-notify.service \
    ./usr/share/doc/bangui-daemon/examples/gjs/bangui-bans.js \
    ./usr/lib/python3/dist-packages/bangui_daemon/archive/migrations/0001_initial.sql; do
    # dh_compress gzips man pages and docs of 4 kB or more
    grep -qE " ${path//./\\.}(\\.gz)?\$" <<<"$listing" || { echo "missing from the package: $path"; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/bangui/bangui.toml \
    || { echo "/etc/bangui/bangui.toml is not a conffile"; exit 1; }

echo "lintian --pedantic $(basename "$changes")"
lintian --pedantic --display-info --fail-on error,warning "$changes" | tee "$work/lintian.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "lintian: errors or warnings above"; exit 1; }

for f in "$work"/bangui-daemon_*; do
    [ -f "$f" ] && cp "$f" "$out/"
done
echo "built into $out: $(cd "$out" && ls bangui-daemon_* | tr '\n' ' ')"
