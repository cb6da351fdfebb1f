# With nixpkgs' Asterisk: ARI, the ARI user and the dialplan context.
{
  services.asterisk.enable = true;
  services.callCoach = {
    enable = true;
    asterisk.enable = true;
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
  };
}
