# VM test 3: call-coach past one machine (README "Scaling out"). Three NATS
# JetStream nodes (nixpkgs' services.nats, clustered) and two call-coach
# hosts, each with a relay on the cluster, an orchestrator in one group and
# an stt; host a also runs Asterisk with ari-coach (prefix ast1) and an
# rtp2ws that spreads legs over both stt hosts.
#  - an event posted on one host is served, numbered, on the other;
#  - both hosts publishing to one call at once make one gap-free seq;
#  - with a NATS node crashed, publishing goes on and nothing is lost;
#  - a call that reaches Asterisk on host a is seen on host b as ast1:...;
#  - stopping the orchestrator that coaches a call hands it to the other.
# Run on a NixOS host with KVM: nix build .#checks.x86_64-linux.vm-scale-out
{ self }:
let
  natsNames = [ "nats1" "nats2" "nats3" ];
  servers = map (n: "nats://${n}:4222") natsNames;
  natsNode = name: { ... }: {
    networking.firewall.allowedTCPPorts = [ 4222 6222 ];
    services.nats = {
      enable = true;
      serverName = name;
      jetstream = true;
      settings.cluster = {
        name = "callcoach";
        listen = "0.0.0.0:6222";
        routes = map (n: "nats-route://${n}:6222") natsNames;
      };
    };
  };
  coachHost = { prefix, asterisk }: { pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
    environment.systemPackages = [ pkgs.websocat pkgs.curl ];
    services.asterisk.enable = asterisk;
    services.callCoach = {
      enable = true;
      asterisk.enable = asterisk;
      ariCoach.enable = asterisk;
      ariCoach.callIdPrefix = prefix;
      # Test only: a real deployment keeps this file out of the store.
      ariCoach.ariPasswordFile = pkgs.writeText "ari-password" "test-only-password";
      relay.nats.servers = servers;
      orchestrator.group = {
        inherit servers;
        leaseSecs = 3;
      };
      stt = {
        model = "base";
        modelPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.model-base;
        # The other host's rtp2ws sends legs here too.
        listenAddress = "0.0.0.0";
        openFirewall = true;
      };
      rtp2ws.sttUrls = [ "ws://a:8080/ws" "ws://b:8080/ws" ];
    };
  };
in
{
  name = "call-coach-scale-out";

  nodes = {
    nats1 = natsNode "nats1";
    nats2 = natsNode "nats2";
    nats3 = natsNode "nats3";
    a = coachHost { prefix = "ast1"; asterisk = true; };
    b = coachHost { prefix = "ast2"; asterisk = false; };
  };

  testScript = ''
    import json

    nats = [nats1, nats2, nats3]
    for n in nats:
        n.start()
    for n in nats:
        n.wait_for_unit("nats.service")
        n.wait_for_open_port(4222)
    for host in [a, b]:
        host.start()
    for host in [a, b]:
        for unit in ["relay", "stt", "rtp2ws", "orchestrator"]:
            host.wait_for_unit(f"call-coach-{unit}.service")
        host.wait_for_open_port(7070)

    def post(host, event):
        body = json.dumps(event)
        return host.succeed(
            f"curl -sf -X POST -H 'content-type: application/json' -d '{body}' http://127.0.0.1:7070/event"
        )

    def read(host, query, count):
        out = host.succeed(f"timeout 30 websocat -u --max-messages-rev {count} 'ws://127.0.0.1:7070/ws?{query}'")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    with subtest("an event posted on one host is served on the other"):
        post(a, {"type": "vm.test", "callId": "x-1", "n": 1})
        got = read(b, "callId=x-1&since=0", 1)
        assert got[0]["n"] == 1 and got[0]["seq"] == 1, got

    with subtest("both hosts publishing to one call make one gap-free seq"):
        loop = (
            "for i in $(seq 1 25); do curl -sf -X POST -H 'content-type: application/json' "
            "-d '{\"type\":\"vm.test\",\"callId\":\"race\"}' http://127.0.0.1:7070/event >/dev/null || exit 1; done"
        )
        a.execute(f"({loop}; touch /tmp/race.done) > /tmp/race.log 2>&1 &")
        b.succeed(loop)
        a.wait_for_file("/tmp/race.done", timeout=60)
        got = read(b, "callId=race&since=0", 50)
        assert sorted(e["seq"] for e in got) == list(range(1, 51)), [e["seq"] for e in got]

    with subtest("a crashed NATS node loses nothing acknowledged"):
        nats1.crash()
        for i in range(10):
            a.wait_until_succeeds(
                "curl -sf -X POST -H 'content-type: application/json' "
                f"-d '{{\"type\":\"vm.test\",\"callId\":\"crash\",\"i\":{i}}}' http://127.0.0.1:7070/event",
                timeout=60,
            )
        got = read(b, "callId=crash&since=0", 10)
        assert [e["i"] for e in got] == list(range(10)), got
        nats1.start()
        nats1.wait_for_unit("nats.service")

    with subtest("a call on host a's Asterisk is seen on host b with a's prefix"):
        a.wait_for_unit("call-coach-ari-coach.service")
        a.wait_until_succeeds("journalctl -u call-coach-ari-coach.service | grep -q 'the app is registered'")
        b.execute("timeout 60 websocat -u 'ws://127.0.0.1:7070/ws?callId=*' > /tmp/all.jsonl 2>&1 &")
        # No agent answers here: the call starts and ends with a reason.
        a.succeed("asterisk -rx 'channel originate Local/1000@call-coach application Wait 5'")
        b.wait_until_succeeds("grep '\"type\":\"call.started\"' /tmp/all.jsonl | grep -q '\"callId\":\"ast1:'", timeout=30)
        b.wait_until_succeeds("grep '\"type\":\"call.ended\"' /tmp/all.jsonl | grep -q '\"callId\":\"ast1:'", timeout=60)

    with subtest("stopping the orchestrator that coaches a call hands it to the other"):
        post(a, {"type": "call.started", "callId": "t-1", "agent": "PJSIP/200"})
        coached = "journalctl -u call-coach-orchestrator.service | grep 'coaching the call' | grep -q 't-1'"
        holder, other = None, None
        for _ in range(30):
            if a.execute(coached)[0] == 0:
                holder, other = a, b
                break
            if b.execute(coached)[0] == 0:
                holder, other = b, a
                break
            a.sleep(1)
        assert holder is not None, "no orchestrator took call t-1"
        holder.succeed("systemctl stop call-coach-orchestrator.service")
        other.wait_until_succeeds(coached, timeout=20)
        since = read(other, "callId=t-1&since=0", 1)[-1]["seq"]
        got = read(other, f"callId=t-1&since={since}", 2)
        assert any(e["type"] == "metrics" for e in got), got
  '';
}
