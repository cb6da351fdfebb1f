//! The relay's clients, shared by every service and tool that talks to it:
//!
//! - [`publish`]: `POST /event` from a thread of its own, in order, with a
//!   bounded buffer across relay outages (stt, orchestrator, ari-coach).
//! - [`subscribe`]: `GET /ws` with reconnects, a resume cursor and the
//!   relay's `relay.dropped` notice handled (orchestrator, demo, benches).

pub mod publish;
pub mod subscribe;

pub use publish::{PublishStats, Publisher, post_once};
pub use subscribe::{Scope, Subscription};
