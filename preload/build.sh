#!/usr/bin/env bash
# Builds the bind-adoption preload library, libbaton-adopt.so, into DIR (default: .build/debug, beside the
# debug baton, which looks for it next to its own executable). Further arguments go to the compiler, such as
# -fsanitize=address. Null pointers an app passes are checked, whatever the headers promise. Usage: bash preload/build.sh [DIR [CFLAG...]]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.build/debug}
[ $# -gt 0 ] && shift
mkdir -p "$out"
tmp=$(mktemp "$out/.libbaton-adopt.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# shellcheck disable=SC2086 # CFLAGS and LDFLAGS are word lists
${CC:-cc} -shared -fPIC -O2 -g -std=gnu11 -Wall -Wextra -Werror -fvisibility=hidden \
  -fno-delete-null-pointer-checks -Wno-nonnull-compare \
  -D_FORTIFY_SOURCE=2 -fstack-protector-strong ${CFLAGS:-} \
  -Wl,--version-script=preload/baton-adopt.map -Wl,-z,relro -Wl,-z,now -Wl,-z,defs ${LDFLAGS:-} \
  -o "$tmp" preload/baton-adopt.c "$@"
chmod 0644 "$tmp"
# By rename, so that a worker starting meanwhile never preloads half a library.
mv -f "$tmp" "$out/libbaton-adopt.so"
# Node's drain (NODE_OPTIONS --require), found beside the library as the package installs it.
cp -f preload/baton-node.js "$out/.baton-node.js.tmp" && mv -f "$out/.baton-node.js.tmp" "$out/baton-node.js"
echo "$out/libbaton-adopt.so"
