#!/usr/bin/env bash
# Builds the statically linked call-coach: glibc, libstdc++ and whisper.cpp
# linked in, no dynamic section, no interpreter: it runs on any x86-64
# Linux (kernel 3.2 or later) with no shared library at all, from an empty
# root too. The same portable CPU flags as every build (.cargo/config.toml:
# x86-64 with AVX2/FMA/F16C, no -march=native).
#
#   scripts/build-static.sh      -> target/static/x86_64-unknown-linux-gnu/release/call-coach
#
# Needs the static C and C++ libraries (Debian: libc6-dev and
# libstdc++-12-dev, part of build-essential). Host names: `localhost` and
# IP literals resolve inside the binary; other names use glibc's own
# /etc/hosts and DNS lookup (README "Install without Nix").
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
[ "$(uname -m)" = x86_64 ] || { echo "the static build is for x86-64 hosts (this is $(uname -m))" >&2; exit 1; }
for lib in libc.a libstdc++.a; do
  f=$(${CC:-cc} -print-file-name=$lib)
  [ "$f" != "$lib" ] && [ -f "$f" ] ||
    { echo "no static $lib: apt-get install build-essential (libc6-dev, libstdc++-dev)" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/static}"
# whisper-rs-sys asks for libstdc++ as a shared library (`dylib=stdc++`);
# the linker takes the first folder that has either form, so a folder
# holding only libstdc++.a, searched first, links it in.
cxx=$CARGO_TARGET_DIR/static-libstdcxx
mkdir -p "$cxx"
ln -sf "$(${CC:-cc} -print-file-name=libstdc++.a)" "$cxx/libstdc++.a"
# --target keeps build scripts and proc-macros dynamic (the host's); only
# the binary is static. A non-PIE executable: the distribution's
# libstdc++.a is not built for static-pie.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static -L native=$(cd "$cxx" && pwd)"
cargo build --release --locked --target "$target" --bin call-coach
bin="$CARGO_TARGET_DIR/$target/release/call-coach"
if readelf -l "$bin" | grep -q 'INTERP\|DYNAMIC'; then
  echo "$bin is not static:" >&2
  readelf -l "$bin" | grep -E 'INTERP|DYNAMIC' >&2
  exit 1
fi
echo "built $bin ($(du -h "$bin" | cut -f1), static)"
