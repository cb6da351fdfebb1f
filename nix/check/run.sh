#!/usr/bin/env bash
# The Nix and systemd checks that can run on a machine without nixpkgs
# (../../README.md "NixOS and systemd"; facts in shared/notes/nix-offline.md):
#  1. every .nix file parses;
#  2. the module evaluates against a real 2022 nixpkgs snapshot (lib, module
#     system, assertions, users, systemd unit code) in typical and edge
#     configurations, and the bad ones fail with the right message;
#  3. the rendered units and those in systemd/ pass `systemd-analyze verify`
#     with no warning and score at most 2.0 in `systemd-analyze security`;
#     the generated call-coach.toml is accepted by the real binary;
#  4. the flake evaluates (`nix flake check --no-build`) with nixpkgs
#     replaced by a stand-in built from that snapshot; the VM tests' nodes
#     are evaluated through the module too.
# Usage: nix/check/run.sh CALL_COACH_BINARY
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$(realpath "${1:?usage: nix/check/run.sh CALL_COACH_BINARY}")
# The binary reads every CALL_COACH_* variable as configuration: only the
# generated file may speak here, not the caller's environment.
for v in $(compgen -e | grep '^CALL_COACH_' || true); do unset "$v"; done
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters =\nwarn-dirty = false'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

# The nixpkgs snapshot: test input of the crate nixel 5.2.0 (sha256-pinned).
crate=$(ls ~/.cargo/registry/cache/*/nixel-5.2.0.crate 2>/dev/null | head -1 || true)
if [ -z "$crate" ]; then
  mkdir -p "$work/fetch/src" && touch "$work/fetch/src/lib.rs"
  printf '[package]\nname = "nixpkgs-snapshot"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nnixel = "=5.2.0"\n' > "$work/fetch/Cargo.toml"
  (cd "$work/fetch" && cargo fetch --quiet)
  crate=$(ls ~/.cargo/registry/cache/*/nixel-5.2.0.crate | head -1)
fi
echo "9d75d3203063d3a8d7d050b324fb3f7433ae8eac57e79031a53b1328e2db5a54  $crate" | sha256sum -c --quiet
tar -xzf "$crate" -C "$work" nixel-5.2.0/tests/inputs/nixpkgs
snap="$work/nixel-5.2.0/tests/inputs/nixpkgs"
echo 22.11 > "$snap/.version"

# The package the units point at: the real binary and its service names.
mkdir -p "$work/pkg/bin"
for n in call-coach stt rtp2ws relay orchestrator ari-coach; do ln -s "$BIN" "$work/pkg/bin/$n"; done

echo "== 1. every .nix file parses"
for f in flake.nix $(find nix -name '*.nix' | sort); do
  if nix-instantiate --parse "$f" >/dev/null 2>"$work/err"; then :; else bad "parse $f: $(cat "$work/err")"; fi
done
ok "parsed $(find nix -name '*.nix' | wc -l) files and flake.nix"

# systemd-analyze on one unit file: no warning at all, exposure <= 2.0.
declare -A scores
analyze() {
  local unit=$1 label=$2
  local out
  out=$(cd "$(dirname "$unit")" && systemd-analyze verify --man=no "./$(basename "$unit")" 2>&1) || { bad "$label: verify failed: $out"; return; }
  if echo "$out" | grep -Eiq 'unknown key|unknown section|failed to parse|invalid|ignoring|warning'; then
    bad "$label: verify warned: $out"; return
  fi
  local score
  score=$(cd "$(dirname "$unit")" && systemd-analyze security --offline=yes --threshold=20 "./$(basename "$unit")" 2>&1 | grep -o 'exposure level for [^:]*: [0-9.]*' | awk '{print $NF}') || true
  if [ -z "$score" ] || awk "BEGIN {exit !($score > 2.0)}"; then
    bad "$label: exposure ${score:-unknown} > 2.0"; return
  fi
  scores[$label]=$score
}

echo "== 2-3. module evaluations, rendered units, generated configuration"
evaluate() { # case -> JSON on stdout, errors in $work/err
  nix-instantiate --read-write-mode --eval --strict --json nix/check/eval.nix \
    --arg snapshot "$snap" --arg configuration "./nix/check/cases/$1.nix" --argstr package "$work/pkg" 2>"$work/err"
}
for case in typical one-off firewall asterisk scale-out; do
  if ! evaluate "$case" >"$work/$case.json"; then bad "case $case: $(cat "$work/err")"; continue; fi
  mkdir -p "$work/units-$case"
  python3 - "$work/$case.json" "$work/units-$case" <<'PY'
import json, sys, pathlib
d = json.load(open(sys.argv[1])); out = pathlib.Path(sys.argv[2])
for name, text in d["units"].items():
    # The 2022 snapshot links wantedBy; current nixpkgs writes [Install].
    want = d["wantedBy"].get(name.removesuffix(".service"), [])
    if want:
        text += "\n[Install]\nWantedBy=" + " ".join(want) + "\n"
    (out / name).write_text(text)
