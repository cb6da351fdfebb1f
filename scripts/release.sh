#!/usr/bin/env bash
# The release tarball for hosts without Nix (README "Install without Nix"):
#
#   scripts/release.sh [OUT_DIR]   -> OUT_DIR/call-coach-VERSION-x86_64-linux.tar.gz (default: target/release-tarball)
#
# Builds the static binary (scripts/build-static.sh) and packs, under one
# top folder laid out as the host's root (extract with
# `--strip-components=1 -C /`):
#   usr/local/bin/call-coach              the static binary
#   usr/local/bin/{stt,rtp2ws,relay,orchestrator,ari-coach} -> call-coach
#   usr/local/lib/systemd/system/         the five units (systemd/)
#   usr/local/lib/sysusers.d/call-coach.conf
#   etc/call-coach/call-coach.toml.example  every key, commented out
#   usr/local/share/call-coach/rules.es.toml  the built-in rules, to copy and edit
#   usr/local/share/doc/call-coach/       README.md, docs/contract.md
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-target/release-tarball}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
name=call-coach-$version-x86_64-linux
bash scripts/build-static.sh
bin=${CARGO_TARGET_DIR:-target/static}/x86_64-unknown-linux-gnu/release/call-coach

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
top=$stage/$name
install -D -m 0755 "$bin" "$top/usr/local/bin/call-coach"
for service in stt rtp2ws relay orchestrator ari-coach; do
  ln -s call-coach "$top/usr/local/bin/$service"
done
install -d "$top/usr/local/lib/systemd/system"
install -m 0644 systemd/*.service "$top/usr/local/lib/systemd/system/"
install -D -m 0644 systemd/call-coach.sysusers "$top/usr/local/lib/sysusers.d/call-coach.conf"
install -d -m 0755 "$top/etc/call-coach"
"$bin" check-config --example > "$top/etc/call-coach/call-coach.toml.example"
install -D -m 0644 src/orchestrator/rules.es.toml "$top/usr/local/share/call-coach/rules.es.toml"
install -D -m 0644 README.md "$top/usr/local/share/doc/call-coach/README.md"
install -D -m 0644 docs/contract.md "$top/usr/local/share/doc/call-coach/contract.md"

mkdir -p "$out_dir"
tarball=$out_dir/$name.tar.gz
# Reproducible: sorted names, fixed owner and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -C "$stage" -czf "$tarball" "$name"
echo "$tarball ($(du -h "$tarball" | cut -f1))"
