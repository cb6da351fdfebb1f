// call-coach web UI, served by the relay. No framework, no network but the
// relay that served it. Views:
//   /?agent=PJSIP/200     follows that agent's calls, one after another
//   /?call=ID             one call
//   /?view=supervisor     every active call
//   /?view=history        past calls: filters, search; each opens as ?call=ID
//   /?view=scorecards     figures per agent over a period, charts, CSV
// Add &lang=en for English, &token=T when the relay's auth is on (the
// token is then kept in sessionStorage only and removed from the address).
"use strict";

const I18N = {
  es: {
    "start.title": "Coaching en vivo", "start.agent": "Agente (p. ej. PJSIP/200)",
    "start.follow": "Seguir mis llamadas", "start.supervisor": "Vista de supervisor",
    "login.title": "Acceso", "login.token": "Token del relay", "login.go": "Entrar",
    "login.bad": "Token no aceptado.",
    "agent.transcript": "Conversación", "agent.waiting": "Esperando una llamada…",
    "agent.jump": "↓ Nuevos mensajes", "agent.summary": "Resumen de la llamada",
    "agent.metrics": "Métricas", "agent.you": "Tú hablas", "agent.silence": "Silencio",
    "agent.wpm": "Tus palabras/min", "agent.customerWpm": "Cliente palabras/min",
    "agent.duration": "Duración", "agent.checklist": "Cumplimiento", "agent.tips": "Consejos",
    "agent.customer": "Cliente", "agent.agent": "Agente", "agent.ended": "Llamada terminada",
    "transcript.gap": "(sin transcribir: el servidor de voz iba con retraso)",
    "tip.rules": "Regla", "tip.llm": "IA", "tip.dismiss": "Descartar consejo",
    "conn.live": "en directo", "conn.connecting": "reconectando…", "conn.offline": "sin conexión",
    "conn.ended": "terminada", "tip.more": "Ver el consejo completo",
    "sup.title": "Llamadas activas", "sup.empty": "No hay llamadas activas.", "sup.agent": "Agente",
    "sup.caller": "Cliente", "sup.duration": "Duración", "sup.ratio": "Habla agente",
    "sup.silence": "Silencio", "sup.tip": "Último aviso", "who.agent": "Agente", "who.call": "Llamada",
    "who.supervisor": "Supervisor",
    "nav.live": "En vivo", "nav.history": "Historial", "nav.scores": "Indicadores",
    "call.export": "Exportar", "call.delete": "Borrar llamada",
    "call.confirmDelete": "¿Borrar esta llamada para siempre? No se puede deshacer.",
    "call.deleted": "Llamada borrada.", "call.forbidden": "Este token no puede hacer eso.",
    "hist.title": "Llamadas anteriores", "hist.q": "Palabras dichas", "hist.from": "Desde", "hist.to": "Hasta",
    "hist.rule": "Regla disparada", "hist.missed": "Punto no cumplido", "hist.search": "Buscar",
    "hist.empty": "Ninguna llamada encontrada.", "hist.when": "Inicio", "hist.summary": "Resumen",
    "hist.flags": "Reglas / pendientes", "hist.more": "Más llamadas",
    "score.title": "Indicadores por agente", "score.show": "Ver", "score.csv": "Descargar CSV",
    "score.empty": "Sin llamadas en el periodo.", "score.calls": "Llamadas", "score.handle": "Duración media",
    "score.overtalk": "Solapamiento", "score.tips": "Avisos por regla", "score.checklist": "Cumplimiento",
  },
  en: {
    "start.title": "Live coaching", "start.agent": "Agent (e.g. PJSIP/200)",
    "start.follow": "Follow my calls", "start.supervisor": "Supervisor view",
    "login.title": "Sign in", "login.token": "Relay token", "login.go": "Sign in",
    "login.bad": "Token not accepted.",
    "agent.transcript": "Conversation", "agent.waiting": "Waiting for a call…",
    "agent.jump": "↓ New messages", "agent.summary": "Call summary",
    "agent.metrics": "Metrics", "agent.you": "You talk", "agent.silence": "Silence",
    "agent.wpm": "Your words/min", "agent.customerWpm": "Customer words/min",
    "agent.duration": "Duration", "agent.checklist": "Compliance", "agent.tips": "Tips",
    "agent.customer": "Customer", "agent.agent": "Agent", "agent.ended": "Call ended",
    "transcript.gap": "(not transcribed: the speech server was behind)",
    "tip.rules": "Rule", "tip.llm": "AI", "tip.dismiss": "Dismiss tip",
    "conn.live": "live", "conn.connecting": "reconnecting…", "conn.offline": "offline",
    "conn.ended": "ended", "tip.more": "Show the whole tip",
    "sup.title": "Active calls", "sup.empty": "No active calls.", "sup.agent": "Agent",
    "sup.caller": "Caller", "sup.duration": "Duration", "sup.ratio": "Agent talk",
    "sup.silence": "Silence", "sup.tip": "Latest tip", "who.agent": "Agent", "who.call": "Call",
    "who.supervisor": "Supervisor",
    "nav.live": "Live", "nav.history": "History", "nav.scores": "Scorecards",
    "call.export": "Export", "call.delete": "Delete call",
    "call.confirmDelete": "Delete this call for good? This cannot be undone.",
    "call.deleted": "Call deleted.", "call.forbidden": "This token may not do that.",
    "hist.title": "Past calls", "hist.q": "Words said", "hist.from": "From", "hist.to": "To",
    "hist.rule": "Rule fired", "hist.missed": "Item missed", "hist.search": "Search",
    "hist.empty": "No call found.", "hist.when": "Started", "hist.summary": "Summary",
    "hist.flags": "Rules / missed", "hist.more": "More calls",
    "score.title": "Agent scorecards", "score.show": "Show", "score.csv": "Download CSV",
    "score.empty": "No calls in the period.", "score.calls": "Calls", "score.handle": "Mean handle time",
    "score.overtalk": "Overtalk", "score.tips": "Tips by rule", "score.checklist": "Compliance",
  },
};

