# services.callCoach: the five call-coach services as hardened systemd units.
#
#   services.callCoach = {
#     enable = true;
#     ariCoach.ariPasswordFile = "/run/secrets/ari-password";
#   };
#
# Users: relay and stt keep files (the relay store, the Whisper models) under
# /var/lib/call-coach and run as the system user `call-coach`; rtp2ws,
# orchestrator and ari-coach keep none and run with DynamicUser. Secrets are
# only ever file paths, handed over with LoadCredential: never in the store.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge mkDefault types optional optionals
    optionalAttrs concatStringsSep;

  cfg = config.services.callCoach;
  settingsFormat = pkgs.formats.toml { };

  # The TOML the binary reads (CALL_COACH_CONFIG): typed options below feed
  # `settings`, which users may extend freely (RFC 42).
  configFile = settingsFormat.generate "call-coach.toml" cfg.settings;

  isLoopback = addr: addr == "127.0.0.1" || addr == "::1" || addr == "localhost";
  hostPort = addr: port: if lib.hasInfix ":" addr then "[${addr}]:${toString port}" else "${addr}:${toString port}";
  relayHost = if cfg.relay.listenAddress == "0.0.0.0" || cfg.relay.listenAddress == "::" then "127.0.0.1" else cfg.relay.listenAddress;
  relayBase = "http://${hostPort relayHost cfg.relay.port}";
  # nixpkgs' services.nats runs on this host too.
  natsHere = lib.attrByPath [ "services" "nats" "enable" ] false config;
  sttHost = if cfg.stt.listenAddress == "0.0.0.0" || cfg.stt.listenAddress == "::" then "127.0.0.1" else cfg.stt.listenAddress;

  # The hardening every unit gets (systemd-analyze security: 1.2 each).
  hardening = {
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    PrivateUsers = true;
    PrivateMounts = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    # whisper.cpp on the CPU generates no code at run time.
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0077";
  };

  # One service unit; `name` is the multicall name (argv[0]).
  mkUnit = name: { description, after ? [ ], wants ? [ ], before ? [ ], credentials ? { }, extra ? { } }: {
    description = "call-coach ${name}: ${description}";
    wantedBy = [ "multi-user.target" ];
    after = [ "network.target" ] ++ after;
    inherit wants before;
    environment.CALL_COACH_CONFIG = "${configFile}";
    unitConfig = {
      StartLimitIntervalSec = 60;
      StartLimitBurst = 10;
    };
    serviceConfig = hardening // {
      Type = "notify";
      NotifyAccess = "main";
      ExecStart = "${cfg.package}/bin/${name}";
      Restart = "always";
      RestartSec = 2;
      WatchdogSec = 30;
      TimeoutStopSec = 30;
    } // optionalAttrs (credentials != { }) {
      LoadCredential = lib.mapAttrsToList (key: file: "${key}:${toString file}") credentials;
    } // extra;
  };

  stateful = {
    User = cfg.user;
    Group = cfg.group;
    StateDirectory = "call-coach";
    StateDirectoryMode = "0750";
  };

  # Publishers need a token when the relay checks them.
  publisherCredentials = optionalAttrs (cfg.relay.tokensFile != null) {
    relay_token = cfg.publisherTokenFile;
  };

  # An option with its type, default and description.
  option = type: default: description: mkOption { inherit type default description; };

  # A NATS JetStream cluster a service uses (README "Scaling out").
  natsOptions = { what, credential }: {
    servers = option (types.listOf types.str) [ ]
      "NATS servers (nats://host:4222) of a JetStream cluster: ${what}.";
    credentialsFile = option (types.nullOr types.path) null
      "A NATS credentials file (.creds), passed as the credential `${credential}`.";
  };

  listenOptions = name: defaultPort: {
    enable = option types.bool true
      "Whether to run ${name} (on with services.callCoach.enable).";
    listenAddress = option types.str "127.0.0.1"
      "Address ${name} listens on. Keep loopback unless another host needs it.";
    port = option types.port defaultPort
      "TCP port of ${name}.";
    openFirewall = option types.bool false
      "Open ${name}'s port in the firewall.";
  };
