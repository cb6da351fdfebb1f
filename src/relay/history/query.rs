//! The questions asked of past calls: `GET /history` (filters, full-text
//! search, a cursor) and `GET /scorecards` (figures per agent). Query
//! strings are checked here, so bad input is a clear 400, never a 500.

use std::collections::BTreeMap;

use rusqlite::{Connection, ToSql};
use serde::Serialize;

use crate::event::{now_unix_ms, parse_utc, rfc3339_millis};

const DAY_MS: i64 = 86_400_000;
/// The longest period one question may cover.
pub const MAX_RANGE_DAYS: i64 = 400;
/// Rows per page at most.
pub const MAX_LIMIT: usize = 500;
/// Words in one search at most.
const MAX_WORDS: usize = 16;
const MAX_QUERY_CHARS: usize = 200;

/// Which calls a token may see: every call, or those of some agents and
/// some call ids (the token's scopes).
#[derive(Debug, Clone)]
pub enum Scope {
    All,
    Some {
        agents: Vec<String>,
        calls: Vec<String>,
    },
}

/// A period, `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The filters of `GET /history`.
#[derive(Debug, Clone)]
pub struct Filter {
    pub period: Period,
    pub agent: Option<String>,
    /// Words that must all be said in the call (FTS5, accents folded).
    pub words: Vec<String>,
    /// A rule that fired.
    pub rule: Option<String>,
    /// A checklist item left undone.
    pub missed: Option<String>,
    pub limit: usize,
    /// Rows strictly after this cursor (from the previous page's `next`).
    pub before: Option<(i64, String)>,
}

/// Parses the query parameters shared by both questions and those of one:
/// `allowed` names the extra ones. Unknown or repeated names are errors.
fn params(query: Option<&str>, allowed: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = crate::http::percent_decode(k)
            .ok_or("a parameter name is badly percent-encoded or not UTF-8")?;
        let v = crate::http::percent_decode(v)
            .ok_or_else(|| format!("{k}: badly percent-encoded or not UTF-8"))?;
        if k == "token" {
            continue;
        }
        if !["from", "to", "agent"].contains(&k.as_str()) && !allowed.contains(&k.as_str()) {
            let mut known = vec!["from", "to", "agent"];
            known.extend_from_slice(allowed);
            return Err(format!(
                "unknown parameter {k:?}; known: {}",
                known.join(", ")
            ));
        }
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("{k} given twice"));
        }
    }
    Ok(out)
}

/// `from`/`to`: days (`2026-11-01`, `to` counting the whole day) or RFC
/// 3339 UTC times; by default the last 30 days. At most a bounded range.
fn period(p: &BTreeMap<String, String>, now_ms: i64) -> Result<Period, String> {
    let when = |k: &str, end_of_day: bool| -> Result<Option<i64>, String> {
        p.get(k)
            .map(|v| {
                let ms = parse_utc(v).ok_or_else(|| {
                    format!("{k} must be a day like 2026-11-26 or a UTC time like 2026-11-26T09:00:00Z, got {v:?}")
                })?;
                Ok(if end_of_day && v.len() == 10 { ms + DAY_MS } else { ms })
            })
            .transpose()
    };
    let to_ms = when("to", true)?.unwrap_or(now_ms + 1);
    let from_ms = when("from", false)?.unwrap_or(to_ms - 30 * DAY_MS);
    if from_ms >= to_ms {
        return Err(format!(
            "from must be before to: from is {}, to is {} (now when not given)",
            rfc3339_millis(from_ms),
            rfc3339_millis(to_ms)
        ));
    }
    if to_ms - from_ms > MAX_RANGE_DAYS * DAY_MS {
        return Err(format!(
            "from..to covers more than {MAX_RANGE_DAYS} days; ask for a shorter period"
        ));
    }
    Ok(Period { from_ms, to_ms })
}

fn id_param(p: &BTreeMap<String, String>, k: &str, max: usize) -> Result<Option<String>, String> {
    match p.get(k) {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control) => {
            Ok(Some(v.clone()))
        }
        Some(_) => Err(format!("{k} must be 1 to {max} characters")),
    }
}

