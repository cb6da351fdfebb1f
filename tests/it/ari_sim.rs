//! An Asterisk ARI simulator for the ari-coach tests: Asterisk is not
//! packaged for these machines. It implements the REST requests ari-coach
//! makes and the events websocket as the ARI reference
//! (`rest-api/api-docs/*.json`) documents them and as a real Asterisk
//! 23.4.1 was observed to behave (`../shared/notes/asterisk-ari.md` and its
//! recordings):
//!
//! - the app must hold its events socket before a channel can enter it;
//! - `StasisStart` carries the `appArgs`; no `BridgeCreated` is sent;
//! - a hangup requested by the app: `ChannelHangupRequest {cause:32,
//!   soft:true}`, `ChannelLeftBridge`, `StasisEnd`, then `ChannelDestroyed`
//!   for channels the app created; channels from the dialplan and snoops
//!   get no `ChannelDestroyed`; nothing else is torn down;
//! - ExternalMedia bridged with a snoop streams RTP to `external_host`:
//!   20 ms packets, random SSRC and first sequence, timestamps from one
//!   packet's samples up, slin16 big-endian as payload type 118, 50
//!   packets/s even in silence, the party's voice at half amplitude;
//! - requests are answered after a small random delay, so that the order
//!   between legs varies from run to run, as it did on the real one;
//! - `snoop` and `externalMedia` answer 200 *before* the new channel's
//!   `StasisStart` (1 to 4 ms later by default, as observed on a loaded
//!   host; longer with [`AriSim::stasis_delay`]), and `addChannel` refuses
//!   a channel not in Stasis yet with 422 "Channel not in Stasis
//!   application"; `answer` refuses one with 409, as the reference says;
//! - attach mode follows `app_queue`: the queue bridges the customer and
//!   the member in a basic bridge outside any app, the member's `gosub`
//!   sends a messenger `Local/s@coach-messenger-...;1` into
//!   `Stasis(coach,attach,CUSTOMER,AGENT)`, and when one party hangs up
//!   the queue hangs up the other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use call_coach::audio::{g711, rtp};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

type Resp = Response<Full<Bytes>>;

/// A party's voice: 8 kHz samples from the moment its channel answered.
#[derive(Clone)]
pub struct Voice(pub Arc<Vec<i16>>);

impl Voice {
    /// `lead` seconds of silence, then each recording with a second of
    /// silence after it.
    pub fn script(lead: f64, recordings: &[&str]) -> Voice {
        let mut samples = vec![0i16; (lead * 8000.0) as usize];
        for name in recordings {
            let wav = call_coach::audio::wav::Wav::read(&super::util::sound(name)).expect("wav");
            assert_eq!(wav.rate, 8000, "{name}");
            samples.extend(wav.channel(0));
            samples.extend(std::iter::repeat_n(0, 8000));
        }
        Voice(Arc::new(samples))
    }
}

/// What a dialled endpoint does.
#[derive(Clone)]
pub enum Answer {
    /// Answers after this long and speaks.
    After(Duration, Voice),
    Busy,
    /// Rings until the originate timeout.
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    /// Entered Stasis from the dialplan (a SIP caller).
    Dialplan,
    /// Created by `POST /channels`.
    Originated,
    Snoop,
    ExternalMedia,
    /// Not in any app (bridged by the dialplan; attach mode).
    Outside,
}

struct Chan {
    id: String,
    name: String,
    state: &'static str,
    caller: (String, String),
    origin: Origin,
    app_data: String,
    /// Events of this channel reach the app.
    subscribed: bool,
    in_stasis: bool,
    bridge: Option<String>,
    voice: Option<Voice>,
    up_at: Option<Instant>,
    /// Snoop: the channel listened to.
    snooped: Option<String>,
    /// ExternalMedia: the RTP socket, its target and payload format.
    media: Option<(Arc<std::net::UdpSocket>, SocketAddr, String)>,
    created: String,
    /// Dial in progress (originate): cancel to stop ringing.
    ringing: Option<CancellationToken>,
}

struct Br {
    id: String,
    /// `stasis` (made by the app) or `basic` (made by the dialplan, e.g.
    /// `app_queue`, outside any app).
    class: &'static str,
    name: String,
    channels: Vec<String>,
    created: String,
    /// RTP streams running for snoop+ExternalMedia pairs in this bridge.
    streams: Vec<CancellationToken>,
}

#[derive(Default)]
struct State {
    app: String,
    credentials: String,
    socket: Option<mpsc::UnboundedSender<Message>>,
    socket_kill: Option<CancellationToken>,
    refuse_until: Option<Instant>,
    channels: HashMap<String, Chan>,
    bridges: HashMap<String, Br>,
    endpoints: HashMap<String, Answer>,
    failures: Vec<(String, String, u16, usize)>,
    requests: Vec<String>,
    /// Requests refused because a channel was not in Stasis yet.
    refused: Vec<String>,
    /// From a `snoop`/`externalMedia` answer to the channel's
    /// `StasisStart`; `None`: 1 to 4 ms, at random.
    stasis_delay: Option<Duration>,
    next: u64,
    rng: u64,
    connections: usize,
}

