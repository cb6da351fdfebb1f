//! The tools room: commands that drive the services from outside, never
//! part of a running service.
//!
//! - [`demo`]: `call-coach demo`, the sample call through the whole
//!   pipeline, printed live.
//! - [`simulate`]: `simulate-call`, Asterisk's RTP side (ExternalMedia).
//! - [`bench`]: the load generators (`bench-*`) that print figures.
//! - [`wer`]: `call-coach wer`, transcripts scored against references.
//! - [`nats_cluster`]: a NATS JetStream cluster of real `nats-server`
//!   processes on loopback, for the tests and `bench-relay --nats`.
//! - [`procs`]: the services as child processes (READY on our own notify
//!   socket), for the demo, `bench-e2e` and the integration tests.

pub mod bench;
pub mod demo;
pub mod nats_cluster;
pub mod procs;
pub mod simulate;
pub mod wer;
