//! The ari-coach service: the dispatcher that routes each ARI event to its
//! call's task (by channel id), starts calls, and reconciles with what
//! Asterisk really has after every (re)connect.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Settings;
use super::ari::{Ari, AriError, AriEvent};
use super::call::{Call, Mode, Msg, Snapshot, Start, speaker_index};
use super::events::{self, Incoming};
use super::names::{self, Kind};
use super::status::Stats;
use super::tap::{self, TapConfig};
use crate::event::{CallEnded, Event};
use crate::relay_client::{PublishStats, Publisher};
use crate::rtp2ws::client::Rtp2ws;

/// Events a call may have waiting; ari-coach forwards only the few kinds
/// a call acts on, so a full inbox means a call task is stuck.
const INBOX: usize = 256;

#[derive(Default)]
struct Table {
    /// Channel id -> call id.
    routes: HashMap<String, String>,
    calls: HashMap<String, mpsc::Sender<Msg>>,
}

/// What every call task shares.
pub struct Ctx {
    pub ari: Arc<Ari>,
    pub rtp2ws: Arc<Rtp2ws>,
    pub tap: TapConfig,
    pub settings: Settings,
    publisher: Arc<Publisher>,
    table: Mutex<Table>,
    pub shutdown: CancellationToken,
    pub stats: Stats,
}

impl Ctx {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes these channel ids' events to `call`.
    pub fn route(&self, call: &str, channels: &[String]) {
        let mut t = self.table();
        for c in channels {
            t.routes.insert(c.clone(), call.to_owned());
        }
    }

    /// The call is over: its channels are no longer routed.
    pub fn forget(&self, call: &str) {
        let mut t = self.table();
        t.calls.remove(call);
        t.routes.retain(|_, c| c != call);
    }

    pub fn publish(&self, event: Event) {
        self.publisher.send(event);
    }

    /// Releases every rtp2ws leg of `call` (legs of an earlier run).
    pub async fn release_legs_of(&self, call: &str) {
        match self.rtp2ws.legs().await {
            Ok(legs) => {
                for (leg, c) in legs {
                    if c == call
                        && let Err(e) = self.rtp2ws.close(&leg).await
                    {
                        tracing::warn!(call, "releasing leg {leg} failed: {e}");
                    }
                }
            }
            Err(e) => tracing::warn!(call, "listing rtp2ws legs failed: {e}"),
        }
    }

