//! What the SQLite store keeps beside its events so past calls can be
//! found: every final transcript in an FTS5 index (accents folded), the
//! rules fired, the checklist and the summary of each call. Written in the
//! same transaction as the events; erased and purged with them.

use rusqlite::{Connection, Transaction, params};

use crate::event::{ChecklistItem, Envelope, Event};

/// Tables and indexes of the history, created with the event store.
/// `secure-delete` makes FTS5 remove a deleted row's words from its index
/// at once, so an erased call's words are not left in the file.
pub const SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS transcript_fts USING fts5(
    text, call_id UNINDEXED, speaker UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO transcript_fts (transcript_fts, rank) VALUES ('secure-delete', 1);
CREATE VIRTUAL TABLE IF NOT EXISTS transcript_vocab USING fts5vocab(transcript_fts, row);
CREATE TABLE IF NOT EXISTS call_rules (
    call_id TEXT NOT NULL, rule TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (call_id, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS call_checklist (
    call_id TEXT NOT NULL, item TEXT NOT NULL, label TEXT NOT NULL, done INTEGER NOT NULL,
    PRIMARY KEY (call_id, item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS call_summary (
    call_id TEXT PRIMARY KEY, text TEXT NOT NULL, llm INTEGER NOT NULL,
    duration_ms INTEGER, talk_ratio REAL, silence_ms INTEGER, overtalk_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS calls_by_when ON calls (COALESCE(started_ms, last_ms));
CREATE INDEX IF NOT EXISTS calls_by_agent ON calls (agent, COALESCE(started_ms, last_ms));
";

/// Characters of one transcript indexed at most: an utterance is far
/// shorter; a longer text is searchable by its beginning.
const MAX_INDEXED_CHARS: usize = 4_000;

/// The schema version with the history in it (`PRAGMA user_version`).
const VERSION: i64 = 1;

/// Creates the history's tables, and fills them from the events already
/// stored when the store was made by a version without them.
pub fn create(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let mut indexed = 0u64;
    {
        let mut stmt = tx.prepare("SELECT pos, call_id, body FROM events ORDER BY pos")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (pos, call_id, body): (i64, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            if index_body(&tx, pos, &call_id, &body)? {
                indexed += 1;
            }
        }
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    if indexed > 0 {
        tracing::info!(
            events = indexed,
            "call history built from the stored events"
        );
    }
    Ok(())
}

/// Whether events of this type feed the history (the others are never
/// decoded for it).
pub fn indexed(event_type: &str) -> bool {
    matches!(event_type, "transcript" | "tip" | "checklist" | "summary")
}

/// Takes note of one stored event given as its JSON text (an older store
/// being indexed, the archive copying the stream). Returns whether it
/// added to the history.
pub fn index_body(
    tx: &Transaction<'_>,
    pos: i64,
    call_id: &str,
    body: &str,
) -> rusqlite::Result<bool> {
    let Ok(envelope) = Envelope::parse(body.as_bytes()) else {
        return Ok(false);
    };
    if !indexed(envelope.event_type()) {
        return Ok(false);
    }
    match envelope.decode() {
        Some(event) => index(tx, pos, call_id, &event).map(|()| true),
        None => Ok(false),
    }
}

/// Takes note of one event being stored at `pos`.
pub fn index(tx: &Transaction<'_>, pos: i64, call_id: &str, event: &Event) -> rusqlite::Result<()> {
    match event {
        Event::Transcript(t) if t.is_final && !t.text.trim().is_empty() => {
            tx.prepare_cached(
                "INSERT INTO transcript_fts (rowid, text, call_id, speaker) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                pos,
                clip(&t.text, MAX_INDEXED_CHARS),
                call_id,
                t.speaker.as_str()
            ])?;
        }
        Event::Tip(t) if t.is_final => {
            if let Some(rule) = t.rule.as_deref().filter(|r| !r.is_empty()) {
                tx.prepare_cached(
                    "INSERT INTO call_rules (call_id, rule, n) VALUES (?1, ?2, 1)
                     ON CONFLICT (call_id, rule) DO UPDATE SET n = n + 1",
                )?
                .execute(params![call_id, rule])?;
            }
        }
        Event::Checklist(c) => checklist(tx, call_id, &c.items)?,
        Event::Summary(s) => {
            // The summary counts every rule of the call: it replaces what
            // the tips added up.
            tx.prepare_cached("DELETE FROM call_rules WHERE call_id = ?1")?
                .execute(params![call_id])?;
            let mut insert =
                tx.prepare_cached("INSERT INTO call_rules (call_id, rule, n) VALUES (?1, ?2, ?3)")?;
            for (rule, n) in &s.rules_fired {
                insert.execute(params![
                    call_id,
                    rule,
                    i64::try_from(*n).unwrap_or(i64::MAX)
                ])?;
            }
            checklist(tx, call_id, &s.checklist)?;
            let m = &s.metrics;
            tx.prepare_cached(
                "INSERT INTO call_summary
                   (call_id, text, llm, duration_ms, talk_ratio, silence_ms, overtalk_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (call_id) DO UPDATE SET text = excluded.text,
                   llm = excluded.llm, duration_ms = excluded.duration_ms,
                   talk_ratio = excluded.talk_ratio, silence_ms = excluded.silence_ms,
                   overtalk_ms = excluded.overtalk_ms",
            )?
            .execute(params![
                call_id,
                s.text,
                s.source == crate::event::Source::Llm,
                i64::try_from(s.duration_ms).ok(),
                m.agent_talk_ratio,
                i64::try_from(m.silence_ms).ok(),
                i64::try_from(m.overtalk_ms).ok(),
            ])?;
        }
        _ => {}
    }
    Ok(())
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

fn checklist(tx: &Transaction<'_>, call_id: &str, items: &[ChecklistItem]) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO call_checklist (call_id, item, label, done) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (call_id, item) DO UPDATE SET label = excluded.label, done = excluded.done",
    )?;
    for item in items {
        upsert.execute(params![call_id, item.id, item.label, item.done])?;
    }
    Ok(())
}

/// Removes a call's history: its transcripts from the index (before its
/// events go), its rules, checklist and summary.
pub fn erase(tx: &Transaction<'_>, call_id: &str) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM transcript_fts WHERE rowid IN (SELECT pos FROM events WHERE call_id = ?1)",
        params![call_id],
    )?;
    forget(tx, call_id)
}

/// Removes a call's rules, checklist and summary.
pub fn forget(tx: &Transaction<'_>, call_id: &str) -> rusqlite::Result<()> {
    for table in ["call_rules", "call_checklist", "call_summary"] {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE call_id = ?1"))?
            .execute(params![call_id])?;
    }
    Ok(())
}

/// Removes the index entries of the events a retention step is about to
/// delete (the same `pos < first_kept` chunk of at most `limit`).
pub fn purge(tx: &Transaction<'_>, first_kept: i64, limit: i64) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM transcript_fts WHERE rowid IN
           (SELECT pos FROM events WHERE pos < ?1 ORDER BY pos LIMIT ?2)",
        params![first_kept, limit],
    )?;
    Ok(())
}
