# Only relay, stt and rtp2ws: no ARI password needed.
{
  services.callCoach = {
    enable = true;
    orchestrator.enable = false;
    ariCoach.enable = false;
  };
}