const $ = (id) => document.getElementById(id);
// An event's words in the UI's language: `i18n.<lang>.<field>` (the
// orchestrator's rules carry English), else the field as sent.
const local = (ev, field) => (ev.i18n && ev.i18n[lang] && ev.i18n[lang][field]) || ev[field] || "";
const params = new URLSearchParams(location.search);
let lang = params.get("lang") || sessionStorage.getItem("cc.lang") || "es";
if (!I18N[lang]) lang = "es";
const t = (key) => I18N[lang][key] || I18N.es[key] || key;

// ---- token: from the address once, then the session only ----
let token = params.get("token");
if (token) {
  sessionStorage.setItem("cc.token", token);
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
} else {
  token = sessionStorage.getItem("cc.token");
}

function applyI18n() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("lang").textContent = lang === "es" ? "EN" : "ES";
  setConn(connState);
  if (view) view.relabel();
}

let connState = "offline";
function setConn(s) {
  // An ended call's view is not live, whatever its socket does.
  if (s === "live" && view && view.showsEndedCall && view.showsEndedCall()) s = "ended";
  connState = s;
  const el = $("conn");
  el.dataset.state = s;
  el.textContent = t("conn." + s);
}

function announce(text, urgent) {
  const el = $(urgent ? "announce-alert" : "announce-polite");
  el.textContent = "";
  // A change of text is what screen readers announce.
  setTimeout(() => { el.textContent = text; }, 30);
}

const fmtSecs = (ms) => {
  const s = Math.max(0, Math.floor(ms / 1000));
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
};

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401 || r.status === 403) throw Object.assign(new Error("auth"), { auth: true });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

// A request whose refusal the page shows: {status, body, error}, where
// error is the relay's own message for a 4xx.
async function request(path, method = "GET") {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { method, headers, cache: "no-store" });
  let error = null;
  if (!r.ok) {
    try { error = (await r.clone().json()).error; } catch { error = r.status + " " + r.statusText; }
  }
  return { status: r.status, r, error };
}

// Saves what `path` answers as a file (the token goes in a header, never
// in an address).
async function download(path, errorEl) {
  const { r, error, status } = await request(path);
  if (error) { errorEl.textContent = status === 403 ? t("call.forbidden") : error; return; }
  const name = /filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "");
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = name ? name[1] : "export";
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The address of a view, keeping the language.
function viewUrl(query) {
  const q = new URLSearchParams(query);
  if (lang !== "es") q.set("lang", lang);
  return "?" + q;
}

function showNav(current) {
  $("nav").hidden = false;
  for (const [id, v] of [["nav-live", "supervisor"], ["nav-history", "history"], ["nav-scores", "scorecards"]]) {
    $(id).href = viewUrl({ view: v });
    if (v === current) $(id).setAttribute("aria-current", "page");
  }
}

const fmtWhen = (iso) => {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toLocaleString(lang === "es" ? "es-ES" : "en-GB", { dateStyle: "short", timeStyle: "short" });
};

// The relay's /ws address for `query`, with the session's token.
function wsUrl(query) {
  const q = token ? query + "&token=" + encodeURIComponent(token) : query;
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?" + q;
}