/// The words of a search, each to be matched as a word: letters and
/// digits, with spaces and ordinary punctuation between them. FTS5's own
/// syntax (quotes, `*`, `^`, `:`, parentheses, ...) is refused, so what a
/// user types is never read as an FTS5 query.
pub fn search_words(q: &str) -> Result<Vec<String>, String> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(format!("q is longer than {MAX_QUERY_CHARS} characters"));
    }
    if let Some(c) = q
        .chars()
        .find(|c| !(c.is_alphanumeric() || c.is_whitespace() || ".,;¿?¡!'-".contains(*c)))
    {
        return Err(format!(
            "q: {c:?} is not searchable; give words only (every word must be said in the call)"
        ));
    }
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if words.is_empty() {
        return Err("q holds no word to search for".into());
    }
    if words.len() > MAX_WORDS {
        return Err(format!("q has more than {MAX_WORDS} words"));
    }
    Ok(words)
}

impl Filter {
    /// Parses `GET /history`'s query string.
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let p = params(query, &["q", "rule", "missed", "limit", "before"])?;
        let period = period(&p, now_unix_ms())?;
        let words = match p.get("q").map(|q| q.trim()) {
            None | Some("") => Vec::new(),
            Some(q) => search_words(q)?,
        };
        let limit = match p.get("limit") {
            None => 50,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}, got {v:?}"))?,
        };
        let before = match p.get("before") {
            None => None,
            Some(v) => {
                let bad =
                    || format!("before must be a `next` value from an earlier page, got {v:?}");
                let (ms, id) = v.split_once('_').ok_or_else(bad)?;
                let ms = ms.parse::<i64>().map_err(|_| bad())?;
                if !crate::event::is_valid_call_id(id) {
                    return Err(bad());
                }
                Some((ms, id.to_owned()))
            }
        };
        Ok(Filter {
            period,
            agent: id_param(&p, "agent", 128)?,
            words,
            rule: id_param(&p, "rule", 64)?,
            missed: id_param(&p, "missed", 64)?,
            limit,
            before,
        })
    }
}

/// One past call, as `GET /history` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PastCall {
    pub call_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// The call's length: the summary's, else `call.started` to `call.ended`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    pub events: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub rules_fired: BTreeMap<String, i64>,
    /// Checklist items left undone.
    pub missed: Vec<String>,
    /// Where the search words were said, `[` `]` around them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
    #[serde(skip)]
    when_ms: i64,
}

/// A page of past calls and the cursor of the next one.
#[derive(Debug, Serialize)]
pub struct Page {
    pub calls: Vec<PastCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `(sql, params)` restricting `calls c` to a scope.
fn scope_sql(scope: &Scope, args: &mut Vec<Box<dyn ToSql>>) -> String {
    match scope {
        Scope::All => String::new(),
        Scope::Some { agents, calls } => {
            let mut ors = Vec::new();
            for a in agents {
                args.push(Box::new(a.clone()));
                ors.push(format!("c.agent = ?{}", args.len()));
            }
            for id in calls {
                args.push(Box::new(id.clone()));
                ors.push(format!("c.call_id = ?{}", args.len()));
            }
            if ors.is_empty() {
                " AND 0".into()
            } else {
                format!(" AND ({})", ors.join(" OR "))
            }
        }
    }
}

const WHEN: &str = "COALESCE(c.started_ms, c.last_ms)";

/// The FTS5 query matching every word: each quoted, so none is syntax.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Above this many calls with the rarest search word, a search walks the
/// calls newest first instead of listing every match.
const WALK_FROM_DOCS: i64 = 2_000;

/// A word as FTS5's `unicode61 remove_diacritics 2` indexes it.
fn indexed_form(word: &str) -> String {
    word.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            other => other,
        })
        .collect()
}