    pub fn active(&self) -> usize {
        self.table().calls.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AriCoachError {
    #[error(transparent)]
    Bind(#[from] crate::lifecycle::BindError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl crate::lifecycle::ExitStatus for AriCoachError {
    fn exit_code(&self) -> u8 {
        match self {
            AriCoachError::Bind(_) => crate::lifecycle::EXIT_USAGE,
            AriCoachError::Io(_) => 1,
        }
    }
}

/// Runs ari-coach until `shutdown`. Calls still up are left up for the
/// next run to adopt.
pub async fn serve(
    settings: &super::Settings,
    shutdown: CancellationToken,
) -> Result<(), AriCoachError> {
    let s = settings.clone();
    let ari = Ari::new(&s.ari_url, &s.ari_user, s.ari_pass.as_ref(), &s.ari_app);
    let publish_stats = Arc::new(PublishStats::default());
    let (publisher, publisher_thread) = Publisher::start(
        s.relay_event.clone(),
        s.relay_token.clone(),
        10_000,
        publish_stats.clone(),
    );
    let ctx = Arc::new(Ctx {
        ari: ari.clone(),
        rtp2ws: Rtp2ws::new(&format!("http://{}", s.rtp2ws_control)),
        tap: TapConfig {
            format: s.format.clone(),
            rtp_host: s.rtp_host.clone(),
            fixed_ports: s.fixed_ports.then_some(s.base_port),
        },
        settings: s.clone(),
        publisher: publisher.clone(),
        table: Mutex::default(),
        shutdown: shutdown.clone(),
        stats: Stats {
            publish: publish_stats,
            ..Default::default()
        },
    });
    let listener =
        crate::lifecycle::listen(s.listen, "ari_coach.listen", "CALL_COACH_ARI_COACH__LISTEN")
            .await?;
    let status_url = format!("http://{}", listener.local_addr()?);
    let status_ctx = ctx.clone();
    let status_task = tokio::spawn(crate::http::serve(
        listener,
        64,
        shutdown.clone(),
        move |req| super::status::handle(status_ctx.clone(), req),
    ));
    let (tx, mut rx) = mpsc::channel(4096);
    let events_task = tokio::spawn(events::run(ari.clone(), tx, shutdown.clone()));
    tracing::info!(ari = %s.ari_url, app = %s.ari_app, agent = %s.agent_dial, "ari-coach starting");
    tracing::info!(status = %status_url, "ari-coach status endpoint");
    // The last word is the status URL (as every service's READY status).
    crate::lifecycle::ready(
        &format!("ari-coach for {}, status on {status_url}", s.ari_url),
        &shutdown,
        || true,
    );
    let mut was_connected = false;
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = rx.recv() => i,
        };
        match incoming {
            None => break,
            Some(Incoming::Connected) => {
                tracing::info!(app = %s.ari_app, "ARI events connected: the app is registered");
                was_connected = true;
                ctx.stats.connected.store(true, Ordering::Relaxed);
                ctx.stats.reconnects.inc();
                if let Err(e) = reconcile(&ctx).await {
                    tracing::warn!("reconciling with Asterisk failed: {e}");
                }
                crate::systemd::notify(&format!(
                    "STATUS=connected to {}, {} calls",
                    s.ari_url,
                    ctx.active()
                ));
            }
            Some(Incoming::Disconnected { reason }) => {
                if was_connected {
                    tracing::warn!("ARI events lost: {reason}; reconnecting");
                } else {
                    tracing::warn!("ARI not reachable: {reason}; retrying");
                }
                was_connected = false;
                ctx.stats.connected.store(false, Ordering::Relaxed);
                crate::systemd::notify(&format!("STATUS=waiting for Asterisk: {reason}"));
            }
            Some(Incoming::Event(ev)) => dispatch(&ctx, *ev).await,
        }
    }
    let _ = events_task.await;
    let _ = status_task.await;
    // Let the call tasks see the shutdown and stop.
    for _ in 0..50 {
        if ctx.active() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    publisher.close();
    let _ = tokio::task::spawn_blocking(move || publisher_thread.join()).await;
    tracing::info!("ari-coach stopped");
    Ok(())
}

async fn dispatch(ctx: &Arc<Ctx>, ev: AriEvent) {
    ctx.stats.events.inc();
    let kind = ev.kind.clone();
    if !matches!(
        kind.as_str(),
        "StasisStart"
            | "StasisEnd"
            | "ChannelDestroyed"
            | "ChannelHangupRequest"
            | "Dial"
            | "PlaybackFinished"
    ) {
        return;
    }
    let Some(channel) = ev.route().map(str::to_owned) else {
        return;
    };
    let target = {
        let t = ctx.table();
        t.routes
            .get(&channel)
            .and_then(|call| t.calls.get(call).map(|tx| (call.clone(), tx.clone())))
    };
    if let Some((call, tx)) = target {
        if tx.try_send(Msg::Event(Arc::new(ev))).is_err() {
            ctx.stats.inbox_dropped.inc();
            tracing::error!(call, kind, "call inbox full: event dropped");
        }
        return;
    }
    if kind == "StasisStart" {
        start_call(ctx, &channel, &ev).await;
    }
}

/// A channel entered the app and belongs to no call yet.
async fn start_call(ctx: &Arc<Ctx>, channel: &str, ev: &AriEvent) {
    let args = &ev.args;
    let first = args.first().map(String::as_str).unwrap_or_default();
    if names::parse(channel).is_some() || matches!(first, "agent" | "snoop") {
        // A leg of a call that is already over: not ours to keep.
        tracing::info!(channel, "a leftover leg entered the app; hanging it up");
        let _ = ctx.ari.hangup(channel).await;
        return;
    }
    if ctx.active() >= ctx.settings.max_calls {
        tracing::warn!(
            channel,
            max_calls = ctx.settings.max_calls,
            "too many calls: sending this one back to the dialplan uncoached"
        );
        let _ = ctx.ari.continue_in_dialplan(channel).await;
        return;
    }
    let info = ev.channel.clone().unwrap_or_default();
    let start = if first == "attach" {
        let (Some(customer), Some(agent)) = (args.get(1), args.get(2)) else {
            tracing::warn!(
                channel,
                ?args,
                "Stasis(coach,attach,...) needs CUSTOMER_ID,AGENT_ID"
            );
            let _ = ctx.ari.hangup(channel).await;
            return;
        };
        Start {
            id: names::call_id_for(&ctx.settings.call_id_prefix, customer),
            mode: Mode::Attach,
            customer: customer.clone(),
            agent: Some(agent.clone()),
            agent_dial: String::new(),
            caller: String::new(),
            helper: Some(channel.to_owned()),
        }
    } else {
        let agent_dial = args
            .iter()
            .find_map(|a| a.strip_prefix("agent="))
            .filter(|d| !d.is_empty())
            .unwrap_or(&ctx.settings.agent_dial)
            .to_owned();
        Start {
            id: names::call_id_for(&ctx.settings.call_id_prefix, channel),
            mode: Mode::Inbound,
            customer: channel.to_owned(),
            agent: None,
            agent_dial,
            caller: info.caller_id(),
            helper: None,
        }
    };
    spawn(ctx, start);
}

fn spawn(ctx: &Arc<Ctx>, start: Start) {
    let (tx, rx) = mpsc::channel(INBOX);
    {
        let mut t = ctx.table();
        if t.calls.contains_key(&start.id) {
            tracing::warn!(call = %start.id, "already being coached");
            return;
        }
        t.calls.insert(start.id.clone(), tx);
    }
    tokio::spawn(Call::new(ctx.clone(), start, rx).run());
}

/// Resumes tracking a call an earlier run left up.
fn adopt(ctx: &Arc<Ctx>, call: &str, customer: String, agent: String, owned: bool) {
    spawn(
        ctx,
        Start {
            id: call.to_owned(),
            mode: Mode::Adopted { owned },
            customer,
            agent: Some(agent),
            agent_dial: String::new(),
            caller: String::new(),
            helper: None,
        },
    );
}

/// After every (re)connect: tells each call what Asterisk has now (calls
/// whose parties left meanwhile end, lost taps are rebuilt), adopts calls
/// left up by an earlier run, and removes what belongs to no call.
async fn reconcile(ctx: &Arc<Ctx>) -> Result<(), AriError> {
    let channels = ctx.ari.channels().await?;
    let bridges = ctx.ari.bridges().await?;
    let snapshot = Arc::new(Snapshot {
        channels: channels.iter().map(|c| c.id.clone()).collect(),
        bridges: bridges.iter().map(|b| b.id.clone()).collect(),
    });
    let tracked: Vec<(String, mpsc::Sender<Msg>)> = ctx
        .table()
        .calls
        .iter()
        .map(|(id, tx)| (id.clone(), tx.clone()))
        .collect();
    for (_, tx) in &tracked {
        let _ = tx.try_send(Msg::Reconcile(snapshot.clone()));
    }
    let mut keep: HashSet<String> = tracked.into_iter().map(|(id, _)| id).collect();

    // Calls an earlier run left: a call bridge holding both parties, or
    // (attach) two tap bridges whose snooped channels are both up.
    let mut lost: HashSet<String> = HashSet::new();
    let mut snooped: HashMap<String, [Option<String>; 2]> = HashMap::new();
    for b in &bridges {
        match names::parse(&b.id) {
            Some((call, Kind::CallBridge)) if !keep.contains(call) => {
                let agent = names::agent(call);
                let customer = b.channels.iter().find(|c| **c != agent);
                match customer {
                    Some(customer) if b.channels.contains(&agent) => {
                        keep.insert(call.to_owned());
                        adopt(ctx, call, customer.clone(), agent, true);
                    }
                    _ => {
                        lost.insert(call.to_owned());
                    }
                }
            }
            Some((call, Kind::TapBridge(s))) if !keep.contains(call) => {
                if let Some(ch) = names::snooped_of(&b.name) {
                    snooped.entry(call.to_owned()).or_default()[speaker_index(s)] =
                        Some(ch.to_owned());
                }
            }
            _ => {}
        }
    }
    for (call, [customer, agent]) in snooped {
        if keep.contains(&call)
            || lost.contains(&call)
            || snapshot.bridges.contains(&names::call_bridge(&call))
        {
            continue;
        }
        match (customer, agent) {
            (Some(c), Some(a))
                if snapshot.channels.contains(&c) && snapshot.channels.contains(&a) =>
            {
                keep.insert(call.clone());
                adopt(ctx, &call, c, a, false);
            }
            _ => {
                lost.insert(call);
            }
        }
    }

    // Everything of ours that belongs to no live call goes.
    let mut removed = 0usize;
    for c in &channels {
        if let Some((call, _)) = names::parse(&c.id)
            && !keep.contains(call)
        {
            lost.insert(call.to_owned());
            if ctx.ari.hangup(&c.id).await.is_ok() {
                removed += 1;
            }
        }
    }
    for b in &bridges {
        if let Some((call, kind)) = names::parse(&b.id)
            && !keep.contains(call)
        {
            if kind == Kind::CallBridge {
                // The customer of a call whose agent is gone.
                for ch in &b.channels {
                    let _ = ctx.ari.hangup(ch).await;
                }
            }
            if ctx.ari.destroy_bridge(&b.id).await.is_ok() {
                removed += 1;
            }
        }
    }
    for call in &lost {
        for s in names::SPEAKERS {
            tap::remove_ari_pieces(&ctx.ari, call, s).await;
        }
        ctx.release_legs_of(call).await;
        ctx.stats.call_ended("ended-while-disconnected");
        ctx.publish(Event::CallEnded(CallEnded::new(
            call.clone(),
            "ended-while-disconnected",
        )));
    }
    tracing::info!(
        tracked = keep.len(),
        lost = lost.len(),
        removed,
        "reconciled with Asterisk"
    );
    Ok(())
}