// ---- a relay subscription that survives restarts and blips ----
// key: "seq" for one call, "pos" for all calls; since=cursor on reconnect,
// and anything at or below the cursor is skipped: no gap, no duplicate.
class Feed {
  constructor(query, key, since, onEvent) {
    this.query = query; this.key = key; this.cursor = since; this.onEvent = onEvent;
    this.closed = false; this.backoff = 250; this.failures = 0;
    this.open();
  }
  url() {
    let q = this.query;
    if (this.cursor !== null && this.cursor !== undefined) q += "&since=" + this.cursor;
    return wsUrl(q);
  }
  open() {
    if (this.closed) return;
    setConn("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    let opened = false;
    ws.onopen = () => { opened = true; this.backoff = 250; this.failures = 0; setConn("live"); };
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch { return; }
      if (ev.type === "relay.dropped") {
        if (typeof ev.since === "number") this.cursor = ev.since;
        return;
      }
      const n = ev[this.key];
      if (typeof n === "number") {
        if (this.cursor !== null && this.cursor !== undefined && n <= this.cursor) return;
        this.cursor = n;
      }
      this.onEvent(ev);
    };
    ws.onclose = () => {
      if (this.closed || this.ws !== ws) return;
      setConn(opened ? "connecting" : "offline");
      if (!opened && ++this.failures >= 2) {
        // Refused before opening twice: maybe the token.
        api("/calls").catch((e) => { if (e.auth) showLogin(); });
      }
      setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 5000);
    };
  }
  close() { this.closed = true; if (this.ws) this.ws.close(); }
}

