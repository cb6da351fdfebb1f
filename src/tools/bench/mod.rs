//! Load generators: commands that drive running services and print figures.

pub mod e2e;
pub mod history;
pub mod orchestrator;
pub mod relay;
pub mod rtp2ws;
pub mod stt;
