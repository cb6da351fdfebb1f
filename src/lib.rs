//! call-coach: real-time coaching for contact-centre agents on Asterisk.
//! The map of this code (what lives where, how data flows, the invariants,
//! and what to touch for a change) is ARCHITECTURE.md at the repository
//! root; the interfaces it keeps to are docs/contract.md.

// The services.
pub mod ari_coach;
pub mod orchestrator;
pub mod relay;
pub mod rtp2ws;
pub mod stt;

// What they share.
pub mod audio;
pub mod config;
pub mod event;
pub mod http;
pub mod lifecycle;
pub mod relay_client;
pub mod setting;
pub(crate) mod shutdown;
pub(crate) mod systemd;
pub mod telemetry;
pub mod text;

// The command line and the tools.
pub mod cli;
pub mod tools;