PY
  # Scripts of script-units (stubbed): an executable where ExecStart points.
  for exe in $(grep -ho "ExecStart=$work/pkg-scripts/[^ ]*" "$work/units-$case"/*.service | cut -d= -f2); do
    mkdir -p "$(dirname "$exe")" && printf '#!/bin/sh\n' > "$exe" && chmod +x "$exe"
  done
  for unit in "$work/units-$case"/*.service; do analyze "$unit" "$case/$(basename "$unit")"; done
  config=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["configFile"])' "$work/$case.json")
  if CALL_COACH_CONFIG="$config" "$BIN" check-config >"$work/cc" 2>&1; then :; else bad "case $case: call-coach check-config refused the generated file: $(cat "$work/cc")"; fi
  ok "case $case: $(ls "$work/units-$case" | wc -l) units, check-config accepts call-coach.toml"
done
# What each case must show.
python3 - "$work" <<'PY' || fails=$((fails + 1))
import json, sys
w = sys.argv[1]
load = lambda c: json.load(open(f"{w}/{c}.json"))
def need(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond: raise SystemExit(1)
t = load("typical"); u = t["units"]
need(sorted(u) == sorted(f"call-coach-{s}.service" for s in ["relay","stt","rtp2ws","orchestrator","ari-coach"]), "typical: the five units")
need("LoadCredential=ari_pass:/run/keys/ari-password" in u["call-coach-ari-coach.service"], "typical: ARI password by LoadCredential")
need("LoadCredential=openrouter_api_key:/run/keys/llm-key" in u["call-coach-orchestrator.service"], "typical: LLM key by LoadCredential")
need(all("Type=notify" in x and "WatchdogSec=30" in x and "Restart=always" in x and "StartLimitBurst=10" in x for x in u.values()), "typical: notify, watchdog, restart policy")
need("Before=call-coach-rtp2ws.service" in u["call-coach-stt.service"] and "After=network.target call-coach-stt.service" in u["call-coach-rtp2ws.service"], "typical: stt before rtp2ws")
need("call-coach-relay.service" in u["call-coach-orchestrator.service"].split("[Service]")[0], "typical: relay before orchestrator")
need("User=call-coach" in u["call-coach-relay.service"] and "DynamicUser=true" in u["call-coach-ari-coach.service"], "typical: call-coach user for relay/stt, DynamicUser for the rest")
need(t["users"]["call-coach"]["isSystemUser"], "typical: the system user")
need(t["firewall"]["allowedTCPPorts"] == [] and t["firewall"]["allowedUDPPortRanges"] == [], "typical: firewall closed")
o = load("one-off")
need(sorted(o["units"]) == ["call-coach-relay.service", "call-coach-rtp2ws.service", "call-coach-stt.service"], "one-off: orchestrator and ari-coach off")
f = load("firewall")
need(sorted(f["firewall"]["allowedTCPPorts"]) == [7070, 8080], "firewall: relay and stt ports open")
need(f["firewall"]["allowedUDPPortRanges"] == [{"from": 20000, "to": 20199}], "firewall: the RTP range open")
need("LoadCredential=relay_tokens:/run/keys/relay-tokens" in f["units"]["call-coach-relay.service"], "firewall: relay tokens by LoadCredential")
need(all("LoadCredential=relay_token:/run/keys/relay-token" in f["units"][f"call-coach-{s}.service"] for s in ["stt","orchestrator","ari-coach"]), "firewall: publishers' token by LoadCredential")
a = load("asterisk")
need("call-coach-asterisk-ari.service" in a["units"], "asterisk: the ARI user unit")
need(sorted(a["asteriskFiles"]) == ["ari.conf", "call-coach-extensions.conf", "extensions.conf", "http.conf"], "asterisk: ari.conf, http.conf, the dialplan")
need("After=network.target asterisk.service" in a["units"]["call-coach-ari-coach.service"], "asterisk: Asterisk before ari-coach")
s = load("scale-out"); su = s["units"]
need("LoadCredential=relay_nats_creds:/run/keys/nats.creds" in su["call-coach-relay.service"], "scale-out: NATS credentials for the relay by LoadCredential")
need("LoadCredential=orchestrator_nats_creds:/run/keys/nats.creds" in su["call-coach-orchestrator.service"], "scale-out: NATS credentials for the orchestrator by LoadCredential")
toml = open(s["configFile"]).read()
for want in ['url = "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222"',
             'nats_url = "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222"',
             'stt_url = "ws://10.0.0.11:8080/ws,ws://10.0.0.12:8080/ws"',
             'call_id_prefix = "ast1"', 'lease_secs = 4']:
    need(want in toml, f"scale-out: call-coach.toml has {want}")
PY
# Secrets stay paths: with real secret files holding a sentinel, neither the
# units nor the generated TOML may contain it.
sentinel="sentinel-$RANDOM$RANDOM"
for f in ari llm tokens token; do echo "$sentinel" > "$work/secret-$f"; done
cat > "$work/secrets.nix" <<NIX
{
  services.asterisk.enable = true;
  services.callCoach = {
    enable = true;
    asterisk.enable = true;
    ariCoach.ariPasswordFile = "$work/secret-ari";
    orchestrator.apiKeyFile = "$work/secret-llm";
    relay.tokensFile = "$work/secret-tokens";
    publisherTokenFile = "$work/secret-token";
  };
}
NIX
if nix-instantiate --read-write-mode --eval --strict --json nix/check/eval.nix --arg snapshot "$snap" \
     --arg configuration "$work/secrets.nix" --argstr package "$work/pkg" >"$work/secrets.json" 2>"$work/err"; then
  config=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["configFile"])' "$work/secrets.json")
  if grep -q "$sentinel" "$work/secrets.json" "$config"; then bad "a secret's content reached the units or call-coach.toml";
  elif ! grep -q "ari_pass:$work/secret-ari" "$work/secrets.json"; then bad "the ARI password file is not passed by LoadCredential";
  else ok "secrets: only their paths reach the units and call-coach.toml (sentinel contents absent)"; fi
else
  bad "case secrets: $(cat "$work/err")"
fi

for spec in "fail-missing-secret:ariPasswordFile must be set" \
            "fail-open-relay:beyond loopback: set services.callCoach.relay.tokensFile" \
            "fail-bad-port:is not of type" \
            "fail-bad-model:is not of type"; do
  case=${spec%%:*}; want=${spec#*:}
  if evaluate "$case" >/dev/null; then bad "case $case: evaluated, should have failed";
  elif grep -q "$want" "$work/err"; then ok "case $case: refused ($want)";
  else bad "case $case: failed without \"$want\": $(cat "$work/err")"; fi
done

echo "== 3. the plain units in systemd/"
mkdir -p "$work/plain"
for f in systemd/*.service; do
  sed "s#/usr/local/bin/call-coach#$BIN#" "$f" > "$work/plain/$(basename "$f")"
  analyze "$work/plain/$(basename "$f")" "systemd/$(basename "$f")"
done
ok "systemd/: $(ls systemd/*.service | wc -l) units verified"
# The plain units and the module's say the same: every directive from the
# hardening block on, and the service type, restart and watchdog policy.
python3 - "$work/units-typical" systemd <<'PY' || fails=$((fails + 1))
import pathlib, sys
rendered, plain = map(pathlib.Path, sys.argv[1:3])
SAME = ("Type", "NotifyAccess", "Restart", "RestartSec", "WatchdogSec", "TimeoutStopSec",
        "StartLimitIntervalSec", "StartLimitBurst")
def directives(path):
    out, hardening = {}, False
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("# Hardening"):
            hardening = True
        if not line or line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        # A list is one line or several (systemd adds them up alike).
        words = [{"yes": "true", "no": "false"}.get(w, w) for w in value.split()]
        if key in SAME or hardening or key in HARDENING:
            out.setdefault(key, []).extend(words)
    return out
HARDENING = set()
for unit in sorted(plain.glob("*.service")):
    HARDENING |= {k for k in directives(unit) if k not in SAME}
bad = 0
for unit in sorted(plain.glob("*.service")):
    p, r = directives(unit), directives(rendered / unit.name)
    for key in sorted(set(p) | set(r)):
        if key in ("User", "Group", "DynamicUser", "StateDirectory", "StateDirectoryMode", "LoadCredential"):
            continue
        if sorted(p.get(key, [])) != sorted(r.get(key, [])):
            print(f"FAIL {unit.name}: {key}: systemd/ has {p.get(key)}, the module renders {r.get(key)}")
            bad += 1
if bad:
    raise SystemExit(1)
print(f"ok   systemd/ and the module agree on type, restart, watchdog and hardening ({len(HARDENING)} hardening keys, 5 units)")
PY

echo "== 4. the flake, against a stand-in nixpkgs"
standin="$work/standin"
mkdir -p "$standin"
cp -r "$snap/lib" "$snap/nixos" "$standin/"
cp nix/check/standin/*.nix nix/check/harness.nix "$standin/"
src="$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | (mkdir -p "$src" && tar -xf - -C "$src")
if (cd "$src" && nix flake check --no-build --no-write-lock-file --override-input nixpkgs "path:$standin" >"$work/flake.log" 2>&1); then
  ok "nix flake check (packages, checks with the VM tests' nodes evaluated, devShells, formatter, nixosModules)"
else
  bad "nix flake check: $(tail -30 "$work/flake.log")"
fi
(cd "$src" && nix flake show --no-write-lock-file --override-input nixpkgs "path:$standin" 2>/dev/null | sed 's/^/     /') || true

echo "== scores (systemd-analyze security --offline=yes; at most 2.0)"
for k in $(printf '%s\n' "${!scores[@]}" | sort); do printf '     %-50s %s\n' "$k" "${scores[$k]}"; done
echo "nix checks: $fails failed"
[ "$fails" -eq 0 ]
