//! Tapping one party of a call: an rtp2ws leg (`POST /streams`), a snoop on
//! the party's channel (`spy=in`: that party's own voice), an ExternalMedia
//! channel sending RTP to the leg's port, and a bridge joining the two.
//! Every piece is undone on failure and on teardown, gone pieces counting
//! as removed, so that both can run any number of times.
//!
//! Asterisk answers `snoop` and `externalMedia` before the new channel's
//! `StasisStart` (observed on 23.4.1), and refuses to bridge a channel
//! that is not in the app yet with 422. So the bridge is joined with
//! retries until both channels are in Stasis, for at most [`STASIS_WAIT`].
//! The other requests ari-coach makes on a channel right after creating
//! it do not race: the agent leg is bridged only after its `StasisStart`
//! (`call::Call::inbound`), and the customer is answered and bridged on
//! its own `StasisStart`.

use std::sync::Arc;
use std::time::Duration;

use super::ari::{Ari, AriResult};
use super::names;
use crate::event::Speaker;
use crate::rtp2ws::client::Rtp2ws;

/// How long a new snoop and ExternalMedia channel may take to enter the
/// app before the tap counts as failed.
pub const STASIS_WAIT: Duration = Duration::from_secs(5);

/// How taps are made (from the settings).
#[derive(Clone)]
pub struct TapConfig {
    /// ExternalMedia format (`slin16`, `slin`, `ulaw`, `alaw`).
    pub format: String,
    /// Host Asterisk sends RTP to: where rtp2ws's UDP ports listen.
    pub rtp_host: String,
    /// Compatibility mode: fixed ports `base_port+1` (agent) and
    /// `base_port+2` (customer) instead of asking rtp2ws for legs.
    pub fixed_ports: Option<u16>,
}

/// One party's tap, as far as it got.
#[derive(Debug, Clone)]
pub struct Tap {
    pub speaker: Speaker,
    /// The channel listened to.
    pub snooped: String,
    pub leg: Option<String>,
    /// Names Asterisk gave this tap's snoop and ExternalMedia channels
    /// (`Snoop/...-0000001f`): unique per instance, unlike the ids, which
    /// a rebuilt tap reuses. Events of an earlier instance do not match.
    pub channel_names: Vec<String>,
}

impl Tap {
    /// Builds the whole tap; on failure removes what was built and says why.
    pub async fn create(
        ari: &Arc<Ari>,
        rtp2ws: &Arc<Rtp2ws>,
        cfg: &TapConfig,
        call: &str,
        speaker: Speaker,
        snooped: &str,
    ) -> Result<Tap, String> {
        let mut tap = Tap {
            speaker,
            snooped: snooped.to_owned(),
            leg: None,
            channel_names: Vec::new(),
        };
        match tap.build(ari, rtp2ws, cfg, call).await {
            Ok(()) => Ok(tap),
            Err(e) => {
                tap.remove(ari, rtp2ws, call).await;
                Err(e)
            }
        }
    }

    async fn build(
        &mut self,
        ari: &Arc<Ari>,
        rtp2ws: &Arc<Rtp2ws>,
        cfg: &TapConfig,
        call: &str,
    ) -> Result<(), String> {
        let port = match cfg.fixed_ports {
            Some(base) => base + if self.speaker == Speaker::Agent { 1 } else { 2 },
            None => {
                let (leg, port) = rtp2ws
                    .open(call, self.speaker.as_str(), &cfg.format)
                    .await?;
                self.leg = Some(leg);
                port
            }
        };
        let snoop = names::snoop(call, self.speaker);
        let em = names::external_media(call, self.speaker);
        let bridge = names::tap_bridge(call, self.speaker);
        let snooping = ari
            .snoop(
                &self.snooped,
                &snoop,
                &format!("snoop,{call},{}", self.speaker),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.channel_names.push(snooping.name);
        let media = ari
            .external_media(&em, &format!("{}:{port}", cfg.rtp_host), &cfg.format)
            .await
            .map_err(|e| e.to_string())?;
        self.channel_names.push(media.name);
        ari.create_bridge(&bridge, &names::tap_bridge_name(&self.snooped))
            .await
            .map_err(|e| e.to_string())?;
        add_once_in_stasis(ari, &bridge, &[&snoop, &em], STASIS_WAIT)
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether an event's channel is this instance's snoop or ExternalMedia.
    pub fn owns(&self, channel_name: &str) -> bool {
        self.channel_names.iter().any(|n| n == channel_name)
    }

    /// Hangs up the snoop and the ExternalMedia channel, destroys the tap
    /// bridge and releases the leg. Failures are logged; what is left is
    /// found by the next reconcile.
    pub async fn remove(&mut self, ari: &Arc<Ari>, rtp2ws: &Arc<Rtp2ws>, call: &str) {
        remove_ari_pieces(ari, call, self.speaker).await;
        if let Some(leg) = self.leg.take()
            && let Err(e) = rtp2ws.close(&leg).await
        {
            tracing::warn!(call, leg, "releasing the rtp2ws leg failed: {e}");
        }
    }
}

/// `addChannel`, retried while Asterisk answers 422 (a channel not in
/// Stasis yet), backing off from 20 ms to 500 ms, for at most `wait`.
async fn add_once_in_stasis(
    ari: &Arc<Ari>,
    bridge: &str,
    channels: &[&str],
    wait: Duration,
) -> AriResult<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    loop {
        match ari.add_channels(bridge, channels).await {
            Err(e) if e.not_in_stasis() && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(bridge, "not in Stasis yet; bridging again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            r => return r,
        }
    }
}

/// The ARI half of a tap's removal, by name alone (also for taps left by an
/// earlier run).
pub async fn remove_ari_pieces(ari: &Arc<Ari>, call: &str, speaker: Speaker) {
    let (snoop, em, bridge) = (
        names::snoop(call, speaker),
        names::external_media(call, speaker),
        names::tap_bridge(call, speaker),
    );
    let (a, b, c) = tokio::join!(
        ari.hangup(&snoop),
        ari.hangup(&em),
        ari.destroy_bridge(&bridge)
    );
    for (what, r) in [(snoop, a), (em, b), (bridge, c)] {
        if let Err(e) = r {
            tracing::warn!(call, "removing {what} failed: {e}");
        }
    }
}
