//! Events: everything the services exchange through the relay
//! (docs/contract.md "Events").
//!
//! - [`envelope`]: the rules every event must meet (`type`, `callId`, size),
//!   checked by the relay on ingest, and the RFC 3339 clock it stamps.
//! - [`catalogue`]: one type per known event; producers build these,
//!   consumers decode them with [`Received::parse`].
//!
//! No code outside this module reads an event's fields by name.

mod catalogue;
mod envelope;

pub use catalogue::*;
pub use envelope::*;

#[cfg(test)]
mod examples;