pub struct AriSim {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for AriSim {
    fn drop(&mut self) {
        self.stop.cancel();
        let mut s = self.lock();
        for b in s.bridges.values_mut() {
            for t in b.streams.drain(..) {
                t.cancel();
            }
        }
    }
}

fn now_ts() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

impl Chan {
    fn json(&self) -> Value {
        let (context, app_name) = match self.origin {
            Origin::Dialplan | Origin::Outside => ("from-pstn", "Stasis"),
            _ => ("default", "Stasis"),
        };
        json!({
            "id": self.id, "name": self.name, "state": self.state, "protocol_id": "",
            "caller": {"name": self.caller.0, "number": self.caller.1},
            "connected": {"name": "", "number": ""}, "accountcode": "",
            "dialplan": {"context": context, "exten": "s", "priority": 1,
                         "app_name": if self.in_stasis { app_name } else { "AppDial" },
                         "app_data": self.app_data},
            "creationtime": self.created, "language": "es",
        })
    }
}

impl Br {
    fn json(&self) -> Value {
        json!({"id": self.id, "technology": "simple_bridge", "bridge_type": "mixing",
               "bridge_class": self.class, "creator": if self.class == "stasis" { "Stasis" } else { "" },
               "name": self.name,
               "channels": self.channels, "creationtime": self.created, "video_mode": "talker"})
    }
}

fn reply(status: StatusCode, body: Option<Value>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn message(status: StatusCode, text: &str) -> Resp {
    reply(status, Some(json!({ "message": text })))
}

impl State {
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn uid(&mut self) -> String {
        self.next += 1;
        format!("1764000000.{}", self.next)
    }

    /// Sends an event to the app if it may see this channel's events.
    fn emit(&mut self, kind: &str, channel: Option<&str>, mut fields: Value) {
        if let Some(id) = channel {
            let Some(c) = self.channels.get(id) else {
                return;
            };
            if !c.subscribed {
                return;
            }
            fields["channel"] = c.json();
        }
        fields["type"] = kind.into();
        fields["timestamp"] = now_ts().into();
        fields["asterisk_id"] = "02:fc:00:00:00:01".into();
        fields["application"] = self.app.clone().into();
        if let Some(tx) = &self.socket {
            let _ = tx.send(Message::Text(fields.to_string().into()));
        }
    }

    fn emit_bridge(&mut self, kind: &str, channel: &str, bridge: &str) {
        let b = self.bridges.get(bridge).map(Br::json).unwrap_or_default();
        self.emit(kind, Some(channel), json!({ "bridge": b }));
    }

    fn new_channel(&mut self, id: String, name: String, origin: Origin) -> &mut Chan {
        let chan = Chan {
            id: id.clone(),
            name,
            state: "Down",
            caller: (String::new(), String::new()),
            origin,
            app_data: String::new(),
            subscribed: origin != Origin::Outside,
            in_stasis: false,
            bridge: None,
            voice: None,
            up_at: None,
            snooped: None,
            media: None,
            created: now_ts(),
            ringing: None,
        };
        self.channels.insert(id.clone(), chan);
        self.channels.get_mut(&id).expect("inserted")
    }

    fn stasis_start(&mut self, id: &str, args: &[String]) {
        let app = self.app.clone();
        if let Some(c) = self.channels.get_mut(id) {
            c.in_stasis = true;
            c.subscribed = true;
            c.app_data = std::iter::once(app)
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(",");
        }
        self.emit("StasisStart", Some(id), json!({ "args": args }));
    }

    fn set_up(&mut self, id: &str) {
        if let Some(c) = self.channels.get_mut(id) {
            c.state = "Up";
            c.up_at = Some(Instant::now());
        }
        self.emit("ChannelStateChange", Some(id), json!({}));
    }

    fn leave_bridge(&mut self, id: &str) {
        let Some(bridge) = self.channels.get_mut(id).and_then(|c| c.bridge.take()) else {
            return;
        };
        if let Some(b) = self.bridges.get_mut(&bridge) {
            b.channels.retain(|c| c != id);
            for t in b.streams.drain(..) {
                t.cancel();
            }
        }
        self.emit_bridge("ChannelLeftBridge", id, &bridge);
        self.start_streams(&bridge);
    }

    /// A channel goes away. `by_app`: `DELETE` (cause 32, soft) rather than
    /// the far end hanging up (cause 16).
    fn hang_up(&mut self, id: &str, by_app: bool) {
        let Some(c) = self.channels.get_mut(id) else {
            return;
        };
        if let Some(r) = c.ringing.take() {
            r.cancel();
        }
        let origin = c.origin;
        let in_stasis = c.in_stasis;
        // A party of a queue call: the queue hangs up the other one too.
        let queue_peers: Vec<String> = c
            .bridge
            .as_ref()
            .and_then(|b| self.bridges.get(b))
            .filter(|b| b.class == "basic")
            .map(|b| b.channels.iter().filter(|x| *x != id).cloned().collect())
            .unwrap_or_default();
        let request = if by_app {
            json!({"cause": 32, "soft": true})
        } else {
            json!({"cause": 16})
        };
        self.emit("ChannelHangupRequest", Some(id), request);
        self.emit(
            "ChannelVarset",
            Some(id),
            json!({"variable": "BRIDGEPEER", "value": ""}),
        );
        self.leave_bridge(id);
        if in_stasis {
            self.emit("StasisEnd", Some(id), json!({}));
        }
        // Snoops on this channel end with it (no ChannelDestroyed).
        let snoops: Vec<String> = self
            .channels
            .values()
            .filter(|s| s.snooped.as_deref() == Some(id))
            .map(|s| s.id.clone())
            .collect();
        if matches!(
            origin,
            Origin::Originated | Origin::ExternalMedia | Origin::Outside
        ) {
            self.emit(
                "ChannelDestroyed",
                Some(id),
                json!({"cause": 16, "cause_txt": "Normal Clearing"}),
            );
        }
        self.channels.remove(id);
        for s in snoops {
            self.leave_bridge(&s);
            self.emit("StasisEnd", Some(&s), json!({}));
            self.channels.remove(&s);
        }
        for peer in queue_peers {
            self.hang_up(&peer, false);
        }
        self.bridges
            .retain(|_, b| b.class != "basic" || !b.channels.is_empty());
    }

    /// Starts RTP for every snoop + ExternalMedia pair in `bridge`.
    fn start_streams(&mut self, bridge: &str) {
        let Some(b) = self.bridges.get(bridge) else {
            return;
        };
        if !b.streams.is_empty() {
            return;
        }
        let members: Vec<String> = b.channels.clone();
        let snoop = members
            .iter()
            .find(|c| self.channels[*c].origin == Origin::Snoop);
        let em = members
            .iter()
            .find(|c| self.channels[*c].origin == Origin::ExternalMedia);
        let (Some(snoop), Some(em)) = (snoop, em) else {
            return;
        };
        let snooped = self.channels[snoop].snooped.clone().unwrap_or_default();
        let (voice, up_at) = self
            .channels
            .get(&snooped)
            .map(|c| (c.voice.clone(), c.up_at))
            .unwrap_or((None, None));
        let Some((socket, target, format)) = self.channels[em].media.clone() else {
            return;
        };
        let ssrc = self.random() as u32;
        let seq = self.random() as u16;
        let stop = CancellationToken::new();
        self.bridges
            .get_mut(bridge)
            .expect("bridge")
            .streams
            .push(stop.clone());
        tokio::spawn(stream_rtp(
            socket, target, format, voice, up_at, ssrc, seq, stop,
        ));
    }
}

/// Sends a snooped party's voice as ExternalMedia RTP until `stop`.
#[allow(clippy::too_many_arguments)]
async fn stream_rtp(
    socket: Arc<std::net::UdpSocket>,
    target: SocketAddr,
    format: String,
    voice: Option<Voice>,
    up_at: Option<Instant>,
    ssrc: u32,
    first_seq: u16,
    stop: CancellationToken,
) {
    let wide = format == "slin16";
    let per_packet: usize = if wide { 320 } else { 160 };
    let mut upsampler = call_coach::audio::resample::Upsampler2x::new();
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    let mut i: u32 = 0;
    let origin = up_at.unwrap_or_else(Instant::now);
    // Where in the voice (8 kHz samples) the snoop starts listening.
    let mut pos = (origin.elapsed().as_secs_f64() * 8000.0) as usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let mut chunk = vec![0i16; 160];
        if let Some(v) = &voice {
            for (k, s) in chunk.iter_mut().enumerate() {
                // The dialplan's audio arrives at half amplitude (-6 dB).
                *s = v.0.get(pos + k).copied().unwrap_or(0) / 2;
            }
        }
        pos += 160;
        let samples: Vec<i16> = if wide {
            let f: Vec<f32> = chunk.iter().map(|s| f32::from(*s) / 32768.0).collect();
            let mut out = Vec::with_capacity(320);
            upsampler.process(&f, &mut out);
            out.iter()
                .map(|x| (x * 32768.0).clamp(-32768.0, 32767.0) as i16)
                .collect()
        } else {
            chunk
        };
        let (pt, payload): (u8, Vec<u8>) = match format.as_str() {
            "slin16" => (
                rtp::PT_SLIN16,
                samples.iter().flat_map(|s| s.to_be_bytes()).collect(),
            ),
            "ulaw" => (
                rtp::PT_PCMU,
                samples.iter().map(|s| g711::linear_to_ulaw(*s)).collect(),
            ),
            "alaw" => (
                rtp::PT_PCMA,
                samples.iter().map(|s| g711::linear_to_alaw(*s)).collect(),
            ),
            _ => (
                rtp::PT_SLIN,
                samples.iter().flat_map(|s| s.to_be_bytes()).collect(),
            ),
        };
        i += 1;
        let packet = rtp::build(
            pt,
            first_seq.wrapping_add(i as u16 - 1),
            per_packet as u32 * i,
            ssrc,
            &payload,
        );
        let _ = socket.send_to(&packet, target);
    }
}

/// Request parameters: the query string and a JSON body, merged (ARI takes
/// either).
fn params(query: Option<&str>, body: &[u8]) -> HashMap<String, String> {
    let mut p = HashMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(v) = call_coach::http::query_param(query, k) {
            p.insert(k.to_owned(), v);
        }
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        for (k, v) in m {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            p.insert(k, v);
        }
    }
    p
}

