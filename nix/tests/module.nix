# VM test 1: the module alone. Every unit comes up (Type=notify: active means
# READY=1 was sent), the ports are open, check-config passes, a posted event
# reaches a websocket client, and every unit keeps its hardening score.
# Run on a NixOS host with KVM: nix build .#checks.x86_64-linux.vm-module
{ self }:
{
  name = "call-coach-module";

  nodes.machine = { pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 2048;
    environment.systemPackages = [ pkgs.websocat pkgs.curl ];
    services.callCoach = {
      enable = true;
      stt.model = "tiny";
      stt.modelPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.model-tiny;
      # Test only: a real deployment keeps this file out of the store.
      ariCoach.ariPasswordFile = pkgs.writeText "ari-password" "test-only-password";
    };
  };

  testScript = ''
    units = ["relay", "stt", "rtp2ws", "orchestrator", "ari-coach"]
    machine.start()
    for unit in units:
        machine.wait_for_unit(f"call-coach-{unit}.service")
    for port in [7070, 8080, 7071]:
        machine.wait_for_open_port(port)

    with subtest("check-config passes with the generated file"):
        machine.succeed("call-coach check-config | grep -q 'ari_coach.agent_dial'")

    with subtest("a posted event reaches a websocket client"):
        machine.succeed(
            "curl -sf -X POST -H 'content-type: application/json' "
            "-d '{\"type\":\"vm.test\",\"callId\":\"vm-1\",\"n\":42}' http://127.0.0.1:7070/event"
        )
        got = machine.succeed("timeout 10 websocat -1 -u 'ws://127.0.0.1:7070/ws?callId=vm-1'")
        assert '"n":42' in got and '"seq":1' in got, got

    with subtest("the web UI is served"):
        machine.succeed("curl -sf http://127.0.0.1:7070/ | grep -q call-coach")

    with subtest("ari-coach waits for Asterisk without failing"):
        machine.succeed("systemctl is-active call-coach-ari-coach.service")
        machine.wait_for_open_port(7072)
        machine.fail("curl -sf http://127.0.0.1:7072/healthz")  # 503: no Asterisk here
        machine.succeed("curl -sf http://127.0.0.1:7072/metrics | grep -q '^ari_coach_connected 0'")
        machine.wait_until_succeeds("journalctl -u call-coach-ari-coach.service | grep -q 'ARI not reachable'")

    with subtest("hardening: every unit scores at most 2.0"):
        for unit in units:
            machine.succeed(f"systemd-analyze security --threshold=20 call-coach-{unit}.service")

    with subtest("secrets are not in the store"):
        machine.fail("grep -r test-only-password /etc/systemd/system/call-coach-*.service")
  '';
}
