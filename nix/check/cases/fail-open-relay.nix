# A relay beyond loopback without tokens: refused.
{
  services.callCoach = {
    enable = true;
    relay.listenAddress = "0.0.0.0";
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
  };
}
