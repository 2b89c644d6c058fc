#!/usr/bin/env bash
# Builds baton_VERSION_ARCH.deb from a checkout, into out/. Needs Swift on PATH; installs the Debian build tools
# it needs. Usage: bash packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh dpkg-buildpackage:dpkg-dev dh:debhelper fakeroot:fakeroot
mkdir -p out
# One build at a time: builds share debian/ and the scratch paths.
exec 9>out/.build-deb.lock
flock 9
# dpkg-buildpackage wants debian/ at the top: lend it packaging/debian for the build.
ln -sfn packaging/debian debian
trap 'rm -f debian' EXIT
log=$(mktemp)
dpkg-buildpackage -b -us -uc -d >"$log" 2>&1 || { tail -40 "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
# Into out/ by rename, so that a reader never sees half a package.
mv "../baton_${version}_${arch}.deb" "out/.baton_${version}_${arch}.deb.tmp"
mv "out/.baton_${version}_${arch}.deb.tmp" "out/baton_${version}_${arch}.deb"
rm -f "../baton_${version}_${arch}.buildinfo" "../baton_${version}_${arch}.changes"
echo "out/baton_${version}_${arch}.deb"