/// Calls (documents) holding the rarest of `words`; 0 when one is unknown.
/// Only chooses how to search: the answer is the same either way.
fn fewest_docs(conn: &Connection, words: &[String]) -> rusqlite::Result<i64> {
    use rusqlite::OptionalExtension;
    let mut stmt = conn.prepare_cached("SELECT doc FROM transcript_vocab WHERE term = ?1")?;
    let mut fewest = i64::MAX;
    for w in words {
        let n: i64 = stmt
            .query_row([indexed_form(w)], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        fewest = fewest.min(n);
    }
    Ok(fewest)
}

/// Past calls matching `f` that `scope` may see, newest first.
pub fn list(conn: &Connection, f: &Filter, scope: &Scope) -> rusqlite::Result<Page> {
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(f.period.from_ms), Box::new(f.period.to_ms)];
    let mut sql = format!(
        "SELECT c.call_id, c.agent, c.caller, c.direction, {WHEN}, c.ended_ms, c.end_reason,
                c.last_seq, s.text, COALESCE(s.duration_ms, c.ended_ms - c.started_ms)
         FROM calls c LEFT JOIN call_summary s ON s.call_id = c.call_id
         WHERE {WHEN} >= ?1 AND {WHEN} < ?2"
    );
    sql += &scope_sql(scope, &mut args);
    if let Some(agent) = &f.agent {
        args.push(Box::new(agent.clone()));
        sql += &format!(" AND c.agent = ?{}", args.len());
    }
    if !f.words.is_empty() {
        args.push(Box::new(fts_query(&f.words)));
        let q = args.len();
        // Words said in few calls: list those calls, then sort them. Words
        // said in many: walk the calls newest first and look each up, which
        // stops at a page (listing them all would read most of the index).
        sql += &if fewest_docs(conn, &f.words)? <= WALK_FROM_DOCS {
            format!(
                " AND c.call_id IN (SELECT call_id FROM transcript_fts WHERE transcript_fts MATCH ?{q})"
            )
        } else {
            format!(
                " AND EXISTS (SELECT 1 FROM transcript_fts t WHERE transcript_fts MATCH ?{q}
                   AND t.rowid BETWEEN (SELECT MIN(pos) FROM events e WHERE e.call_id = c.call_id)
                                   AND (SELECT MAX(pos) FROM events e WHERE e.call_id = c.call_id)
                   AND t.call_id = c.call_id)"
            )
        };
    }
    if let Some(rule) = &f.rule {
        args.push(Box::new(rule.clone()));
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM call_rules r WHERE r.call_id = c.call_id AND r.rule = ?{} AND r.n > 0)",
            args.len()
        );
    }
    if let Some(item) = &f.missed {
        args.push(Box::new(item.clone()));
        sql += &format!(
            " AND EXISTS (SELECT 1 FROM call_checklist k WHERE k.call_id = c.call_id AND k.item = ?{} AND k.done = 0)",
            args.len()
        );
    }
    if let Some((ms, id)) = &f.before {
        args.push(Box::new(*ms));
        args.push(Box::new(id.clone()));
        sql += &format!(
            " AND ({WHEN} < ?{a} OR ({WHEN} = ?{a} AND c.call_id < ?{b}))",
            a = args.len() - 1,
            b = args.len()
        );
    }
    args.push(Box::new((f.limit + 1) as i64));
    sql += &format!(
        " ORDER BY {WHEN} DESC, c.call_id DESC LIMIT ?{}",
        args.len()
    );

    let mut stmt = conn.prepare(&sql)?;
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut calls = stmt
        .query_map(refs.as_slice(), |r| {
            let when_ms: i64 = r.get(4)?;
            Ok(PastCall {
                call_id: r.get(0)?,
                agent: r.get(1)?,
                caller: r.get(2)?,
                direction: r.get(3)?,
                started_at: rfc3339_millis(when_ms),
                ended_at: r.get::<_, Option<i64>>(5)?.map(rfc3339_millis),
                end_reason: r.get(6)?,
                events: r.get(7)?,
                summary: r.get(8)?,
                duration_ms: r.get::<_, Option<i64>>(9)?.filter(|d| *d >= 0),
                rules_fired: BTreeMap::new(),
                missed: Vec::new(),
                snippet: None,
                when_ms,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = if calls.len() > f.limit {
        calls.truncate(f.limit);
        calls.last().map(|c| format!("{}_{}", c.when_ms, c.call_id))
    } else {
        None
    };
    let mut rules =
        conn.prepare_cached("SELECT rule, n FROM call_rules WHERE call_id = ?1 ORDER BY rule")?;
    let mut missed = conn.prepare_cached(
        "SELECT item FROM call_checklist WHERE call_id = ?1 AND done = 0 ORDER BY item",
    )?;
    // The call's own stretch of the index only (its events' positions).
    let mut snippet = conn.prepare_cached(
        "SELECT snippet(transcript_fts, 0, '[', ']', '…', 12) FROM transcript_fts
         WHERE transcript_fts MATCH ?1
           AND rowid BETWEEN (SELECT MIN(pos) FROM events WHERE call_id = ?2)
                         AND (SELECT MAX(pos) FROM events WHERE call_id = ?2)
           AND call_id = ?2 LIMIT 1",
    )?;
    let query = fts_query(&f.words);
    for c in &mut calls {
        c.rules_fired = rules
            .query_map([&c.call_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        c.missed = missed
            .query_map([&c.call_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !f.words.is_empty() {
            c.snippet = snippet
                .query_map([&query, &c.call_id], |r| r.get(0))?
                .next()
                .transpose()?;
        }
    }
    Ok(Page { calls, next })
}

/// One agent's figures over a period.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scorecard {
    pub agent: String,
    pub calls: i64,
    /// Mean handle time (the calls with a known length).
    pub avg_handle_ms: Option<f64>,
    pub total_handle_ms: i64,
    /// Mean of the calls' agent talk ratios (summaries).
    pub talk_ratio: Option<f64>,
    pub avg_silence_ms: Option<f64>,
    pub avg_overtalk_ms: Option<f64>,
    /// Rule -> tips it gave over the period.
    pub rules: BTreeMap<String, i64>,
    /// Checklist item -> done in how many of the calls that had it.
    pub checklist: BTreeMap<String, Compliance>,
}

#[derive(Debug, Serialize)]
pub struct Compliance {
    pub label: String,
    pub done: i64,
    pub calls: i64,
}

/// The query of `GET /scorecards`.
#[derive(Debug, Clone)]
pub struct ScorecardQuery {
    pub period: Period,
    pub agent: Option<String>,
    pub csv: bool,
}

impl ScorecardQuery {
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let p = params(query, &["format"])?;
        let csv = match p.get("format").map(|f| f.to_ascii_lowercase()).as_deref() {
            None | Some("json") => false,
            Some("csv") => true,
            Some(other) => return Err(format!("format must be json or csv, got {other:?}")),
        };
        Ok(Self {
            period: period(&p, now_unix_ms())?,
            agent: id_param(&p, "agent", 128)?,
            csv,
        })
    }
}

/// Scorecards of the agents `scope` may see, by agent.
pub fn scorecards(
    conn: &Connection,
    q: &ScorecardQuery,
    scope: &Scope,
) -> rusqlite::Result<Vec<Scorecard>> {
    let mut args: Vec<Box<dyn ToSql>> = vec![Box::new(q.period.from_ms), Box::new(q.period.to_ms)];
    let mut filter = format!("{WHEN} >= ?1 AND {WHEN} < ?2 AND c.agent IS NOT NULL");
    filter += &scope_sql(scope, &mut args);
    if let Some(agent) = &q.agent {
        args.push(Box::new(agent.clone()));
        filter += &format!(" AND c.agent = ?{}", args.len());
    }
    let refs: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
    let mut cards: BTreeMap<String, Scorecard> = BTreeMap::new();
    let sql = format!(
        "SELECT c.agent, COUNT(*),
                AVG(COALESCE(s.duration_ms, c.ended_ms - c.started_ms)),
                SUM(COALESCE(s.duration_ms, c.ended_ms - c.started_ms)),
                AVG(s.talk_ratio), AVG(s.silence_ms), AVG(s.overtalk_ms)
         FROM calls c LEFT JOIN call_summary s ON s.call_id = c.call_id
         WHERE {filter} GROUP BY c.agent"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(refs.as_slice(), |r| {
        Ok(Scorecard {
            agent: r.get(0)?,
            calls: r.get(1)?,
            avg_handle_ms: r.get(2)?,
            total_handle_ms: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
            talk_ratio: r.get(4)?,
            avg_silence_ms: r.get(5)?,
            avg_overtalk_ms: r.get(6)?,
            rules: BTreeMap::new(),
            checklist: BTreeMap::new(),
        })
    })?;
    for card in rows {
        let card = card?;
        cards.insert(card.agent.clone(), card);
    }
    let sql = format!(
        "SELECT c.agent, r.rule, SUM(r.n) FROM calls c JOIN call_rules r ON r.call_id = c.call_id
         WHERE {filter} GROUP BY c.agent, r.rule"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(refs.as_slice(), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (agent, rule, n) = row?;
        if let Some(card) = cards.get_mut(&agent) {
            card.rules.insert(rule, n);
        }
    }
    let sql = format!(
        "SELECT c.agent, k.item, MAX(k.label), SUM(k.done), COUNT(*)
         FROM calls c JOIN call_checklist k ON k.call_id = c.call_id
         WHERE {filter} GROUP BY c.agent, k.item"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(refs.as_slice(), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            Compliance {
                label: r.get(2)?,
                done: r.get(3)?,
                calls: r.get(4)?,
            },
        ))
    })?;
    for row in rows {
        let (agent, item, c) = row?;
        if let Some(card) = cards.get_mut(&agent) {
            card.checklist.insert(item, c);
        }
    }
    Ok(cards.into_values().collect())
}