// ---- the agent view: one call at a time ----
class AgentView {
  constructor(agentId, callId) {
    this.agentId = agentId; this.fixedCall = callId;
    this.call = null; this.feed = null; this.dismissed = new Set(); this.tipCount = 0;
    this.follow = true;
    $("agent").hidden = false;
    const list = $("transcript");
    list.addEventListener("scroll", () => {
      this.follow = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
      if (this.follow) $("jump").hidden = true;
    });
    $("jump").addEventListener("click", () => { this.follow = true; this.scroll(); });
    setInterval(() => this.tick(), 250);
    this.relabel();
    if (callId) { this.openCall(callId); this.tools(callId); }
    else this.poll();
  }
  // A call opened by its id (from the history): export it, or delete it.
  tools(id) {
    $("call-tools").hidden = false;
    showNav(null);
    for (const b of document.querySelectorAll("#call-tools [data-export]")) {
      b.addEventListener("click", () => download(
        "/calls/" + encodeURIComponent(id) + "/export?format=" + b.dataset.export, $("call-error")));
    }
    $("call-delete").addEventListener("click", async () => {
      if (!confirm(t("call.confirmDelete"))) return;
      const { status, error } = await request("/calls/" + encodeURIComponent(id), "DELETE");
      if (error) { $("call-error").textContent = status === 403 ? t("call.forbidden") : error; return; }
      this.endCall();
      announce(t("call.deleted"));
      location.href = viewUrl({ view: "history" });
    });
  }
  relabel() {
    $("who").textContent = this.agentId ? t("who.agent") + " " + this.agentId : t("who.call") + " " + (this.fixedCall || "");
    for (const li of document.querySelectorAll("#transcript li")) {
      li.querySelector(".who-label").textContent = t(li.classList.contains("agent") ? "agent.agent" : "agent.customer");
    }
    for (const li of document.querySelectorAll("#tips li")) this.tipWords(li);
    if (this.lastChecklist) this.checklist(this.lastChecklist);
    if (this.lastSummary) $("summary-text").textContent = local(this.lastSummary, "text");
    this.callInfo();
  }
  showsEndedCall() { return !!(this.call && this.call.ended); }
  callInfo() {
    const c = this.call;
    if (!c) return;
    $("call-info").textContent = (c.caller || "") + (this.agentId || !c.agent ? "" : " → " + c.agent)
      + (c.ended ? " · " + t("agent.ended") : "");
  }
  // Looks for the agent's next call; the last one (ended) stays on
  // screen, its summary included, until then.
  async poll() {
    if (this.polling) return;
    this.polling = true;
    while (!this.call || this.call.ended) {
      try {
        const { calls } = await api("/calls");
        const current = this.call && this.call.id;
        const mine = calls.filter((c) => c.agent === this.agentId && c.callId !== current)
          .sort((a, b) => (b.startedAt || "").localeCompare(a.startedAt || ""));
        if (!this.feed && connState !== "live") setConn("live");
        if (mine.length) { this.polling = false; this.openCall(mine[0].callId); return; }
      } catch (e) {
        if (e.auth) { this.polling = false; showLogin(); return; }
        if (!this.feed) setConn("offline");
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    this.polling = false;
  }
  openCall(id) {
    if (this.feed) this.feed.close();
    clearTimeout(this.call && this.call.endTimer);
    this.call = { id, ended: false, started: null, endedAt: null, silence: null, open: new Set(), caller: "", agent: "" };
    this.lastChecklist = null; this.lastSummary = null;
    $("transcript").replaceChildren();
    $("tips").replaceChildren();
    $("checklist").replaceChildren();
    $("summary").hidden = true;
    $("waiting").hidden = true;
    $("call-info").textContent = "";
    for (const id of ["m-silence", "m-wpm", "m-cwpm", "m-duration", "ratio-text"]) $(id).textContent = "–";
    $("ratio-agent").style.width = "0";
    this.dismissed.clear();
    this.follow = true;
    this.feed = new Feed("callId=" + encodeURIComponent(id), "seq", 0, (ev) => this.handle(ev));
  }
  // The call and its summary are over: stop following it (the next
  // call is being looked for since call.ended).
  endCall() {
    if (this.feed) this.feed.close();
    this.feed = null;
  }
  scroll() {
    const list = $("transcript");
    if (this.follow) list.scrollTop = list.scrollHeight;
    else $("jump").hidden = false;
  }
  handle(ev) {
    const c = this.call;
    if (!c || ev.callId !== c.id) return;
    switch (ev.type) {
      case "call.started":
        c.started = Date.parse(ev.ts) || Date.now();
        c.caller = ev.caller || ""; c.agent = ev.agent || "";
        this.callInfo();
        break;
      case "transcript": this.transcript(ev); break;
      case "speech": this.speech(ev); break;
      case "tip": this.tip(ev); break;
      case "checklist": this.checklist(ev.items || []); break;
      case "metrics": this.metrics(ev); break;
      case "call.ended":
        if (c.ended) break;
        c.ended = true;
        // The call's length from the relay's clock, not from now: a call
        // opened after it ended shows how long it lasted.
        c.endedAt = Date.parse(ev.ts) || Date.now();
        if (typeof ev.durationMs === "number" && c.started) c.started = c.endedAt - ev.durationMs;
        if (c.started) $("m-duration").textContent = fmtSecs(c.endedAt - c.started);
        $("m-silence").textContent = "–";
        $("m-silence").classList.remove("long");
        this.callInfo();
        setConn(connState === "live" ? "ended" : connState);
        // The summary follows; stop waiting for it after a while.
        c.endTimer = setTimeout(() => this.endCall(), 20000);
        if (!this.fixedCall) this.poll();
        break;
      case "summary":
        this.lastSummary = ev;
        $("summary-text").textContent = local(ev, "text");
        $("summary").hidden = false;
        this.scroll();
        if (ev.checklist) this.checklist(ev.checklist);
        if (ev.source === "llm") {
          clearTimeout(c.endTimer);
          this.endCall();
        }
        break;
    }
  }
  transcript(ev) {
    const speaker = ev.speaker === "agent" ? "agent" : "customer";
    const key = speaker + ":" + (ev.utteranceId || ev.seq);
    let li = document.querySelector(`#transcript li[data-key="${CSS.escape(key)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.key = key;
      li.className = speaker;
      const who = document.createElement("span");
      who.className = "who-label";
      who.textContent = t(speaker === "agent" ? "agent.agent" : "agent.customer");
      const text = document.createElement("span");
      text.className = "text";
      li.append(who, text);
      $("transcript").append(li);
    }
    li.querySelector(".text").textContent = ev.gap ? t("transcript.gap") : ev.text || "";
    li.classList.toggle("partial", ev.final !== true);
    li.classList.toggle("gap", !!ev.gap);
    this.heard(ev);
    this.scroll();
  }
  // A party began speaking (stt's voice detection, in real time): the
  // silence is over, whatever the transcripts' lag.
  speech(ev) {
    this.heard(ev);
  }
  // Silence on the audio's timeline: zero while an utterance is open (its
  // start or a partial came, its final not yet); after the last final,
  // counted from the end of its speech (lagMs ago), not from its arrival.
  heard(ev) {
    const c = this.call;
    if (!c) return;
    const key = ev.speaker + ":" + ev.utteranceId;
    if (ev.type === "transcript" && ev.final === true) c.open.delete(key);
    else c.open.add(key);
    if (c.open.size > 0) c.silence = { ms: 0, at: Date.now() };
    else c.silence = { ms: typeof ev.lagMs === "number" ? ev.lagMs : 0, at: Date.now() };
  }
  tip(ev) {
    if (!ev.tipId || this.dismissed.has(ev.tipId)) return;
    let li = document.querySelector(`#tips li[data-tip="${CSS.escape(ev.tipId)}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.tip = ev.tipId;
      const text = document.createElement("span");
      text.className = "tip-text";
      const src = document.createElement("span");
      src.className = "tip-source";
      const x = document.createElement("button");
      x.className = "dismiss";
      x.type = "button";
      x.textContent = "×";
      x.addEventListener("click", (e) => { e.stopPropagation(); this.dismissed.add(ev.tipId); li.remove(); this.orderTips(); });
      li.addEventListener("click", () => { li.open = true; li.classList.remove("compact"); });
      li.append(text, src, x);
      li.order = ++this.tipCount;
      $("tips").prepend(li);
    }
    li.ev = ev;
    li.className = ["info", "warn", "critical"].includes(ev.severity) ? ev.severity : "info";
    li.classList.toggle("streaming", ev.final === false);
    this.tipWords(li);
    this.orderTips();
    if (ev.final !== false && (ev.severity === "warn" || ev.severity === "critical")) {
      announce(ev.text || "", ev.severity === "critical");
    }
  }
  // A tip's words in the UI's language: the text, and where it came from
  // by title (never a rule's id).
  tipWords(li) {
    const ev = li.ev;
    if (!ev) return;
    li.querySelector(".tip-text").textContent = local(ev, "text");
    // A rule's title; an older orchestrator sends only its id.
    const title = local(ev, "title") || ev.rule || "";
    li.querySelector(".tip-source").textContent = ev.source === "llm" ? t("tip.llm")
      : t("tip.rules") + (title ? ": " + title : "");
    li.querySelector(".dismiss").setAttribute("aria-label", t("tip.dismiss"));
    li.title = t("tip.more");
  }
  // Critical tips first, then the rest, newest first; all but the newest
  // two of each are compact (one line) until clicked.
  orderTips() {
    const ul = $("tips");
    const rank = (li) => (li.classList.contains("critical") ? 0 : 1);
    const items = [...ul.children].sort((a, b) => rank(a) - rank(b) || b.order - a.order);
    const seen = [0, 0];
    for (const li of items) {
      const r = rank(li);
      li.classList.toggle("compact", seen[r]++ >= 2 && !li.open);
    }
    ul.replaceChildren(...items);
  }
  checklist(items) {
    this.lastChecklist = items;
    const ul = $("checklist");
    ul.replaceChildren(...items.map((i) => {
      const li = document.createElement("li");
      li.dataset.item = i.id;
      li.textContent = local(i, "label") || i.id;
      if (i.done) li.classList.add("done");
      else if (i.overdue) li.classList.add("overdue");
      li.setAttribute("aria-checked", i.done ? "true" : "false");
      li.setAttribute("role", "checkbox");
      return li;
    }));
  }
  metrics(ev) {
    const r = typeof ev.agentTalkRatio === "number" ? ev.agentTalkRatio : null;
    if (r !== null) {
      $("ratio-agent").style.width = Math.round(r * 100) + "%";
      $("ratio-agent").classList.toggle("high", r > 0.65);
      $("ratio-text").textContent = Math.round(r * 100) + "%";
    }
    if (typeof ev.agentWpm === "number") $("m-wpm").textContent = Math.round(ev.agentWpm);
    if (typeof ev.customerWpm === "number") $("m-cwpm").textContent = Math.round(ev.customerWpm);
    if (typeof ev.silenceMs === "number" && this.call && this.call.open.size === 0) this.call.silence = { ms: ev.silenceMs, at: Date.now() };
    if (typeof ev.callMs === "number" && this.call && !this.call.started) this.call.started = Date.now() - ev.callMs;
    this.tick();
  }
  tick() {
    const c = this.call;
    if (!c || c.ended) return;
    if (c.started) $("m-duration").textContent = fmtSecs(Date.now() - c.started);
    if (c.silence) {
      const ms = c.open.size > 0 ? 0 : c.silence.ms + (Date.now() - c.silence.at);
      $("m-silence").textContent = (ms / 1000).toFixed(0) + " s";
      $("m-silence").classList.toggle("long", ms >= 8000);
    }
  }
}

// ---- the supervisor view: every active call ----
class SupervisorView {
  constructor() {
    this.rows = new Map();
    $("supervisor").hidden = false;
    this.relabel();
    setInterval(() => this.tick(), 1000);
    this.start();
  }
  relabel() {
    $("who").textContent = t("who.supervisor");
    for (const row of this.rows.values()) this.render(row);
  }
  // Live first (so nothing falls between), then every active call's
  // state so far: its latest tip, a critical one, its talk ratio.
  async start() {
    // Live from now on; after a blip, resumes by relay position.
    this.feed = new Feed("callId=*", "pos", null, (ev) => this.handle(ev, false));
    let calls = [];
    try {
      ({ calls } = await api("/calls"));
    } catch (e) {
      if (e.auth) { this.feed.close(); showLogin(); }
      return;
    }
    for (const c of calls) {
      const row = this.row(c.callId);
      row.agent = row.agent || c.agent || ""; row.caller = row.caller || c.caller || "";
      row.started = row.started || (c.startedAt ? Date.parse(c.startedAt) : null);
      this.render(row);
    }
    const queue = calls.slice();
    const worker = async () => {
      while (queue.length) {
        const c = queue.shift();
        await this.replay(c.callId, c.lastSeq);
      }
    };
    // A few at a time: a floor of 200 calls must not open 200 sockets.
    await Promise.all([worker(), worker(), worker(), worker()]);
  }
  // Reads one call's events up to `upTo` (its lastSeq when listed), then
  // closes; bounded by 10 s.
  replay(id, upTo) {
    return new Promise((resolve) => {
      const ws = new WebSocket(wsUrl("callId=" + encodeURIComponent(id) + "&since=0"));
      let timer = null;
      const done = () => { clearTimeout(timer); ws.onclose = null; ws.close(); resolve(); };
      timer = setTimeout(done, 10000);
      ws.onmessage = (m) => {
        let ev;
        try { ev = JSON.parse(m.data); } catch { return; }
        this.handle(ev, true);
        if (typeof ev.seq === "number" && ev.seq >= upTo) done();
      };
      ws.onclose = done;
    });
  }
  row(id) {
    let row = this.rows.get(id);
    if (row) return row;
    const tr = document.createElement("tr");
    tr.dataset.call = id;
    for (let i = 0; i < 6; i++) tr.append(document.createElement("td"));
    tr.addEventListener("click", () => {
      const q = new URLSearchParams({ call: id });
      if (lang !== "es") q.set("lang", lang);
      location.href = "?" + q;
    });
    $("sup-calls").append(tr);
    row = { id, tr, agent: "", caller: "", started: null, ratio: null, silence: null, tipEv: null, tipSeq: 0, metricsSeq: 0, alert: false, ended: false };
    this.rows.set(id, row);
    $("sup-empty").hidden = true;
    return row;
  }
  // `past`: from a catch-up replay, where only what is still true counts
  // (the newest tip, a critical one, the ratio), never as live news.
  handle(ev, past) {
    if (!ev.callId) return;
    if (ev.type === "call.ended") {
      const row = this.rows.get(ev.callId);
      if (!row || row.ended) return;
      row.ended = true;
      this.render(row);
      setTimeout(() => {
        row.tr.remove();
        this.rows.delete(row.id);
        $("sup-empty").hidden = this.rows.size > 0;
      }, 10000);
      return;
    }
    if (ev.type === "summary") return;
    if (past && !this.rows.has(ev.callId)) return;
    const row = this.row(ev.callId);
    const seq = typeof ev.seq === "number" ? ev.seq : 0;
    switch (ev.type) {
      case "call.started":
        row.agent = ev.agent || ""; row.caller = ev.caller || "";
        row.started = Date.parse(ev.ts) || Date.now();
        break;
      case "metrics":
        if (seq && seq < row.metricsSeq) break;
        row.metricsSeq = seq;
        if (typeof ev.agentTalkRatio === "number") row.ratio = ev.agentTalkRatio;
        if (typeof ev.silenceMs === "number" && !past) row.silence = { ms: ev.silenceMs, at: Date.now() };
        if (!row.started && typeof ev.callMs === "number") row.started = Date.now() - ev.callMs;
        break;
      case "speech":
        if (!past) row.silence = { ms: 0, at: Date.now() };
        break;
      case "transcript":
        // After a final, silence runs from its end of speech (lagMs ago).
        if (!past) row.silence = { ms: ev.final === true && typeof ev.lagMs === "number" ? ev.lagMs : 0, at: Date.now() };
        break;
      case "tip":
        if (ev.final === false) break;
        if (ev.severity === "critical") row.alert = true;
        if (seq && seq < row.tipSeq) break;
        row.tipSeq = seq;
        row.tipEv = ev;
        break;
    }
    this.render(row);
  }
  render(row) {
    const td = row.tr.children;
    td[0].textContent = row.agent;
    td[1].textContent = row.caller;
    td[2].textContent = row.started ? fmtSecs(Date.now() - row.started) : "–";
    td[3].textContent = row.ratio === null ? "–" : Math.round(row.ratio * 100) + "%";
    td[4].textContent = row.silence && !row.ended ? ((row.silence.ms + Date.now() - row.silence.at) / 1000).toFixed(0) + " s" : "–";
    td[5].textContent = row.tipEv ? local(row.tipEv, "text") : "";
    row.tr.classList.toggle("alert", row.alert);
    row.tr.classList.toggle("ended", row.ended);
  }
  tick() { for (const row of this.rows.values()) if (!row.ended) this.render(row); }
}

// ---- past calls: filters in the address, newest first, a page at a time ----
class HistoryView {
  constructor() {
    $("history").hidden = false;
    // Past calls: no live connection to show.
    $("conn").hidden = true;
    showNav("history");
    this.relabel();
    const form = $("hist-form");
    for (const el of form.elements) if (el.name && params.get(el.name)) el.value = params.get(el.name);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = { view: "history" };
      for (const el of form.elements) if (el.name && el.value.trim()) q[el.name] = el.value.trim();
      history.replaceState(null, "", viewUrl(q));
      this.search(null);
    });
    $("hist-more").addEventListener("click", () => this.search(this.next));
    this.search(null);
  }
  relabel() { $("who").textContent = t("nav.history"); }
  async search(before) {
    const q = new URLSearchParams();
    for (const el of $("hist-form").elements) if (el.name && el.value.trim()) q.set(el.name, el.value.trim());
    if (before) q.set("before", before);
    $("hist-error").textContent = "";
    const { status, r, error } = await request("/history?" + q);
    if (status === 401) { showLogin(); return; }
    if (error) { $("hist-error").textContent = status === 403 ? t("call.forbidden") : error; return; }
    const page = await r.json();
    if (!before) $("hist-rows").replaceChildren();
    for (const c of page.calls) $("hist-rows").append(this.row(c));
    this.next = page.next || null;
    $("hist-more").hidden = !this.next;
    $("hist-empty").hidden = $("hist-rows").children.length > 0;
  }
  row(c) {
    const tr = document.createElement("tr");
    tr.dataset.call = c.callId;
    const cell = (text) => { const td = document.createElement("td"); td.textContent = text || ""; tr.append(td); return td; };
    cell(fmtWhen(c.startedAt));
    cell(c.agent); cell(c.caller);
    cell(typeof c.durationMs === "number" ? fmtSecs(c.durationMs) : "–");
    const sum = cell(c.summary);
    if (c.snippet) {
      const sn = document.createElement("span");
      sn.className = "snippet"; sn.textContent = c.snippet;
      sum.append(sn);
    }
    const flags = cell("");
    for (const [rule, n] of Object.entries(c.rulesFired || {})) {
      const f = document.createElement("span"); f.className = "flag"; f.textContent = rule + (n > 1 ? " ×" + n : "");
      flags.append(f);
    }
    for (const item of c.missed || []) {
      const f = document.createElement("span"); f.className = "flag missed"; f.textContent = "✗ " + item;
      flags.append(f);
    }
    tr.addEventListener("click", () => { location.href = viewUrl({ call: c.callId }); });
    return tr;
  }
}

