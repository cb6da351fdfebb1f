# One host of a multi-host deployment (README "Scaling out"): the relay on
# a NATS JetStream cluster, the orchestrator in a group, rtp2ws spreading
# legs over two stt hosts, ari-coach with its Asterisk's prefix.
{
  services.callCoach = {
    enable = true;
    ariCoach.ariPasswordFile = "/run/keys/ari-password";
    ariCoach.callIdPrefix = "ast1";
    relay.nats = {
      servers = [ "nats://10.0.0.1:4222" "nats://10.0.0.2:4222" "nats://10.0.0.3:4222" ];
      credentialsFile = "/run/keys/nats.creds";
    };
    orchestrator.group = {
      servers = [ "nats://10.0.0.1:4222" "nats://10.0.0.2:4222" "nats://10.0.0.3:4222" ];
      credentialsFile = "/run/keys/nats.creds";
      leaseSecs = 4;
    };
    rtp2ws.sttUrls = [ "ws://10.0.0.11:8080/ws" "ws://10.0.0.12:8080/ws" ];
  };
}