impl AriSim {
    pub async fn start(app: &str, user: &str, pass: &str) -> AriSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/ari", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            app: app.into(),
            credentials: format!("{user}:{pass}"),
            rng: 0x9E37_79B9_7F4A_7C15,
            ..Default::default()
        }));
        let stop = CancellationToken::new();
        let st = state.clone();
        tokio::spawn(call_coach::http::serve(
            listener,
            512,
            stop.clone(),
            move |req| {
                let st = st.clone();
                async move { Ok(handle(st, req).await) }
            },
        ));
        AriSim { url, state, stop }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn endpoint(&self, endpoint: &str, answer: Answer) {
        self.lock().endpoints.insert(endpoint.into(), answer);
    }

    /// The next `count` requests whose method is `method` and whose path
    /// contains `path` fail with `status`.
    pub fn fail(&self, method: &str, path: &str, status: u16, count: usize) {
        self.lock()
            .failures
            .push((method.into(), path.into(), status, count));
    }

    /// Every new snoop and ExternalMedia channel enters Stasis this long
    /// after the request that made it was answered.
    pub fn stasis_delay(&self, delay: Duration) {
        self.lock().stasis_delay = Some(delay);
    }

    /// Requests refused with 422/409 because a channel was not in Stasis
    /// yet, as `METHOD PATH`.
    pub fn refused(&self) -> Vec<String> {
        self.lock().refused.clone()
    }

    /// Waits until bridge `id` holds `n` channels.
    pub async fn wait_bridged(&self, id: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.lock().bridges.get(id).map_or(0, |b| b.channels.len());
            if have == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bridge {id} has {have} channels, not {n}: {:?}",
                self.leftovers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn connected(&self) -> bool {
        self.lock().socket.is_some()
    }

    /// How many times the app opened its events socket.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    pub async fn wait_connected(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.connected() {
            assert!(
                Instant::now() < deadline,
                "the app never connected its events socket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops the app's events socket and refuses new ones for `refuse`.
    pub fn drop_socket(&self, refuse: Duration) {
        let mut s = self.lock();
        s.refuse_until = Some(Instant::now() + refuse);
        s.socket = None;
        if let Some(k) = s.socket_kill.take() {
            k.cancel();
        }
    }

    /// A SIP caller reaches `Stasis(app,args...)`; returns its channel id.
    pub fn inbound(&self, caller: (&str, &str), voice: Voice, args: &[&str]) -> String {
        let mut s = self.lock();
        assert!(
            s.socket.is_some(),
            "Stasis app not registered: the call would fail"
        );
        let id = s.uid();
        let n = s.next;
        let c = s.new_channel(id.clone(), format!("PJSIP/trunk-{n:08x}"), Origin::Dialplan);
        c.caller = (caller.0.into(), caller.1.into());
        c.state = "Ring";
        c.voice = Some(voice);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        s.stasis_start(&id, &args);
        id
    }

    /// A queue call: the customer's channel and the member's, up and in a
    /// basic bridge `app_queue` made, outside the app; returns (customer,
    /// agent) ids, which are their `UNIQUEID`s.
    pub fn outside_call(&self, customer: Voice, agent: Voice) -> (String, String) {
        let mut s = self.lock();
        let cid = s.uid();
        let n = s.next;
        let c = s.new_channel(cid.clone(), format!("PJSIP/trunk-{n:08x}"), Origin::Outside);
        c.caller = ("Cliente".into(), "5550100".into());
        c.voice = Some(customer);
        c.state = "Up";
        c.up_at = Some(Instant::now());
        let aid = s.uid();
        let n = s.next;
        let a = s.new_channel(aid.clone(), format!("PJSIP/200-{n:08x}"), Origin::Outside);
        a.voice = Some(agent);
        a.state = "Up";
        a.up_at = Some(Instant::now());
        let bid = s.uid();
        for id in [&cid, &aid] {
            if let Some(c) = s.channels.get_mut(id) {
                c.bridge = Some(bid.clone());
            }
        }
        s.bridges.insert(
            bid.clone(),
            Br {
                id: bid,
                class: "basic",
                name: String::new(),
                channels: vec![cid.clone(), aid.clone()],
                created: now_ts(),
                streams: vec![],
            },
        );
        (cid, aid)
    }

    /// A messenger channel enters the app with these arguments: the ;1 half
    /// of the README's `Originate(Local/s@coach-messenger,app,Stasis,...)`,
    /// run by the queue member's `gosub`.
    pub fn messenger(&self, args: &[&str]) -> String {
        let mut s = self.lock();
        let id = s.uid();
        let n = s.next;
        s.new_channel(
            id.clone(),
            format!("Local/s@coach-messenger-{n:08x};1"),
            Origin::Dialplan,
        )
        .state = "Up";
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        s.stasis_start(&id, &args);
        id
    }

    /// The far end of a channel hangs up.
    pub fn remote_hangup(&self, id: &str) {
        self.lock().hang_up(id, false);
    }

    pub fn exists(&self, id: &str) -> bool {
        self.lock().channels.contains_key(id)
    }

    /// Channels and bridges still there, as ids.
    pub fn leftovers(&self) -> Vec<String> {
        let s = self.lock();
        let mut v: Vec<String> = s.channels.keys().map(|k| format!("channel {k}")).collect();
        v.extend(s.bridges.keys().map(|k| format!("bridge {k}")));
        v.sort();
        v
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Waits until nothing is left but `except` (channel ids).
    pub async fn wait_empty(&self, except: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left: Vec<String> = self
                .leftovers()
                .into_iter()
                .filter(|l| !except.iter().any(|e| l == &format!("channel {e}")))
                .collect();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind on Asterisk: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    let lock = || st.lock().unwrap_or_else(|e| e.into_inner());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    // Auth: basic header or ?api_key=user:pass.
    let creds = lock().credentials.clone();
    let header_ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .is_some_and(|d| d == creds.as_bytes());
    let key_ok =
        call_coach::http::query_param(query.as_deref(), "api_key").as_deref() == Some(&creds);
    if !header_ok && !key_ok {
        return message(StatusCode::UNAUTHORIZED, "Authentication required");
    }
    let Some(rest) = path.strip_prefix("/ari") else {
        return message(StatusCode::NOT_FOUND, "Resource not found");
    };
    let rest = rest.to_owned();
    if rest == "/events" {
        return events_socket(st, req, query).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let p = params(query.as_deref(), &body);
    // A small random delay: the order between concurrent legs varies.
    let delay = lock().random() % 4;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut s = lock();
    s.requests.push(format!("{method} {rest}"));
    for f in s.failures.iter_mut() {
        if f.3 > 0 && f.0 == method.as_str() && rest.contains(&f.1) {
            f.3 -= 1;
            let status = StatusCode::from_u16(f.2).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return message(status, "Internal Server Error");
        }
    }
    let parts: Vec<String> = rest
        .trim_start_matches('/')
        .split('/')
        .map(|x| call_coach::http::query_param(Some(&format!("x={x}")), "x").unwrap_or_default())
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["channels"]) => {
            let all: Vec<Value> = s.channels.values().map(Chan::json).collect();
            reply(StatusCode::OK, Some(Value::Array(all)))
        }
        (&Method::GET, ["bridges"]) => {
            let all: Vec<Value> = s.bridges.values().map(Br::json).collect();
            reply(StatusCode::OK, Some(Value::Array(all)))
        }
        (&Method::POST, ["channels"]) => originate(&st, &mut s, &p),
        (&Method::POST, ["channels", "externalMedia"]) => external_media(&st, &mut s, &p),
        (&Method::GET, ["channels", id]) => match s.channels.get(*id) {
            Some(c) => reply(StatusCode::OK, Some(c.json())),
            None => message(StatusCode::NOT_FOUND, "Channel not found"),
        },
        (&Method::DELETE, ["channels", id]) => {
            if !s.channels.contains_key(*id) {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            }
            s.hang_up(id, true);
            reply(StatusCode::NO_CONTENT, None)
        }
        (&Method::POST, ["channels", id, "answer"]) => {
            let Some(c) = s.channels.get(*id) else {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            };
            if !c.in_stasis {
                s.refused.push(format!("{method} {rest}"));
                return message(StatusCode::CONFLICT, "Channel not in Stasis application");
            }
            if c.state != "Up" {
                s.set_up(id);
            }
            reply(StatusCode::NO_CONTENT, None)
        }
        (&Method::POST, ["channels", id, "continue"]) => {
            if !s.channels.contains_key(*id) {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            }
            s.leave_bridge(id);
            s.emit("StasisEnd", Some(id), json!({}));
            // Back in the dialplan, which in these tests just hangs up.
            s.channels.remove(*id);
            reply(StatusCode::NO_CONTENT, None)
        }
        (&Method::GET, ["channels", id, "variable"]) => {
            let Some(c) = s.channels.get(*id) else {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            };
            let var = p.get("variable").cloned().unwrap_or_default();
            match (&c.media, var.as_str()) {
                (Some((sock, _, _)), "UNICASTRTP_LOCAL_PORT") => reply(
                    StatusCode::OK,
                    Some(
                        json!({"value": sock.local_addr().map(|a| a.port()).unwrap_or(0).to_string()}),
                    ),
                ),
                (Some(_), "UNICASTRTP_LOCAL_ADDRESS") => {
                    reply(StatusCode::OK, Some(json!({"value": "127.0.0.1"})))
                }
                _ => message(StatusCode::NOT_FOUND, "Provided variable was not found"),
            }
        }
        (&Method::POST, ["channels", id, "snoop"]) => {
            let id = (*id).to_owned();
            if !s.channels.contains_key(&id) {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            }
            let (Some(app), Some(spy)) = (p.get("app"), p.get("spy")) else {
                return message(StatusCode::BAD_REQUEST, "app and spy are required");
            };
            if app != &s.app || !matches!(spy.as_str(), "in" | "out" | "both" | "none") {
                return message(StatusCode::BAD_REQUEST, "Invalid parameters");
            }
            let snoop_id = p.get("snoopId").cloned().unwrap_or_else(|| s.uid());
            if s.channels.contains_key(&snoop_id) {
                return message(
                    StatusCode::CONFLICT,
                    "Channel with given unique ID already exists",
                );
            }
            // Asterisk numbers every snoop it makes.
            s.next += 1;
            let n = s.next;
            let c = s.new_channel(
                snoop_id.clone(),
                format!("Snoop/{id}-{n:08x}"),
                Origin::Snoop,
            );
            c.state = "Up";
            c.snooped = Some(id);
            let json = c.json();
            let args: Vec<String> = p
                .get("appArgs")
                .map(|a| a.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            enter_stasis_later(&st, &mut s, snoop_id, args, false);
            reply(StatusCode::OK, Some(json))
        }
        (&Method::POST, ["channels", id, "play"]) => {
            if !s.channels.contains_key(*id) {
                return message(StatusCode::NOT_FOUND, "Channel not found");
            }
            let pid = p.get("playbackId").cloned().unwrap_or_else(|| s.uid());
            let playback = json!({"id": pid, "media_uri": p.get("media"), "target_uri": format!("channel:{id}"),
                                  "language": "es", "state": "playing"});
            s.emit("PlaybackStarted", None, json!({"playback": playback}));
            let st2 = st.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut s = st2.lock().unwrap_or_else(|e| e.into_inner());
                let mut done = playback;
                done["state"] = "done".into();
                s.emit("PlaybackFinished", None, json!({"playback": done}));
            });
            reply(StatusCode::CREATED, Some(json!({"id": pid})))
        }
        (&Method::POST, ["bridges"]) => {
            let id = p.get("bridgeId").cloned().unwrap_or_else(|| s.uid());
            if s.bridges.contains_key(&id) {
                return message(StatusCode::CONFLICT, "Bridge with that id already exists");
            }
            let b = Br {
                id: id.clone(),
                class: "stasis",
                name: p.get("name").cloned().unwrap_or_default(),
                channels: vec![],
                created: now_ts(),
                streams: vec![],
            };
            let json = b.json();
            s.bridges.insert(id, b);
            reply(StatusCode::OK, Some(json))
        }
        (&Method::POST, ["bridges", id, "addChannel"]) => {
            let id = (*id).to_owned();
            if !s.bridges.contains_key(&id) {
                return message(StatusCode::NOT_FOUND, "Bridge not found");
            }
            let list: Vec<String> = p
                .get("channel")
                .map(|c| c.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if list.is_empty() {
                return message(StatusCode::BAD_REQUEST, "channel is required");
            }
            for c in &list {
                match s.channels.get(c) {
                    None => return message(StatusCode::BAD_REQUEST, "Channel not found"),
                    Some(ch) if !ch.in_stasis => {
                        s.refused.push(format!("{method} {rest}"));
                        return message(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Channel not in Stasis application",
                        );
                    }
                    _ => {}
                }
            }
            for c in list {
                s.leave_bridge(&c);
                if let Some(ch) = s.channels.get_mut(&c) {
                    ch.bridge = Some(id.clone());
                }
                s.bridges
                    .get_mut(&id)
                    .expect("bridge")
                    .channels
                    .push(c.clone());
                s.emit_bridge("ChannelEnteredBridge", &c, &id);
            }
            s.start_streams(&id);
            reply(StatusCode::NO_CONTENT, None)
        }
        (&Method::DELETE, ["bridges", id]) => {
            let Some(b) = s.bridges.get(*id) else {
                return message(StatusCode::NOT_FOUND, "Bridge not found");
            };
            let members = b.channels.clone();
            for c in members {
                s.leave_bridge(&c);
            }
            if let Some(mut b) = s.bridges.remove(*id) {
                for t in b.streams.drain(..) {
                    t.cancel();
                }
                s.emit("BridgeDestroyed", None, json!({"bridge": b.json()}));
            }
            reply(StatusCode::NO_CONTENT, None)
        }
        (m, ["applications", app, "subscription"])
            if *m == Method::POST || *m == Method::DELETE =>
        {
            if *app != s.app {
                return message(StatusCode::NOT_FOUND, "Application not found");
            }
            let sources = p.get("eventSource").cloned().unwrap_or_default();
            let mut ids = vec![];
            for src in sources.split(',') {
                let Some(id) = src.strip_prefix("channel:") else {
                    return message(StatusCode::BAD_REQUEST, "Invalid event source");
                };
                if !s.channels.contains_key(id) {
                    return message(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Event source does not exist",
                    );
                }
                ids.push(id.to_owned());
            }
            for id in ids {
                if let Some(c) = s.channels.get_mut(&id) {
                    c.subscribed = *m == Method::POST || c.in_stasis;
                }
            }
            reply(
                StatusCode::OK,
                Some(
                    json!({"name": s.app, "channel_ids": [], "bridge_ids": [], "endpoint_ids": [], "device_names": []}),
                ),
            )
        }
        _ => message(StatusCode::NOT_FOUND, "Resource not found"),
    }
}

fn originate(st: &Arc<Mutex<State>>, s: &mut State, p: &HashMap<String, String>) -> Resp {
    let Some(endpoint) = p.get("endpoint").cloned() else {
        return message(StatusCode::BAD_REQUEST, "Endpoint must be specified");
    };
    let id = p.get("channelId").cloned().unwrap_or_else(|| s.uid());
    if s.channels.contains_key(&id) {
        return message(
            StatusCode::CONFLICT,
            "Channel with given unique ID already exists",
        );
    }
    let answer = s.endpoints.get(&endpoint).cloned();
    let Some(answer) = answer else {
        return message(StatusCode::BAD_REQUEST, "Allocation failed");
    };
    let n = s.next;
    s.next += 1;
    let app_ok = p.get("app") == Some(&s.app) && s.socket.is_some();
    let caller = p
        .get("callerId")
        .map(|c| match c.split_once('<') {
            Some((name, num)) => (name.trim().to_owned(), num.trim_end_matches('>').to_owned()),
            None => (String::new(), c.clone()),
        })
        .unwrap_or_default();
    let ring = CancellationToken::new();
    let c = s.new_channel(
        id.clone(),
        format!("{endpoint}-{n:08x}"),
        Origin::Originated,
    );
    c.caller = caller;
    c.ringing = Some(ring.clone());
    let json = c.json();
    if !app_ok {
        // "Stasis app doesn't exist": the channel dies at once.
        s.channels.remove(&id);
        return reply(StatusCode::OK, Some(json));
    }
    let args: Vec<String> = p
        .get("appArgs")
        .map(|a| a.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let timeout = p
        .get("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(30);
    let peer = json.clone();
    s.emit(
        "Dial",
        None,
        json!({"peer": peer, "dialstatus": "", "dialstring": endpoint}),
    );
    if let Some(c) = s.channels.get_mut(&id) {
        c.state = "Ringing";
    }
    s.emit("ChannelStateChange", Some(&id), json!({}));
    let st = st.clone();
    tokio::spawn(async move {
        let (wait, outcome) = match &answer {
            Answer::After(d, _) => (*d, "ANSWER"),
            Answer::Busy => (Duration::from_millis(200), "BUSY"),
            Answer::Never => (Duration::from_secs(timeout), "NOANSWER"),
        };
        tokio::select! {
            _ = ring.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = s.channels.get_mut(&id) else {
            return;
        };
        c.ringing = None;
        let mut peer = c.json();
        if let Answer::After(_, voice) = &answer {
            c.voice = Some(voice.clone());
            s.set_up(&id);
            peer["state"] = "Up".into();
            s.emit(
                "Dial",
                None,
                json!({"peer": peer, "dialstatus": outcome, "dialstring": endpoint}),
            );
            s.emit(
                "ChannelVarset",
                Some(&id),
                json!({"variable": "STASISSTATUS", "value": ""}),
            );
            s.stasis_start(&id, &args);
        } else {
            s.emit(
                "Dial",
                None,
                json!({"peer": peer, "dialstatus": outcome, "dialstring": endpoint}),
            );
            let (cause, txt) = if outcome == "BUSY" {
                (17, "User busy")
            } else {
                (19, "No answer")
            };
            s.emit("ChannelHangupRequest", Some(&id), json!({"cause": cause}));
            s.emit(
                "ChannelDestroyed",
                Some(&id),
                json!({"cause": cause, "cause_txt": txt}),
            );
            s.channels.remove(&id);
        }
    });
    reply(StatusCode::OK, Some(json))
}

/// A channel the app just created (snoop, ExternalMedia) enters Stasis a
/// little after the request was answered, as on Asterisk 23.4.1: the
/// ExternalMedia channel comes up, sets its `UNICASTRTP_*` variables and
/// gets `StasisStart` together, the snoop (already up) only the latter.
fn enter_stasis_later(
    st: &Arc<Mutex<State>>,
    s: &mut State,
    id: String,
    args: Vec<String>,
    media: bool,
) {
    let delay = s
        .stasis_delay
        .unwrap_or_else(|| Duration::from_millis(1 + s.random() % 4));
    let st = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = s.channels.get(&id) else {
            return;
        };
        if media {
            let port = c
                .media
                .as_ref()
                .and_then(|(sock, _, _)| sock.local_addr().ok())
                .map_or(0, |a| a.port());
            s.set_up(&id);
            s.emit(
                "ChannelVarset",
                Some(&id),
                json!({"variable": "UNICASTRTP_LOCAL_PORT", "value": port.to_string()}),
            );
        }
        s.stasis_start(&id, &args);
    });
}

fn external_media(st: &Arc<Mutex<State>>, s: &mut State, p: &HashMap<String, String>) -> Resp {
    let (Some(app), Some(host)) = (p.get("app"), p.get("external_host")) else {
        return message(
            StatusCode::BAD_REQUEST,
            "app and external_host are required",
        );
    };
    let format = p.get("format").cloned().unwrap_or_default();
    if app != &s.app || !matches!(format.as_str(), "slin16" | "slin" | "ulaw" | "alaw") {
        return message(StatusCode::BAD_REQUEST, "Invalid parameters");
    }
    let Ok(target) = host.parse::<SocketAddr>() else {
        return message(StatusCode::BAD_REQUEST, "Invalid external_host");
    };
    let id = p.get("channelId").cloned().unwrap_or_else(|| s.uid());
    if s.channels.contains_key(&id) {
        return message(
            StatusCode::CONFLICT,
            "Channel with given unique ID already exists",
        );
    }
    let socket = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"));
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let ptr = s.random() & 0xffff_ffff;
    let c = s.new_channel(
        id.clone(),
        format!("UnicastRTP/{host}-0x{ptr:x}"),
        Origin::ExternalMedia,
    );
    c.media = Some((socket, target, format));
    let mut json = c.json();
    json["channelvars"] =
        json!({"UNICASTRTP_LOCAL_PORT": port.to_string(), "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"});
    enter_stasis_later(st, s, id, Vec::new(), true);
    reply(StatusCode::OK, Some(json))
}

async fn events_socket(
    st: Arc<Mutex<State>>,
    req: Request<Incoming>,
    query: Option<String>,
) -> Resp {
    let lock = || st.lock().unwrap_or_else(|e| e.into_inner());
    let app = call_coach::http::query_param(query.as_deref(), "app").unwrap_or_default();
    if app != lock().app {
        return message(
            StatusCode::BAD_REQUEST,
            "Invalid application provided in param [app].",
        );
    }
    if lock().refuse_until.is_some_and(|t| Instant::now() < t) {
        return message(StatusCode::SERVICE_UNAVAILABLE, "Asterisk is restarting");
    }
    let Some(accept) = call_coach::http::websocket_accept(&req) else {
        return message(StatusCode::BAD_REQUEST, "websocket upgrade expected");
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let kill = CancellationToken::new();
    {
        let mut s = lock();
        if let Some(old) = s.socket_kill.replace(kill.clone()) {
            old.cancel();
        }
        s.socket = Some(tx);
        s.connections += 1;
    }
    let generation = lock().connections;
    let st2 = st.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                _ = kill.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                f = stream.next() => match f {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
            }
        }
        // Dropped without a close frame, as a dying Asterisk would.
        let mut s = st2.lock().unwrap_or_else(|e| e.into_inner());
        if s.connections == generation {
            s.socket = None;
        }
    });
    call_coach::http::upgrade_response(&accept)
}

/// The simulator against the recording of a real Asterisk 23.4.1: the
/// recorded REST calls, replayed, get the recorded status codes; each
/// channel's lifecycle events come in the recorded order with the recorded
/// arguments and causes; the RTP has the recorded shape.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_replays_the_recorded_asterisk_call() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/notes/ari-recording");
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).expect("recording")).unwrap()
    };
    let (calls, recorded) = (read("rest-calls.json"), read("events.json"));
    let sim = AriSim::start("coach", "coach", "pw").await;
    let silent = Answer::After(Duration::ZERO, Voice(Arc::new(vec![0; 8000])));
    sim.endpoint("Local/s@customer", silent.clone());
    sim.endpoint("Local/200@agent", silent);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/events?app=coach&api_key=coach:pw&subscribeAll=false",
        sim.url.replace("http://", "ws://")
    ))
    .await
    .expect("events socket");
    let rtp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_host = rtp.local_addr().unwrap().to_string();
    let mut events: Vec<Value> = Vec::new();
    let client = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    for call in calls.as_array().unwrap() {
        let method = call["method"].as_str().unwrap().to_owned();
        let mut url = format!("{}{}", sim.url, call["path"].as_str().unwrap());
        if let Some(params) = call["params"].as_object() {
            let query: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().unwrap();
                    // The recording's port is someone else's here.
                    let v = if k == "external_host" {
                        rtp_host.as_str()
                    } else {
                        v
                    };
                    let enc: String = v
                        .bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-._:,".contains(&b) {
                                (b as char).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect();
                    format!("{k}={enc}")
                })
                .collect();
            url = format!("{url}?{}", query.join("&"));
        }
        let body = call["body"].clone();
        let (c, u, m) = (client.clone(), url.clone(), method.clone());
        let status = tokio::task::spawn_blocking(move || {
            let auth = "Basic Y29hY2g6cHc="; // coach:pw
            let r = match (m.as_str(), body.is_null()) {
                ("GET", _) => c.get(&u).header("authorization", auth).call(),
                ("DELETE", _) => c.delete(&u).header("authorization", auth).call(),
                (_, true) => c.post(&u).header("authorization", auth).send_empty(),
                (_, false) => c
                    .post(&u)
                    .header("authorization", auth)
                    .header("content-type", "application/json")
                    .send(body.to_string().as_bytes()),
            };
            r.unwrap().status().as_u16()
        })
        .await
        .unwrap();
        assert_eq!(
            u64::from(status),
            call["status"].as_u64().unwrap(),
            "{method} {url}"
        );
        // The recorder waited for an originated leg to enter the app.
        let originated = call["path"] == "/channels" && method == "POST";
        let wanted = call
            .pointer("/params/channelId")
            .or_else(|| call.pointer("/body/channelId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        loop {
            let waiting = originated
                && !events.iter().any(|e| {
                    e["type"] == "StasisStart"
                        && e.pointer("/channel/id").and_then(Value::as_str) == wanted.as_deref()
                });
            let timeout = if waiting {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(30)
            };
            match tokio::time::timeout(timeout, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => events.push(serde_json::from_str(&t).unwrap()),
                Ok(_) => {}
                Err(_) => {
                    assert!(!waiting, "no StasisStart for {wanted:?}");
                    break;
                }
            }
        }
    }
    // Per channel (and bridge): the lifecycle events, in order.
    let lifecycle = |evs: &Value, id: &str| -> Vec<String> {
        evs.as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e.pointer("/channel/id").and_then(Value::as_str) == Some(id)
                    || (e["type"] == "BridgeDestroyed"
                        && e.pointer("/bridge/id").and_then(Value::as_str) == Some(id))
            })
            .filter(|e| {
                matches!(
                    e["type"].as_str().unwrap(),
                    "StasisStart"
                        | "StasisEnd"
                        | "ChannelEnteredBridge"
                        | "ChannelLeftBridge"
                        | "ChannelHangupRequest"
                        | "ChannelDestroyed"
                        | "BridgeDestroyed"
                )
            })
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["type"].as_str().unwrap(),
                    e["args"],
                    e["cause"],
                    // Asterisk lists a bridge's channels in no set order.
                    {
                        let mut c: Vec<&str> = e
                            .pointer("/bridge/channels")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        c.sort_unstable();
                        c.join(",")
                    }
                )
            })
            .collect()
    };
    let ours = Value::Array(events.clone());
    for id in [
        "cust-1",
        "agent-1",
        "snoop-1",
        "em-1",
        "call-bridge-1",
        "snoop-bridge-1",
    ] {
        let want = lifecycle(&recorded, id);
        assert!(!want.is_empty(), "{id}");
        assert_eq!(lifecycle(&ours, id), want, "{id}");
    }
    // Every event carries the recorded envelope and channel fields.
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    let sample = recorded
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "StasisStart")
        .unwrap();
    let mine = events.iter().find(|e| e["type"] == "StasisStart").unwrap();
    assert_eq!(keys(mine), keys(sample));
    assert_eq!(keys(&mine["channel"]), keys(&sample["channel"]));

    // RTP: the recorded packets' shape, and the simulator's.
    let pcap = std::fs::read(dir.join("externalmedia-slin16.pcap")).unwrap();
    let mut recorded_rtp = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let ip = &pcap[at + 16..at + 16 + len];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        recorded_rtp.push(ip[ihl + 8..].to_vec());
        at += 16 + len;
    }
    assert_eq!(recorded_rtp.len(), 300);
    let shape = |packets: &[Vec<u8>]| {
        let mut prev: Option<(u16, u32)> = None;
        for p in packets {
            let r = rtp::parse(p).expect("rtp");
            assert_eq!(r.payload_type, rtp::PT_SLIN16);
            assert!(!r.marker);
            assert_eq!(r.payload.len(), 640);
            if let Some((seq, ts)) = prev {
                assert_eq!(r.sequence, seq.wrapping_add(1));
                assert_eq!(r.timestamp, ts.wrapping_add(320));
            } else {
                assert_eq!(r.timestamp, 320);
            }
            prev = Some((r.sequence, r.timestamp));
        }
    };
    shape(&recorded_rtp);
    // The simulator streamed to our port while snoop-1 and em-1 shared a
    // bridge (until cust-1 hung up).
    let mut ours_rtp = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), rtp.recv(&mut buf)).await
    {
        ours_rtp.push(buf[..n].to_vec());
    }
    assert!(ours_rtp.len() >= 3, "{} packets", ours_rtp.len());
    shape(&ours_rtp);
}
