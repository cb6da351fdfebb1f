//! Past calls: what the SQLite store indexes beside its events, and the
//! questions the relay answers from it.
//!
//! - [`index`]: the tables (FTS5 over final transcripts, accents folded;
//!   rules fired, checklist, summary per call), filled in the events'
//!   own transaction, erased and purged with them.
//! - [`query`]: `GET /history` (filters, search, cursor) and
//!   `GET /scorecards` (per agent), their query strings checked.
//! - [`export`]: a call as text, JSON or WebVTT.
//! - [`archive`]: the same tables for a JetStream relay, copied from the
//!   stream by its tail (`relay.nats.archive`).
//!
//! Every event was redacted before it was stored ([`super::redact`]), so
//! everything here is too.

pub mod archive;
pub mod export;
pub mod index;
pub mod query;