/// The scorecards as CSV: one row per agent, a column per figure, per
/// rule and per checklist item (the share of calls it was done in).
pub fn scorecards_csv(cards: &[Scorecard]) -> String {
    let rules: std::collections::BTreeSet<&str> = cards
        .iter()
        .flat_map(|c| c.rules.keys().map(String::as_str))
        .collect();
    let items: std::collections::BTreeSet<&str> = cards
        .iter()
        .flat_map(|c| c.checklist.keys().map(String::as_str))
        .collect();
    let mut header = vec![
        "agent".to_owned(),
        "calls".into(),
        "avg_handle_secs".into(),
        "total_handle_secs".into(),
        "agent_talk_ratio".into(),
        "avg_silence_secs".into(),
        "avg_overtalk_secs".into(),
    ];
    header.extend(rules.iter().map(|r| format!("tips:{r}")));
    header.extend(items.iter().map(|i| format!("done:{i}")));
    let mut out = csv_row(&header);
    let secs = |ms: Option<f64>| ms.map(|v| format!("{:.1}", v / 1000.0)).unwrap_or_default();
    for c in cards {
        let mut row = vec![
            c.agent.clone(),
            c.calls.to_string(),
            secs(c.avg_handle_ms),
            format!("{:.1}", c.total_handle_ms as f64 / 1000.0),
            c.talk_ratio.map(|v| format!("{v:.3}")).unwrap_or_default(),
            secs(c.avg_silence_ms),
            secs(c.avg_overtalk_ms),
        ];
        row.extend(
            rules
                .iter()
                .map(|r| c.rules.get(*r).copied().unwrap_or(0).to_string()),
        );
        row.extend(items.iter().map(|i| {
            c.checklist
                .get(*i)
                .map(|k| format!("{:.3}", k.done as f64 / k.calls.max(1) as f64))
                .unwrap_or_default()
        }));
        out += &csv_row(&row);
    }
    out
}

