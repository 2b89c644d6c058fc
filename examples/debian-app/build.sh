#!/usr/bin/env bash
# Builds the example package myapp_VERSION_all.deb into OUTDIR.
#
# Usage: examples/debian-app/build.sh VERSION [--broken] OUTDIR
#   VERSION    the package version, e.g. 1.0 or 1.1 (it is also the version the app reports)
#   --broken   build a release that exits 1 at startup, to see a failed upgrade
#
# The source package is put together in a temporary directory: debian/ from here, a
# changelog for VERSION, app.js from here, and server.js copied from examples/node/app.js.
# Then `dpkg-buildpackage -b -us -uc` (needs dpkg-dev and debhelper; no root needed).
set -euo pipefail

usage() { echo "usage: $0 VERSION [--broken] OUTDIR" >&2; exit 2; }
broken=0
args=()
for a in "$@"; do
    case $a in
        --broken) broken=1 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) args+=("$a") ;;
    esac
done
((${#args[@]} == 2)) || usage
version=${args[0]}
outdir=${args[1]}
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "build.sh: bad version '$version'" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in dpkg-buildpackage:dpkg-dev dh:debhelper; do
    command -v "${tool%%:*}" >/dev/null || {
        echo "build.sh: ${tool%%:*} missing: apt-get install ${tool##*:}" >&2; exit 1; }
done

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
tmp=$(mktemp -d /tmp/myapp-build.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/myapp-$version

mkdir -p "$src"
cp -r "$here/debian" "$src/debian"
cp "$here/app.js" "$src/app.js"
# No #! line: it is run as `node server.js`, not executed.
sed '1{/^#!/d}' "$here/../node/app.js" >"$src/server.js"

note="Version $version of the example app."
if ((broken)); then
    note="Version $version of the example app, broken on purpose: it exits 1 at startup."
    cat - "$here/app.js" >"$src/app.js" <<JS
// Built with --broken: this release fails at startup, so that an upgrade to it fails.
console.error('myapp $version: broken release (built with --broken): exiting at startup');
process.exit(1);

JS
fi

# A one-entry changelog; its version is the package's (and, through VERSION, the app's).
cat >"$src/debian/changelog" <<CHANGELOG
myapp ($version) unstable; urgency=medium

  * $note

 -- myapp maintainers <myapp@example.org>  Sun, 22 Nov 2026 06:00:00 +0000
CHANGELOG

log=$tmp/build.log
if ! (cd "$src" && dpkg-buildpackage -b -us -uc) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "build.sh: dpkg-buildpackage failed" >&2
    exit 1
fi
mv "$tmp/myapp_${version}_all.deb" "$outdir/"
echo "$outdir/myapp_${version}_all.deb"
