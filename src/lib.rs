//! call-coach: real-time coaching for contact-centre agents on Asterisk.
//! The map of this code (what lives where, how data flows, the invariants,
//! and what to touch for a change) is ARCHITECTURE.md at the repository
//! root; the interfaces it keeps to are docs/contract.md.

// Visibility is the promise: `pub` is what the binary, the tools and the
// integration tests use from outside; everything else is `pub(crate)`.

// The services.
pub(crate) mod ari_coach;
pub(crate) mod orchestrator;
pub(crate) mod relay;
pub(crate) mod rtp2ws;
pub(crate) mod stt;

// What they share.
pub mod audio;
pub(crate) mod config;
pub(crate) mod event;
pub mod http;
pub(crate) mod lifecycle;
pub(crate) mod nats;
pub(crate) mod net;
pub(crate) mod relay_client;
pub(crate) mod setting;
pub(crate) mod shutdown;
pub(crate) mod systemd;
pub(crate) mod telemetry;
pub mod text;

// The command line and the tools.
pub mod cli;
pub mod tools;