/// One CSV line: fields quoted where needed, and a field a spreadsheet
/// would run as a formula (`=`, `+`, `-`, `@` first) written as text.
fn csv_row(fields: &[String]) -> String {
    let cells: Vec<String> = fields
        .iter()
        .map(|f| {
            let f = if f.starts_with(['=', '+', '-', '@']) && f.parse::<f64>().is_err() {
                format!("'{f}")
            } else {
                f.clone()
            };
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect();
    cells.join(",") + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let bad = [
            ("from=yesterday", "from must be a day"),
            ("from=2026-02-30", "from must be a day"),
            ("from=2020-01-01&to=2026-01-01", "more than 400 days"),
            ("from=2026-11-02&to=2026-11-01", "before"),
            ("q=%22tarjeta%22", "not searchable"),
            ("q=tarj*", "not searchable"),
            ("q=a%20OR%20(b", "not searchable"),
            ("q=col:valor", "not searchable"),
            ("q=...", "no word"),
            ("limit=0", "limit must be"),
            ("limit=5000", "limit must be"),
            ("before=xyz", "before must be"),
            ("agent=a&agent=b", "twice"),
            ("sort=asc", "unknown parameter"),
            ("q=%FF", "UTF-8"),
            ("q=%zz", "percent-encoded"),
        ];
        for (q, want) in bad {
            let err = Filter::parse(Some(q)).unwrap_err();
            assert!(err.contains(want), "{q}: {err}");
        }
        let ok = Filter::parse(Some(
            "from=2026-11-01&to=2026-11-01&q=Conferencia+número&limit=10&token=x",
        ))
        .unwrap();
        assert_eq!(ok.period.to_ms - ok.period.from_ms, DAY_MS);
        assert_eq!(ok.words, ["Conferencia", "número"]);
        assert_eq!(fts_query(&ok.words), "\"Conferencia\" \"número\"");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(
            csv_row(&[
                "=SUM(A1)".into(),
                "a,b".into(),
                "-1.5".into(),
                "x\"y".into()
            ]),
            "'=SUM(A1),\"a,b\",-1.5,\"x\"\"y\"\r\n"
        );
    }
}
