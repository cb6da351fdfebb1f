//! Load generators: commands that drive running services and print figures.

pub mod e2e;
pub mod history;
pub mod orchestrator;
pub mod relay;
pub mod rtp2ws;
pub mod stt;

/// The `q` quantile of `v` (nearest rank), sorting it in place; NaN when
/// it is empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}
