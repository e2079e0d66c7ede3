#!/usr/bin/env bash
# Build the Debian package from a clean export of HEAD and check what it ships.
# Needs: debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-$PWD/dist}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/src"
git archive HEAD | tar -x -C "$work/src"
# Debian's python3 must build it: a pyenv or venv python first on PATH would not.
(cd "$work/src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) \
    || { tail -30 "$work/build.log"; exit 1; }
deb=$(ls "$work"/bangui-daemon_*_all.deb)
listing=$(dpkg -c "$deb")
for path in ./usr/bin/bangui-daemon ./usr/bin/banguictl ./lib/systemd/system/bangui-daemon.service \
    ./usr/share/dbus-1/system.d/org.bangui.Daemon1.conf \
    ./usr/lib/python3/dist-packages/bangui_daemon/archive/migrations/0001_initial.sql; do
    grep -q " $path\$" <<<"$listing" || { echo "missing from the package: $path"; exit 1; }
done
cp "$deb" "$out/"
echo "built $out/$(basename "$deb")"
