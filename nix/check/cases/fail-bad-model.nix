# Not a Whisper model size: a type error.
{
  services.callCoach = {
    enable = true;
    stt.model = "huge";
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
  };
}