in
{
  options.services.callCoach = {
    enable = mkEnableOption "call-coach, real-time coaching for contact-centre agents on Asterisk";

    package = mkOption {
      type = types.package;
      description = "The call-coach package (the flake's module sets its own).";
    };

    user = option types.str "call-coach"
      "System user of relay and stt (the services that keep files).";

    group = option types.str "call-coach"
      "Group of relay and stt.";

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      description = ''
        call-coach.toml (README "Configuration"): any key of the binary's
        configuration. The typed options of this module fill it; values
        set here win.
      '';
    };

    relay = listenOptions "the relay" 7070 // {
      tokensFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = ''
          The relay's tokens file (`TOKEN ROLES [SCOPE]` per line), passed as
          the credential `relay_tokens`. Required when the relay listens
          beyond loopback.
        '';
      };
      retentionDays = option types.ints.unsigned 30
        "Days events are kept (0: forever).";
      nats = natsOptions {
        what = "the relay keeps its events there instead of SQLite, and any number of hosts run relays on the same calls (README \"Scaling out\"). Empty: SQLite on this host";
        credential = "relay_nats_creds";
      } // {
        replicas = option types.ints.unsigned 0
          "Copies of each event in the cluster; 0: 3 with three or more servers.";
      };
    };

    publisherTokenFile = option (types.nullOr types.path) null
      "A token with the `publish` role for stt, orchestrator and ari-coach (credential `relay_token`); needed with relay.tokensFile.";

    stt = listenOptions "stt" 8080 // {
      language = option types.str "es"
        "Language of the calls (Whisper language code).";
      model = option (types.enum [ "tiny" "base" "small" "medium" "large" ]) "small"
        "Whisper model size.";
      modelPackage = mkOption {
        type = types.nullOr types.package;
        default = null;
        description = ''
          A package holding `ggml-<model>.bin` (the flake provides them as
          fixed-output derivations: packages.<system>.model-<size>). Null:
          install models into /var/lib/call-coach/models yourself with
          `call-coach model fetch <size>`.
        '';
      };
      device = option (types.enum [ "cpu" "cuda" ]) "cpu"
        "Where Whisper runs (cuda needs a CUDA build).";
    };

    rtp2ws = {
      enable = option types.bool true
        "Whether to run rtp2ws.";
      controlPort = option types.port 7071
        "Loopback port of rtp2ws's control API.";
      basePort = option types.port 14000
        "First UDP port for the RTP legs.";
      portRange = option (types.ints.between 1 10000) 1000
        "UDP ports the legs may use from basePort.";
      rtpAddress = option types.str "127.0.0.1"
        "Address the RTP ports listen on: where Asterisk sends the tapped audio.";
      openFirewall = option types.bool false
        "Open the RTP port range (UDP), for an Asterisk on another host.";
      sttUrls = option (types.listOf types.str) [ ]
        "stt hosts (ws://host:8080/ws) the legs are spread over, by headroom; a leg moves on when its stt fails. Empty: this host's stt.";
    };

    orchestrator = {
      enable = option types.bool true
        "Whether to run the orchestrator.";
      llmModel = option types.str "anthropic/claude-3.5-sonnet"
        "LLM model name (OPENROUTER_MODEL).";
      llmBaseUrl = option types.str "https://openrouter.ai/api/v1"
        "Any OpenAI-compatible API (LLM_BASE_URL), e.g. a local server.";
      apiKeyFile = option (types.nullOr types.path) null
        "File with the LLM API key (credential `openrouter_api_key`). Null: rules coach only.";
      group = natsOptions {
        what = "the orchestrators of every host that names them share the calls, each call coached by one, taken over when its host dies. Empty: this orchestrator coaches every call it sees";
        credential = "orchestrator_nats_creds";
      } // {
        leaseSecs = option types.ints.positive 5
          "A dead orchestrator's calls are taken over after this many seconds (plus up to one).";
      };
    };

    ariCoach = {
      enable = option types.bool true
        "Whether to run ari-coach.";
      ariUrl = option types.str "http://127.0.0.1:8088/ari"
        "ARI base URL.";
      ariUser = option types.str "coach"
        "ARI user.";
      ariPasswordFile = option (types.nullOr types.path) null
        "File with the ARI password (credential `ari_pass`). Required.";
      app = option (types.strMatching "[A-Za-z0-9_-]+") "coach"
        "Stasis application name.";
      agentDial = option types.str "PJSIP/200"
        "Dial string of the agent (per call: Stasis(coach,agent=PJSIP/201)).";
      statusPort = option types.port 7072
        "Loopback port of ari-coach's /healthz (200 while connected to ARI) and /metrics.";
      callIdPrefix = option (types.strMatching "([A-Za-z0-9][A-Za-z0-9._-]{0,31})?") ""
        "With several Asterisk hosts on one relay: this host's name before its call ids (ast1:1732476767.12), since every Asterisk numbers its channels alike.";
    };

    asterisk = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Configure nixpkgs' services.asterisk for call-coach: ARI on
          loopback (http.conf), the ARI user (its password read at start
          from ariCoach.ariPasswordFile, never stored), and the dialplan
          context `call-coach` that hands calls to Stasis.
        '';
      };
      context = option types.str "call-coach"
        "Dialplan context whose calls are coached.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = !cfg.ariCoach.enable || cfg.ariCoach.ariPasswordFile != null;
          message = "services.callCoach.ariCoach.ariPasswordFile must be set (a file outside the Nix store) when ari-coach runs.";
        }
        {
          assertion = !cfg.relay.enable || isLoopback cfg.relay.listenAddress || cfg.relay.tokensFile != null;
          message = "services.callCoach.relay listens on ${cfg.relay.listenAddress}, beyond loopback: set services.callCoach.relay.tokensFile.";
        }
        {
          assertion = cfg.relay.tokensFile == null || cfg.publisherTokenFile != null;
          message = "services.callCoach.publisherTokenFile must be set when relay.tokensFile is: stt, orchestrator and ari-coach publish with it.";
        }
        {
          assertion = !cfg.asterisk.enable || config.services.asterisk.enable;
          message = "services.callCoach.asterisk.enable needs services.asterisk.enable.";
        }
        {
          assertion = cfg.relay.nats.credentialsFile == null || cfg.relay.nats.servers != [ ];
          message = "services.callCoach.relay.nats.credentialsFile is set but relay.nats.servers is empty: name the NATS servers.";
        }
        {
          assertion = cfg.rtp2ws.basePort + cfg.rtp2ws.portRange <= 65536;
          message = "services.callCoach.rtp2ws: basePort + portRange must stay within 65535.";
        }
      ];

      services.callCoach.settings = {
        state_dir = mkDefault "/var/lib/call-coach";
        relay = {
          listen = mkDefault (hostPort cfg.relay.listenAddress cfg.relay.port);
          retention_days = mkDefault cfg.relay.retentionDays;
        } // optionalAttrs (cfg.relay.nats.servers != [ ]) {
          nats = {
            url = mkDefault (concatStringsSep "," cfg.relay.nats.servers);
            replicas = mkDefault cfg.relay.nats.replicas;
          };
        };
        stt = {
          listen = mkDefault (hostPort cfg.stt.listenAddress cfg.stt.port);
          language = mkDefault cfg.stt.language;
          model_size = mkDefault cfg.stt.model;
          device = mkDefault cfg.stt.device;
          relay_url = mkDefault "${relayBase}/event";
        };
        rtp2ws = {
          control = mkDefault "127.0.0.1:${toString cfg.rtp2ws.controlPort}";
          base_port = mkDefault cfg.rtp2ws.basePort;
          port_range = mkDefault cfg.rtp2ws.portRange;
          rtp_bind = mkDefault cfg.rtp2ws.rtpAddress;
          stt_url = mkDefault (if cfg.rtp2ws.sttUrls != [ ]
            then concatStringsSep "," cfg.rtp2ws.sttUrls
            else "ws://${hostPort sttHost cfg.stt.port}/ws");
        };
        orchestrator = {
          openrouter_model = mkDefault cfg.orchestrator.llmModel;
          llm_base_url = mkDefault cfg.orchestrator.llmBaseUrl;
          # The orchestrator follows every call (callId=*); with relay tokens
          # on, its publisher token needs the roles publish,supervisor.
          relay_ws = mkDefault "ws://${hostPort relayHost cfg.relay.port}/ws";
          relay_event = mkDefault "${relayBase}/event";
        } // optionalAttrs (cfg.orchestrator.group.servers != [ ]) {
          group = {
            nats_url = mkDefault (concatStringsSep "," cfg.orchestrator.group.servers);
            lease_secs = mkDefault cfg.orchestrator.group.leaseSecs;
          };
        };
        ari_coach = {
          ari_url = mkDefault cfg.ariCoach.ariUrl;
          ari_user = mkDefault cfg.ariCoach.ariUser;
          ari_app = mkDefault cfg.ariCoach.app;
          agent_dial = mkDefault cfg.ariCoach.agentDial;
          listen = mkDefault "127.0.0.1:${toString cfg.ariCoach.statusPort}";
          rtp2ws_control = mkDefault "127.0.0.1:${toString cfg.rtp2ws.controlPort}";
          rtp_host = mkDefault (if cfg.rtp2ws.rtpAddress == "0.0.0.0" then "127.0.0.1" else cfg.rtp2ws.rtpAddress);
          relay_event = mkDefault "${relayBase}/event";
        } // optionalAttrs (cfg.ariCoach.callIdPrefix != "") {
          call_id_prefix = mkDefault cfg.ariCoach.callIdPrefix;
        };
      } // optionalAttrs (cfg.stt.modelPackage != null) {
        model_dir = mkDefault "${cfg.stt.modelPackage}";
      };

      users.users = optionalAttrs (cfg.user == "call-coach") {
        call-coach = {
          isSystemUser = true;
          group = cfg.group;
          home = "/var/lib/call-coach";
          description = "call-coach relay and stt";
        };
      };
      users.groups = optionalAttrs (cfg.group == "call-coach") { call-coach = { }; };

      networking.firewall.allowedTCPPorts =
        optional (cfg.relay.enable && cfg.relay.openFirewall) cfg.relay.port
        ++ optional (cfg.stt.enable && cfg.stt.openFirewall) cfg.stt.port;
      networking.firewall.allowedUDPPortRanges = optionals (cfg.rtp2ws.enable && cfg.rtp2ws.openFirewall) [
        { from = cfg.rtp2ws.basePort; to = cfg.rtp2ws.basePort + cfg.rtp2ws.portRange - 1; }
      ];

      environment.systemPackages = [ cfg.package ];
      # `call-coach check-config` on the host reads the same file.
      environment.etc."call-coach/call-coach.toml".source = configFile;
    }

    (mkIf cfg.relay.enable {
      systemd.services.call-coach-relay = mkUnit "relay" {
        description = "event hub and web UI";
        # A NATS server on this host (one node of the cluster) first.
        after = optional natsHere "nats.service";
        wants = optional natsHere "nats.service";
        credentials = optionalAttrs (cfg.relay.tokensFile != null) { relay_tokens = cfg.relay.tokensFile; }
          // optionalAttrs (cfg.relay.nats.credentialsFile != null) { relay_nats_creds = cfg.relay.nats.credentialsFile; };
        extra = stateful;
      };
    })

    (mkIf cfg.stt.enable {
      systemd.services.call-coach-stt = mkUnit "stt" {
        description = "Whisper speech-to-text";
        after = optional cfg.relay.enable "call-coach-relay.service";
        before = optional cfg.rtp2ws.enable "call-coach-rtp2ws.service";
        credentials = publisherCredentials;
        # /proc/stat stays visible: a decode spreads over the cores only
        # while no other process uses them (stt.max_threads_when_idle),
        # read from it.
        extra = stateful // { ProcSubset = "all"; };
      };
    })

    (mkIf cfg.rtp2ws.enable {
      systemd.services.call-coach-rtp2ws = mkUnit "rtp2ws" {
        description = "RTP from Asterisk to stt streams";
        after = optional cfg.stt.enable "call-coach-stt.service";
        wants = optional cfg.stt.enable "call-coach-stt.service";
        extra.DynamicUser = true;
      };
    })

    (mkIf cfg.orchestrator.enable {
      systemd.services.call-coach-orchestrator = mkUnit "orchestrator" {
        description = "coaching: rules, live metrics, LLM tips, summaries";
        after = optional cfg.relay.enable "call-coach-relay.service";
        wants = optional cfg.relay.enable "call-coach-relay.service";
        credentials = publisherCredentials
          // optionalAttrs (cfg.orchestrator.apiKeyFile != null) { openrouter_api_key = cfg.orchestrator.apiKeyFile; }
          // optionalAttrs (cfg.orchestrator.group.credentialsFile != null) { orchestrator_nats_creds = cfg.orchestrator.group.credentialsFile; };
        extra.DynamicUser = true;
      };
    })

    (mkIf cfg.ariCoach.enable {
      systemd.services.call-coach-ari-coach = mkUnit "ari-coach" {
        description = "the Asterisk ARI application";
        after = optional config.services.asterisk.enable "asterisk.service"
          ++ optional cfg.rtp2ws.enable "call-coach-rtp2ws.service"
          ++ optional cfg.relay.enable "call-coach-relay.service";
        wants = optional cfg.rtp2ws.enable "call-coach-rtp2ws.service";
        credentials = publisherCredentials
          // optionalAttrs (cfg.ariCoach.ariPasswordFile != null) { ari_pass = cfg.ariCoach.ariPasswordFile; };
        extra.DynamicUser = true;
      };
    })

    (mkIf cfg.asterisk.enable {
      # ARI on loopback, and the ARI user whose password stays out of the
      # store: ari.conf includes a file written at start from the credential.
      services.asterisk.confFiles = {
        "http.conf" = mkDefault ''
          [general]
          enabled = yes
          bindaddr = 127.0.0.1
          bindport = 8088
        '';
        "ari.conf" = mkDefault ''
          [general]
          enabled = yes
          #include "/run/call-coach-asterisk/ari-user.conf"
        '';
        "call-coach-extensions.conf" = ''
          ; Calls entering this context are coached by call-coach (ari-coach).
          [${cfg.asterisk.context}]
          exten => _X.,1,NoOp(call-coach: coached call to ''${EXTEN})
           same => n,Stasis(${cfg.ariCoach.app},inbound,''${EXTEN})
           same => n,Hangup()
        '';
        "extensions.conf" = mkDefault ''
          [general]
          static = yes
          writeprotect = yes
          #include "call-coach-extensions.conf"
        '';
      };
      systemd.services.call-coach-asterisk-ari = {
        description = "call-coach: the ARI user for Asterisk, from the password file";
        wantedBy = [ "asterisk.service" ];
        before = [ "asterisk.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          LoadCredential = [ "ari_pass:${toString cfg.ariCoach.ariPasswordFile}" ];
          RuntimeDirectory = "call-coach-asterisk";
          RuntimeDirectoryMode = "0750";
          RuntimeDirectoryPreserve = true;
          Group = "asterisk";
          UMask = "0027";
        } // hardening // {
          # Writes the file for the asterisk group; needs no network.
          RestrictAddressFamilies = [ "AF_UNIX" ];
          PrivateUsers = false;
        };
        script = ''
          pass=$(tr -d '\n' < "$CREDENTIALS_DIRECTORY/ari_pass")
          printf '[%s]\ntype = user\nread_only = no\npassword = %s\n' ${lib.escapeShellArg cfg.ariCoach.ariUser} "$pass" \
            > /run/call-coach-asterisk/ari-user.conf
        '';
      };
    })
  ]);
}
