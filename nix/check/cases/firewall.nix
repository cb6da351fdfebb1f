# The relay and stt open to the network (with tokens), RTP from a remote
# Asterisk.
{
  services.callCoach = {
    enable = true;
    relay = { listenAddress = "0.0.0.0"; openFirewall = true; tokensFile = "/run/keys/relay-tokens"; };
    publisherTokenFile = "/run/keys/relay-token";
    stt = { listenAddress = "0.0.0.0"; openFirewall = true; model = "base"; };
    rtp2ws = { rtpAddress = "0.0.0.0"; openFirewall = true; basePort = 20000; portRange = 200; };
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
  };
}
