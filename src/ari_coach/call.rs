//! One call, in a task of its own: ring the agent, bridge, tap both
//! parties, follow the call, tear everything down when a party leaves.
//!
//! The task reads the ARI events the dispatcher routes to it (by channel
//! id) from a bounded inbox. A failing request degrades this call only:
//! it is logged, published as `call.tap` or `call.ended`, and never touches
//! the other calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::ari::AriEvent;
use super::names;
use super::service::Ctx;
use super::tap::{self, Tap};
use crate::event::{CallEnded, CallStarted, CallTap, Channels, Event, Speaker};

/// How the call came to ari-coach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The customer entered `Stasis(coach)`: ari-coach dials the agent
    /// and owns both legs.
    Inbound,
    /// The dialplan bridged the call itself (queues) and passed both
    /// channels with `Stasis(coach,attach,CUSTOMER,AGENT)`: ari-coach only
    /// taps and never hangs the parties up.
    Attach,
    /// Found up after a reconnect or a restart: tracking resumes (the
    /// flag says whether ari-coach owns the parties).
    Adopted { owned: bool },
}

/// What the dispatcher knows when it starts a call.
pub struct Start {
    pub id: String,
    pub mode: Mode,
    pub customer: String,
    pub agent: Option<String>,
    /// Dial string for the agent (inbound).
    pub agent_dial: String,
    pub caller: String,
    /// Attach: the messenger channel that carried the arguments.
    pub helper: Option<String>,
}

/// What a reconcile saw: every channel and bridge id on the Asterisk.
pub struct Snapshot {
    pub channels: HashSet<String>,
    pub bridges: HashSet<String>,
}

pub enum Msg {
    Event(Arc<AriEvent>),
    Reconcile(Arc<Snapshot>),
}

/// Why the call task stops.
enum End {
    /// The call is over: tear down, publish `call.ended` with this reason.
    Over(String),
    /// ari-coach is stopping: leave the call up for the next run to adopt.
    Shutdown,
}

/// Attempts to build a party's tap again, per party and call, after the
/// first one failed or a working one was lost.
const RETAPS: u8 = 3;
/// Wait before trying again, so that the old tap's last events drain first.
const RETAP_DELAY: Duration = Duration::from_secs(1);

pub struct Call {
    ctx: Arc<Ctx>,
    id: String,
    mode: Mode,
    customer: String,
    agent: Option<String>,
    agent_dial: String,
    agent_endpoint: String,
    caller: String,
    helper: Option<String>,
    answered_at: Option<Instant>,
    /// Index 0 customer, 1 agent (as [`names::SPEAKERS`]).
    taps: [Option<Tap>; 2],
    retap_at: [Option<Instant>; 2],
    retaps_left: [u8; 2],
    /// A lost tap, removed (leg released) just before it is rebuilt.
    lost: [Option<Tap>; 2],
    inbox: mpsc::Receiver<Msg>,
}

/// Where a party's tap is kept: in the order of [`names::SPEAKERS`].
pub(super) fn speaker_index(speaker: Speaker) -> usize {
    usize::from(speaker == Speaker::Agent)
}

/// A leg has left the call (or never will be in it).
fn leaves(kind: &str) -> bool {
    matches!(
        kind,
        "StasisEnd" | "ChannelDestroyed" | "ChannelHangupRequest"
    )
}

impl Call {
    pub fn new(ctx: Arc<Ctx>, start: Start, inbox: mpsc::Receiver<Msg>) -> Self {
        Self {
            ctx,
            id: start.id,
            mode: start.mode,
            customer: start.customer,
            agent_endpoint: start.agent_dial.clone(),
            agent: start.agent,
            agent_dial: start.agent_dial,
            caller: start.caller,
            helper: start.helper,
            answered_at: None,
            taps: [None, None],
            retap_at: [None, None],
            retaps_left: [RETAPS; 2],
            lost: [None, None],
            inbox,
        }
    }

    /// Whether ari-coach hangs up the parties at the end.
    fn owns_parties(&self) -> bool {
        matches!(self.mode, Mode::Inbound | Mode::Adopted { owned: true })
    }

    fn attached(&self) -> bool {
        matches!(self.mode, Mode::Attach | Mode::Adopted { owned: false })
    }

