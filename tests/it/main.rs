//! Integration tests: the real binary on loopback, real HTTP and websocket
//! clients, real files on disk.

mod ari_coach;
mod ari_sim;
mod cli;
mod demo;
mod history;
mod layout;
mod model;
mod nix;
mod orchestrator;
mod orchestrator_group;
mod redaction;
mod relay;
mod relay_auth;
mod relay_nats;
mod rtp2ws;
mod stt;
mod util;
mod web_ui;
