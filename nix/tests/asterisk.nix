# VM test 2: Asterisk (nixpkgs' services.asterisk) with call-coach's
# integration. sipp places a SIP call into the coached context and plays
# Spanish speech (espeak-ng, as A-law RTP); a second sipp is the agent and
# answers. Transcripts of the customer reach the relay, the rules coach
# publishes a tip for the cancellation request, and hanging up leaves no
# channel behind.
# Run on a NixOS host with KVM: nix build .#checks.x86_64-linux.vm-asterisk
{ self }:
{
  name = "call-coach-asterisk";

  nodes.pbx = { pkgs, ... }: {
    imports = [ self.nixosModules.default ];
    virtualisation.memorySize = 4096;
    virtualisation.cores = 2;
    environment.systemPackages = with pkgs; [ sipp websocat curl espeak-ng sox (python3.withPackages (p: [ ])) ];
    services.asterisk = {
      enable = true;
      confFiles = {
        "pjsip.conf" = ''
          [transport-udp]
          type = transport
          protocol = udp
          bind = 127.0.0.1:5060

          ; the customer (sipp UAC on 5070)
          [caller]
          type = endpoint
          context = call-coach
          disallow = all
          allow = alaw,ulaw
          aors = caller
          [caller]
          type = aor
          contact = sip:caller@127.0.0.1:5070

          ; the agent (sipp UAS on 5080)
          [200]
          type = endpoint
          context = call-coach-agents
          disallow = all
          ; sipp's built-in uas answers with PCMU
          allow = ulaw,alaw
          aors = 200
          [200]
          type = aor
          contact = sip:200@127.0.0.1:5080

          [caller-identify]
          type = identify
          endpoint = caller
          match = 127.0.0.1:5070
          [agent-identify]
          type = identify
          endpoint = 200
          match = 127.0.0.1:5080
        '';
        "modules.conf" = ''
          [modules]
          autoload = yes
        '';
      };
    };
    services.callCoach = {
      enable = true;
      asterisk.enable = true;
      stt.model = "base";
      stt.modelPackage = self.packages.${pkgs.stdenv.hostPlatform.system}.model-base;
      ariCoach.agentDial = "PJSIP/200";
      # Test only: a real deployment keeps this file out of the store.
      ariCoach.ariPasswordFile = pkgs.writeText "ari-password" "test-only-password";
    };
  };

  testScript = ''
    pbx.start()
    pbx.wait_for_unit("asterisk.service")
    for unit in ["relay", "stt", "rtp2ws", "orchestrator", "ari-coach"]:
        pbx.wait_for_unit(f"call-coach-{unit}.service")
    pbx.wait_until_succeeds("journalctl -u call-coach-ari-coach.service | grep -q 'the app is registered'")
    pbx.succeed("asterisk -rx 'ari show apps' | grep -q coach")

    with subtest("the customer's audio: Spanish speech as A-law RTP in sipp's pcap"):
        pbx.succeed(
            "mkdir -p /tmp/sipp/pcap && cd /tmp/sipp && "
            "espeak-ng -v es -s 140 -w speech.wav "
            "'Buenos días. Quiero cancelar el contrato, es demasiado caro.' && "
            "sox speech.wav -r 8000 -c 1 -b 16 -e signed-integer speech8k.raw pad 1 2"
        )
        pbx.succeed(
            "cd /tmp/sipp && python3 - <<'EOF'\n"
            "import struct, random\n"
            "def alaw(s):\n"
            "    sign = 0x00 if s < 0 else 0x80\n"
            "    s = min(abs(s), 32635)\n"
            "    if s >= 256:\n"
            "        e = s.bit_length() - 8\n"
            "        m = (s >> (e + 3)) & 0x0F\n"
            "        v = (e << 4) | m\n"
            "    else:\n"
            "        v = s >> 4\n"
            "    return (v | sign) ^ 0x55\n"
            "raw = open('speech8k.raw', 'rb').read()\n"
            "samples = struct.unpack('<%dh' % (len(raw) // 2), raw)\n"
            "out = open('pcap/g711a.pcap', 'wb')\n"
            "out.write(struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))\n"
            "seq, ts, ssrc = random.randrange(65536), 0, random.randrange(1 << 32)\n"
            "for i in range(0, len(samples) - 160, 160):\n"
            "    payload = bytes(alaw(x) for x in samples[i:i + 160])\n"
            "    rtp = struct.pack('!BBHII', 0x80, 8, seq & 0xFFFF, ts, ssrc) + payload\n"
            "    udp = struct.pack('!HHHH', 6000, 6002, 8 + len(rtp), 0) + rtp\n"
            "    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([127,0,0,1]), bytes([127,0,0,1])) + udp\n"
            "    eth = b'\\x00' * 12 + b'\\x08\\x00' + ip\n"
            "    t = i // 160 * 20000\n"
            "    out.write(struct.pack('<IIII', t // 1000000, t % 1000000, len(eth), len(eth)) + eth)\n"
            "    seq += 1; ts += 160\n"
            "EOF"
        )

    with subtest("a coached call: the agent answers, the customer speaks"):
        pbx.succeed("cd /tmp/sipp && (sipp -sn uas -i 127.0.0.1 -p 5080 -m 1 -bg -trace_err)")
        sub = "timeout 90 websocat -u 'ws://127.0.0.1:7070/ws?callId=*' > /tmp/events.jsonl 2>&1 &"
        pbx.succeed(sub)
        pbx.succeed(
            "cd /tmp/sipp && timeout 60 sipp -sn uac_pcap 127.0.0.1:5060 -s 1000 "
            "-i 127.0.0.1 -p 5070 -m 1 -d 9000 -trace_err"
        )
        pbx.wait_until_succeeds("grep -q '\"type\":\"call.started\"' /tmp/events.jsonl", timeout=30)
        pbx.wait_until_succeeds(
            "grep '\"type\":\"transcript\"' /tmp/events.jsonl | grep '\"final\":true' "
            "| grep '\"speaker\":\"customer\"' | grep -qi cancel",
            timeout=60,
        )
        pbx.wait_until_succeeds("grep '\"type\":\"tip\"' /tmp/events.jsonl | grep -q cancelacion", timeout=30)

    with subtest("hanging up leaves nothing behind"):
        pbx.wait_until_succeeds("grep -q '\"type\":\"call.ended\"' /tmp/events.jsonl", timeout=30)
        pbx.wait_until_succeeds("asterisk -rx 'core show channels count' | grep -q '^0 active channels'", timeout=30)
        pbx.succeed("asterisk -rx 'bridge show all' | grep -vq -- '-call'")
        pbx.wait_until_succeeds("curl -sf http://127.0.0.1:7071/streams | grep -q '\"streams\":\\[\\]'", timeout=70)
  '';
}