// ---- scorecards: one chart per figure (bars per agent), a table, CSV ----
const FIGURES = [
  ["score.calls", (a) => a.calls, (v) => String(v)],
  ["score.handle", (a) => a.avgHandleMs, (v) => fmtSecs(v)],
  ["sup.ratio", (a) => a.talkRatio, (v) => Math.round(v * 100) + "%"],
  ["sup.silence", (a) => a.avgSilenceMs, (v) => (v / 1000).toFixed(1) + " s"],
  ["score.overtalk", (a) => a.avgOvertalkMs, (v) => (v / 1000).toFixed(1) + " s"],
];

class ScorecardsView {
  constructor() {
    $("scores").hidden = false;
    $("conn").hidden = true;
    showNav("scorecards");
    this.relabel();
    for (const k of ["from", "to"]) if (params.get(k)) $("score-" + k).value = params.get(k);
    $("score-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const q = { view: "scorecards" };
      for (const k of ["from", "to"]) if ($("score-" + k).value) q[k] = $("score-" + k).value;
      history.replaceState(null, "", viewUrl(q));
      this.load();
    });
    $("score-csv").addEventListener("click", () => download("/scorecards?" + this.query({ format: "csv" }), $("score-error")));
    this.load();
  }
  relabel() { $("who").textContent = t("nav.scores"); if (this.agents) this.draw(); }
  query(extra = {}) {
    const q = new URLSearchParams(extra);
    for (const k of ["from", "to"]) if ($("score-" + k).value) q.set(k, $("score-" + k).value);
    return q;
  }
  async load() {
    $("score-error").textContent = "";
    const { status, r, error } = await request("/scorecards?" + this.query());
    if (status === 401) { showLogin(); return; }
    if (error) { $("score-error").textContent = status === 403 ? t("call.forbidden") : error; return; }
    this.agents = (await r.json()).agents;
    this.draw();
  }
  draw() {
    const agents = this.agents;
    $("score-empty").hidden = agents.length > 0;
    const charts = $("score-charts");
    charts.replaceChildren();
    for (const [key, get, fmt] of FIGURES) charts.append(this.chart(t(key), agents, get, fmt));
    const rows = $("score-rows");
    rows.replaceChildren();
    for (const a of agents) {
      const tr = document.createElement("tr");
      tr.dataset.agent = a.agent;
      const cells = [a.agent, ...FIGURES.map(([, get, fmt]) => (typeof get(a) === "number" ? fmt(get(a)) : "–")),
        Object.entries(a.rules).map(([r, n]) => r + " " + n).join(", "),
        Object.entries(a.checklist).map(([i, c]) => (c.label || i) + " " + Math.round((100 * c.done) / Math.max(1, c.calls)) + "%").join(", ")];
      for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
      rows.append(tr);
    }
  }
  // A horizontal bar per agent, drawn here: no library, no network.
  chart(title, agents, get, fmt) {
    const NS = "http://www.w3.org/2000/svg";
    const fig = document.createElement("figure");
    fig.className = "chart";
    const cap = document.createElement("figcaption");
    cap.textContent = title;
    fig.append(cap);
    const rowH = 18, labelW = 80, barW = 120, W = labelW + barW + 50;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${Math.max(1, agents.length) * rowH}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title + ": " + agents.map((a) => a.agent + " " + (typeof get(a) === "number" ? fmt(get(a)) : "–")).join(", "));
    const max = Math.max(0, ...agents.map((a) => get(a) || 0));
    agents.forEach((a, i) => {
      const v = get(a) || 0;
      const y = i * rowH;
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", "0"); label.setAttribute("y", String(y + 12));
      label.textContent = a.agent.length > 14 ? a.agent.slice(0, 13) + "…" : a.agent;
      const bar = document.createElementNS(NS, "rect");
      bar.setAttribute("class", "bar");
      bar.setAttribute("x", String(labelW)); bar.setAttribute("y", String(y + 3));
      bar.setAttribute("height", String(rowH - 6));
      bar.setAttribute("width", String(max > 0 ? Math.max(1, (v / max) * barW) : 1));
      bar.dataset.agent = a.agent;
      const value = document.createElementNS(NS, "text");
      value.setAttribute("x", String(labelW + barW + 4)); value.setAttribute("y", String(y + 12));
      value.textContent = typeof get(a) === "number" ? fmt(get(a)) : "–";
      svg.append(label, bar, value);
    });
    fig.append(svg);
    return fig;
  }
}

