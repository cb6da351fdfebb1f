//! Load generators: commands that drive running services and print figures.

pub mod relay;
pub mod stt;