    pub async fn run(mut self) {
        let id = self.id.clone();
        // Every id this call will create is routed before it exists: ARI
        // may send a new channel's StasisStart before answering the request.
        let mut ids = vec![self.customer.clone()];
        ids.extend(self.agent.clone());
        for s in names::SPEAKERS {
            ids.push(names::snoop(&id, s));
            ids.push(names::external_media(&id, s));
        }
        self.ctx.route(&id, &ids);
        let end = match self.mode {
            Mode::Inbound => self.inbound().await,
            Mode::Attach => self.attach().await,
            Mode::Adopted { .. } => self.adopted().await,
        };
        match end {
            End::Over(reason) => self.teardown(&reason).await,
            End::Shutdown => tracing::info!(call = %id, "left up for the next run to adopt"),
        }
        self.ctx.forget(&id);
    }

    async fn inbound(&mut self) -> End {
        let ari = self.ctx.ari.clone();
        let (call, customer) = (self.id.clone(), self.customer.clone());
        if let Err(e) = ari.answer(&customer).await {
            return End::Over(if e.is_gone() {
                "customer-hangup".into()
            } else {
                format!("error: answering the caller failed: {e}")
            });
        }
        let bridge = names::call_bridge(&call);
        let bridged = match ari.create_bridge(&bridge, "call").await {
            Ok(()) => ari.add_channels(&bridge, &[&customer]).await,
            Err(e) => Err(e),
        };
        if let Err(e) = bridged {
            return End::Over(format!("error: creating the call bridge failed: {e}"));
        }
        let agent = names::agent(&call);
        self.ctx.route(&call, std::slice::from_ref(&agent));
        self.agent = Some(agent.clone());
        let timeout = self.ctx.settings.agent_timeout_secs;
        tracing::info!(call, caller = %self.caller, agent = %self.agent_dial, "ringing the agent");
        if let Err(e) = ari
            .originate(
                &self.agent_dial,
                &agent,
                &format!("agent,{call}"),
                &self.caller,
                timeout,
            )
            .await
        {
            tracing::warn!(call, "dialling the agent failed: {e}");
            return self.agent_failed("agent-unavailable").await;
        }
        // Asterisk ends the dial after `timeout`; this is only a backstop.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout + 10);
        let mut dial_status: Option<String> = None;
        loop {
            let msg = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return End::Shutdown,
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = ari.hangup(&agent).await;
                    return self.agent_failed("agent-no-answer").await;
                }
                m = self.inbox.recv() => m,
            };
            let Some(msg) = msg else { return End::Shutdown };
            match msg {
                Msg::Event(ev) => {
                    let kind = ev.kind.as_str();
                    let channel = ev.channel_id();
                    if kind == "Dial" && ev.peer_id.as_deref() == Some(&agent) {
                        dial_status = ev.dial_status.clone();
                        continue;
                    }
                    if channel == Some(&customer) && leaves(kind) {
                        let _ = ari.hangup(&agent).await;
                        return End::Over("customer-abandoned".into());
                    }
                    if channel == Some(&agent) {
                        if kind == "StasisStart" {
                            break;
                        }
                        if leaves(kind) {
                            let reason = failure_reason(dial_status.as_deref(), ev.cause);
                            return self.agent_failed(reason).await;
                        }
                    }
                }
                Msg::Reconcile(snap) => {
                    if !snap.channels.contains(&customer) {
                        let _ = ari.hangup(&agent).await;
                        return End::Over("customer-abandoned".into());
                    }
                    if !snap.channels.contains(&agent) {
                        return self.agent_failed("agent-no-answer").await;
                    }
                }
            }
        }
        if let Err(e) = ari.add_channels(&bridge, &[&agent]).await {
            return End::Over(format!("error: bridging the agent failed: {e}"));
        }
        self.answered_at = Some(Instant::now());
        self.publish_started();
        self.tap_all().await;
        self.in_call().await
    }

    /// The agent did not answer: say so to the caller if a sound is set,
    /// then end the call.
    async fn agent_failed(&mut self, reason: &str) -> End {
        tracing::info!(call = %self.id, reason, "the agent did not take the call");
        let Some(media) = self.ctx.settings.unavailable_sound.clone() else {
            return End::Over(reason.into());
        };
        let playback = format!("{}-unavailable", self.id);
        if let Err(e) = self.ctx.ari.play(&self.customer, &media, &playback).await {
            tracing::warn!(call = %self.id, "playing {media} failed: {e}");
            return End::Over(reason.into());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let msg = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return End::Over(reason.into()),
                _ = tokio::time::sleep_until(deadline) => return End::Over(reason.into()),
                m = self.inbox.recv() => m,
            };
            match msg {
                None => return End::Over(reason.into()),
                Some(Msg::Event(ev)) => {
                    let kind = ev.kind.as_str();
                    let done =
                        kind == "PlaybackFinished" && ev.playback_id.as_deref() == Some(&playback);
                    let gone = leaves(kind) && ev.channel_id() == Some(&self.customer);
                    if done || gone {
                        return End::Over(reason.into());
                    }
                }
                Some(Msg::Reconcile(snap)) => {
                    if !snap.channels.contains(&self.customer) {
                        return End::Over(reason.into());
                    }
                }
            }
        }
    }

    async fn attach(&mut self) -> End {
        let ari = self.ctx.ari.clone();
        let call = self.id.clone();
        if let Some(helper) = self.helper.take()
            && let Err(e) = ari.hangup(&helper).await
        {
            tracing::warn!(call, "hanging up the attach messenger {helper} failed: {e}");
        }
        let Some(agent) = self.agent.clone() else {
            return End::Over("error: attach needs the customer and agent channel ids".into());
        };
        if let Err(e) = ari.subscribe(&[&self.customer, &agent]).await {
            tracing::warn!(call, "subscribing to the attached channels failed: {e}");
        }
        let customer = match ari.channel(&self.customer).await {
            Ok(c) => c,
            Err(e) => return End::Over(format!("error: attach: customer channel: {e}")),
        };
        match ari.channel(&agent).await {
            Ok(c) => self.agent_endpoint = c.endpoint(),
            Err(e) => return End::Over(format!("error: attach: agent channel: {e}")),
        }
        self.caller = customer.caller_id();
        self.answered_at = Some(Instant::now());
        self.publish_started();
        self.tap_all().await;
        self.in_call().await
    }

    async fn adopted(&mut self) -> End {
        let call = self.id.clone();
        if self.attached()
            && let Some(agent) = &self.agent
            && let Err(e) = self.ctx.ari.subscribe(&[&self.customer, agent]).await
        {
            tracing::warn!(call, "subscribing to the adopted channels failed: {e}");
        }
        // The old taps may be half gone: replace both.
        for s in names::SPEAKERS {
            tap::remove_ari_pieces(&self.ctx.ari, &call, s).await;
        }
        self.ctx.release_legs_of(&call).await;
        self.answered_at = Some(Instant::now());
        tracing::info!(call, "adopted a call that is still up");
        self.tap_all().await;
        self.in_call().await
    }

    fn publish_started(&self) {
        let mode = match self.mode {
            Mode::Inbound => "inbound",
            Mode::Attach => "attach",
            Mode::Adopted { .. } => "adopted",
        };
        self.ctx.stats.call_started(mode);
        self.ctx.publish(Event::CallStarted(CallStarted {
            call_id: self.id.clone(),
            agent: self.agent_endpoint.clone(),
            caller: self.caller.clone(),
            direction: "inbound".into(),
            mode: Some(mode.into()),
            channels: Some(Channels {
                customer: self.customer.clone(),
                agent: self.agent.clone(),
            }),
        }));
    }

    fn snooped(&self, speaker: Speaker) -> Option<String> {
        if speaker == Speaker::Agent {
            self.agent.clone()
        } else {
            Some(self.customer.clone())
        }
    }

    /// Taps both parties; a party whose first tap failed is tried again
    /// later, from the same budget as a tap lost mid-call.
    async fn tap_all(&mut self) {
        let (a, b) = tokio::join!(
            self.make_tap(Speaker::Customer),
            self.make_tap(Speaker::Agent)
        );
        self.taps = [a, b];
        for s in names::SPEAKERS {
            self.retry_if_untapped(s);
        }
    }

    /// Schedules another attempt for a party left without a tap, while
    /// its budget lasts.
    fn retry_if_untapped(&mut self, speaker: Speaker) {
        let i = speaker_index(speaker);
        if self.taps[i].is_none() && self.snooped(speaker).is_some() && self.retaps_left[i] > 0 {
            self.retap_at[i] = Some(Instant::now() + RETAP_DELAY);
        }
    }

    async fn make_tap(&self, speaker: Speaker) -> Option<Tap> {
        let snooped = self.snooped(speaker)?;
        let ctx = &self.ctx;
        match Tap::create(&ctx.ari, &ctx.rtp2ws, &ctx.tap, &self.id, speaker, &snooped).await {
            Ok(t) => Some(t),
            Err(e) => {
                ctx.stats.taps_failed.inc();
                let left = self.retaps_left[speaker_index(speaker)];
                if left > 0 {
                    tracing::warn!(call = %self.id, %speaker, "tapping failed; trying again ({left} attempts left): {e}");
                } else {
                    tracing::warn!(call = %self.id, %speaker, "tapping failed; the call goes on without this party's transcript: {e}");
                }
                ctx.publish(Event::CallTap(CallTap {
                    call_id: self.id.clone(),
                    speaker,
                    ok: false,
                    error: Some(e.to_string()),
                    restored: None,
                }));
                None
            }
        }
    }

    /// Follows the connected call until a party leaves.
    async fn in_call(&mut self) -> End {
        let agent = self.agent.clone().unwrap_or_default();
        loop {
            let next_retap = self.retap_at.iter().flatten().min().copied();
            let msg = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return End::Shutdown,
                _ = sleep_until_opt(next_retap) => {
                    self.retap_due().await;
                    continue;
                }
                m = self.inbox.recv() => m,
            };
            let Some(msg) = msg else { return End::Shutdown };
            match msg {
                Msg::Event(ev) => {
                    let kind = ev.kind.as_str();
                    let Some(channel) = ev.channel_id() else {
                        continue;
                    };
                    if !leaves(kind) {
                        continue;
                    }
                    if channel == self.customer {
                        return End::Over("customer-hangup".into());
                    }
                    if channel == agent {
                        return End::Over("agent-hangup".into());
                    }
                    if let Some((_, names::Kind::Snoop(s) | names::Kind::ExternalMedia(s))) =
                        names::parse(channel)
                    {
                        let name = ev.channel.as_ref().map_or("", |c| c.name.as_str());
                        // Events of a tap already replaced are old news.
                        if self.taps[speaker_index(s)]
                            .as_ref()
                            .is_some_and(|t| t.owns(name))
                        {
                            self.tap_lost(s, &format!("{channel} ended ({kind})"));
                        }
                    }
                }
                Msg::Reconcile(snap) => {
                    let (c, a) = (
                        snap.channels.contains(&self.customer),
                        snap.channels.contains(&agent),
                    );
                    match (c, a) {
                        (false, false) => return End::Over("ended-while-disconnected".into()),
                        (false, true) => return End::Over("customer-hangup".into()),
                        (true, false) => return End::Over("agent-hangup".into()),
                        (true, true) => {}
                    }
                    for s in names::SPEAKERS {
                        let whole = snap.channels.contains(&names::snoop(&self.id, s))
                            && snap.channels.contains(&names::external_media(&self.id, s))
                            && snap.bridges.contains(&names::tap_bridge(&self.id, s));
                        if self.taps[speaker_index(s)].is_some() && !whole {
                            self.tap_lost(s, "missing after reconnect");
                        }
                    }
                }
            }
        }
    }

    fn tap_lost(&mut self, speaker: Speaker, why: &str) {
        let i = speaker_index(speaker);
        let Some(tap) = self.taps[i].take() else {
            return;
        };
        tracing::warn!(call = %self.id, %speaker, "tap lost: {why}");
        self.retap_at[i] = Some(Instant::now() + RETAP_DELAY);
        self.lost[i] = Some(tap);
    }

    async fn retap_due(&mut self) {
        let now = Instant::now();
        for (i, s) in names::SPEAKERS.into_iter().enumerate() {
            if self.retap_at[i].is_none_or(|t| t > now) {
                continue;
            }
            self.retap_at[i] = None;
            if let Some(mut old) = self.lost[i].take() {
                old.remove(&self.ctx.ari, &self.ctx.rtp2ws, &self.id).await;
            }
            if self.retaps_left[i] == 0 {
                continue;
            }
            self.retaps_left[i] -= 1;
            self.taps[i] = self.make_tap(s).await;
            if self.taps[i].is_some() {
                self.ctx.stats.taps_restored.inc();
                self.ctx.publish(Event::CallTap(CallTap {
                    call_id: self.id.clone(),
                    speaker: s,
                    ok: true,
                    error: None,
                    restored: Some(true),
                }));
            } else {
                self.retry_if_untapped(s);
            }
        }
    }

    /// Publishes `call.ended` at once (Asterisk said the call is over; the
    /// last words still being transcribed follow it, and a SIGTERM now
    /// still flushes it), then removes everything the call created (gone
    /// pieces count as removed) and releases the legs, which waits for
    /// rtp2ws to hand stt the last audio.
    async fn teardown(&mut self, reason: &str) {
        let ari = self.ctx.ari.clone();
        let call = self.id.clone();
        tracing::info!(call, reason, "call ended");
        self.ctx.stats.call_ended(reason);
        let answered = self.answered_at.is_some();
        self.ctx.publish(Event::CallEnded(CallEnded {
            answered: Some(answered),
            duration_ms: self.answered_at.map(|at| at.elapsed().as_millis() as u64),
            caller: (!answered).then(|| self.caller.clone()),
            agent: (!answered).then(|| self.agent_endpoint.clone()),
            ..CallEnded::new(call.clone(), reason)
        }));
        if self.owns_parties() {
            let agent = self.agent.clone().unwrap_or_else(|| names::agent(&call));
            let (a, b) = tokio::join!(ari.hangup(&self.customer), ari.hangup(&agent));
            for r in [a, b] {
                if let Err(e) = r {
                    tracing::warn!(call, "hanging up a party failed: {e}");
                }
            }
            if let Err(e) = ari.destroy_bridge(&names::call_bridge(&call)).await {
                tracing::warn!(call, "destroying the call bridge failed: {e}");
            }
        }
        let mut removals = Vec::new();
        for (i, s) in names::SPEAKERS.into_iter().enumerate() {
            let tap = self.taps[i].take().or_else(|| self.lost[i].take());
            let (ari, rtp2ws, call) = (ari.clone(), self.ctx.rtp2ws.clone(), call.clone());
            // Without a tap, its pieces are still removed by name.
            removals.push(async move {
                match tap {
                    Some(mut tap) => tap.remove(&ari, &rtp2ws, &call).await,
                    None => tap::remove_ari_pieces(&ari, &call, s).await,
                }
            });
        }
        futures_util::future::join_all(removals).await;
        if self.attached()
            && let Some(agent) = &self.agent
            && let Err(e) = ari.unsubscribe(&[&self.customer, agent]).await
        {
            tracing::warn!(call, "unsubscribing failed: {e}");
        }
    }
}

/// The `call.ended` reason for an agent leg that went away unanswered.
fn failure_reason(dial_status: Option<&str>, cause: Option<i64>) -> &'static str {
    match (dial_status, cause) {
        (Some("BUSY"), _) | (_, Some(17)) => "agent-busy",
        (Some("CHANUNAVAIL" | "CONGESTION"), _) | (_, Some(3 | 20 | 27 | 34 | 38)) => {
            "agent-unavailable"
        }
        (_, Some(21)) => "agent-rejected",
        _ => "agent-no-answer",
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons() {
        assert_eq!(failure_reason(Some("BUSY"), Some(16)), "agent-busy");
        assert_eq!(failure_reason(None, Some(17)), "agent-busy");
        assert_eq!(
            failure_reason(Some("NOANSWER"), Some(16)),
            "agent-no-answer"
        );
        assert_eq!(
            failure_reason(Some("CHANUNAVAIL"), None),
            "agent-unavailable"
        );
        assert_eq!(failure_reason(None, Some(21)), "agent-rejected");
        assert_eq!(failure_reason(None, None), "agent-no-answer");
    }
}
