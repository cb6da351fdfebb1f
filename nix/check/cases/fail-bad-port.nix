# Not a port: a type error.
{
  services.callCoach = {
    enable = true;
    relay.port = 70000;
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
  };
}
