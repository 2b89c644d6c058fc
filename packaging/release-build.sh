#!/usr/bin/env bash
# The release build of baton as the package ships it (debian/rules and the bench both run this), into
# SCRATCH/release/baton. Usage: bash packaging/release-build.sh SCRATCH [more swift build arguments]
#
# What keeps its resident memory low (bench/README.md, "baton's resident memory"):
# - the Swift runtime and libstdc++ linked statically, so that only what baton calls is in the binary (the shared
#   libstdc++ runs its locale and iostream set-up at load, and a page of it is read in for each 64 KiB it touches);
# - every function in a section of its own, and lld placing the functions baton runs at start, at a status request
#   and at a reload next to each other (packaging/baton.order, written by tools/order-file.py), so that they are
#   read in as a few pages rather than one or two in each 64 KiB of the 11 MB of code (the kernel maps up to 64 KiB
#   around each page it faults in), and the compiler's unnamed helpers kept together (packaging/baton-text.ld);
# - relative relocations packed (DT_RELR: 8 KB instead of the 1 MB table that ld.so reads at every start), and no
#   dynamic symbol table for baton's own symbols (--no-export-dynamic: 0.5 MB that ld.so looks into).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=${1:?usage: bash packaging/release-build.sh SCRATCH [swift build arguments]}
shift
case $scratch in /*) ;; *) scratch=$PWD/$scratch ;; esac
# The toolchain links with -lstdc++: a libstdc++.so that is a linker script naming the static archive, found
# before the shared one, makes that the archive.
archive=$(gcc -print-file-name=libstdc++.a)
[ -f "$archive" ] || { echo "release-build: no libstdc++.a (install libstdc++-12-dev)" >&2; exit 1; }
mkdir -p "$scratch/static-libstdc++"
echo "INPUT($archive)" >"$scratch/static-libstdc++/libstdc++.so"
swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product baton \
  -Xswiftc -L"$scratch/static-libstdc++" -Xswiftc -use-ld=lld -Xswiftc -Xfrontend -Xswiftc -function-sections \
  -Xlinker -z -Xlinker now -Xlinker -z -Xlinker relro -Xlinker -z -Xlinker pack-relative-relocs \
  -Xlinker --no-export-dynamic \
  -Xlinker --symbol-ordering-file="$PWD/packaging/baton.order" -Xlinker --no-warn-symbol-ordering \
  -Xlinker -T -Xlinker "$PWD/packaging/baton-text.ld" \
  -Xcc -D_FORTIFY_SOURCE=2 "$@"
