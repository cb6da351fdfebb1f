# All five services with their defaults and the two secrets.
{
  services.callCoach = {
    enable = true;
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
    orchestrator.apiKeyFile = "/run/keys/llm-key";
  };
}