let view = null;

function showLogin() {
  for (const id of ["agent", "supervisor", "start", "history", "scores", "nav"]) $(id).hidden = true;
  // Signing in is not a connection problem.
  $("conn").hidden = true;
  $("login").hidden = false;
  if (token) $("login-error").textContent = t("login.bad");
  sessionStorage.removeItem("cc.token");
  token = null;
}

function main() {
  $("lang").addEventListener("click", () => {
    lang = lang === "es" ? "en" : "es";
    sessionStorage.setItem("cc.lang", lang);
    applyI18n();
  });
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("login-token").value.trim();
    sessionStorage.setItem("cc.token", token);
    location.reload();
  });
  $("start-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const agent = $("start-agent").value.trim();
    if (agent) location.href = "?agent=" + encodeURIComponent(agent) + (lang !== "es" ? "&lang=" + lang : "");
  });
  if (params.get("view") === "supervisor") { view = new SupervisorView(); showNav("supervisor"); }
  else if (params.get("view") === "history") view = new HistoryView();
  else if (params.get("view") === "scorecards") view = new ScorecardsView();
  else if (params.get("agent") || params.get("call")) view = new AgentView(params.get("agent"), params.get("call"));
  else {
    $("start").hidden = false;
    $("start-supervisor").href = viewUrl({ view: "supervisor" });
    $("start-history").href = viewUrl({ view: "history" });
    $("start-scores").href = viewUrl({ view: "scorecards" });
  }
  applyI18n();
}

main();
