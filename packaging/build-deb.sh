#!/usr/bin/env bash
# Builds baton_VERSION_ARCH.deb from a checkout, into out/. Needs Swift on PATH; installs the Debian build tools
# it needs. Usage: bash packaging/build-deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh dpkg-buildpackage:dpkg-dev dh:debhelper fakeroot:fakeroot
# dpkg-buildpackage wants debian/ at the top: lend it packaging/debian for the build.
ln -sfn packaging/debian debian
trap 'rm -f debian' EXIT
dpkg-buildpackage -b -us -uc -d >/tmp/baton-dpkg-buildpackage.log 2>&1 || { tail -40 /tmp/baton-dpkg-buildpackage.log >&2; exit 1; }
mkdir -p out
version=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
mv "../baton_${version}_${arch}.deb" out/
rm -f "../baton_${version}_${arch}.buildinfo" "../baton_${version}_${arch}.changes"
echo "out/baton_${version}_${arch}.deb"
