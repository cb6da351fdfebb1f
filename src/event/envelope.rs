//! The envelope of docs/contract.md: what the relay checks on every event
//! it accepts, whatever its type, and the clock it stamps `ts` with.

use serde_json::{Map, Value};

/// Largest event body the relay accepts, in bytes (docs/contract.md).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Why an event was refused. Each message is shown to the publisher as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("an event must be a JSON object")]
    NotObject,
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("field `{0}` must be a string")]
    NotString(&'static str),
    #[error("`type` must match ^[a-z][a-z0-9_.-]{{0,63}}$, got {0:?}")]
    BadType(String),
    #[error("`callId` must match ^[A-Za-z0-9][A-Za-z0-9._:-]{{0,127}}$, got {0:?}")]
    BadCallId(String),
    #[error("`callId` \"*\" is for subscribing; an event belongs to one call")]
    WildcardCallId,
}

/// `^[a-z][a-z0-9_.-]{0,63}$`
pub fn is_valid_type(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`
pub fn is_valid_call_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
}

/// Fields of the catalogue's events that hold ids, names, enums and
/// times, never words someone said: what the relay's redaction leaves as
/// it is. Every other string field is speech or may quote it.
pub const NOT_SPEECH: &[&str] = &[
    "type",
    "callId",
    "ts",
    "seq",
    "pos",
    "speaker",
    "utteranceId",
    "tipId",
    "rule",
    "source",
    "severity",
    "id",
    "agent",
    "caller",
    "direction",
    "mode",
    "gap",
    "reason",
    "channels",
    REDACTED,
];

/// The relay's own field on a redacted event: `{category: count}`.
pub const REDACTED: &str = "redacted";

/// An event whose envelope has been checked: a JSON object with a valid
/// `type` and `callId`. The other fields pass through untouched.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The whole event as received (field order kept).
    pub fields: Map<String, Value>,
}

impl Envelope {
    /// Parses and validates one event body.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Validates an already parsed event.
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(fields) = value else {
            return Err(EnvelopeError::NotObject);
        };
        let ty = string_field(&fields, "type")?;
        if !is_valid_type(ty) {
            return Err(EnvelopeError::BadType(truncate(ty)));
        }
        let call_id = string_field(&fields, "callId")?;
        if call_id == "*" {
            return Err(EnvelopeError::WildcardCallId);
        }
        if !is_valid_call_id(call_id) {
            return Err(EnvelopeError::BadCallId(truncate(call_id)));
        }
        if fields.get("ts").is_some_and(|ts| !ts.is_string()) {
            return Err(EnvelopeError::NotString("ts"));
        }
        Ok(Self { fields })
    }

    pub fn event_type(&self) -> &str {
        self.fields["type"].as_str().unwrap_or_default()
    }

    pub fn call_id(&self) -> &str {
        self.fields["callId"].as_str().unwrap_or_default()
    }

    /// Who spoke, for an event that names a speaker (a transcript).
    pub fn speaker(&self) -> Option<&str> {
        self.fields.get("speaker").and_then(Value::as_str)
    }

    /// A partial transcript or a tip still streaming (`"final": false`):
    /// a later event of the same utterance or tip replaces it.
    pub fn is_partial(&self) -> bool {
        self.fields.get("final") == Some(&Value::Bool(false))
    }

    /// Sets (or, with `None`, removes) the relay's `redacted` counts.
    pub fn set_redacted(&mut self, counts: Option<Map<String, Value>>) {
        match counts {
            Some(c) => {
                self.fields.insert(REDACTED.into(), Value::Object(c));
            }
            None => {
                self.fields.remove(REDACTED);
            }
        }
    }

    /// The event as its catalogue type; `None` for a type the catalogue
    /// does not know, or fields that do not fit it.
    pub fn decode(&self) -> Option<super::Event> {
        serde_json::from_value(Value::Object(self.fields.clone())).ok()
    }
}

fn string_field<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, EnvelopeError> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(EnvelopeError::Missing(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(EnvelopeError::NotString(name)),
    }
}

/// Keeps error messages short when a client sends a huge bad value.
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Formats a Unix time in milliseconds as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-24T20:01:10.123Z`.
pub fn rfc3339_millis(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's civil-to-days, the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a day (`2026-11-26`, its first millisecond, UTC) or an RFC 3339
/// UTC time (`2026-11-26T09:30:00Z`, `...:00.250Z`) as Unix milliseconds.
/// `None` for anything else, a date that does not exist included.
pub fn parse_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        (!part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let day_ms = days_from_civil(y, m as u32, d as u32) * 86_400_000;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if !matches!(b[10], b'T' | b't') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut ms = 0;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    if !matches!(rest, "Z" | "z") {
        return None;
    }
    Some(day_ms + ((h * 60 + mi) * 60 + sec) * 1000 + ms)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_utc_days_and_times() {
        assert_eq!(parse_utc("1970-01-01"), Some(0));
        assert_eq!(
            parse_utc("2026-11-24T20:01:10.123Z"),
            Some(1_795_550_470_123)
        );
        assert_eq!(
            rfc3339_millis(parse_utc("2024-02-29T23:59:59Z").unwrap()),
            "2024-02-29T23:59:59.000Z"
        );
        assert_eq!(
            parse_utc("2026-11-26T09:00:00.5Z"),
            parse_utc("2026-11-26T09:00:00.500Z")
        );
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2025-02-29",
            "2026-11-31",
            "26-11-2026",
            "2026/11/26",
            "2026-11-26T25:00:00Z",
            "2026-11-26T09:00:00",
            "2026-11-26T09:00:00+01:00",
            "2026-11-26 09:00:00Z",
            "yesterday",
            "2026-1-01",
            "2026-11-26T09:00:00.Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn type_pattern() {
        assert!(is_valid_type("call.started"));
        assert!(is_valid_type("x"));
        assert!(is_valid_type(&format!("a{}", "b".repeat(63))));
        assert!(!is_valid_type(&format!("a{}", "b".repeat(64))));
        assert!(!is_valid_type(""));
        assert!(!is_valid_type("Call"));
        assert!(!is_valid_type("1abc"));
        assert!(!is_valid_type("a b"));
        assert!(!is_valid_type("añ"));
    }

    #[test]
    fn call_id_pattern() {
        assert!(is_valid_call_id("live"));
        assert!(is_valid_call_id("1700000000.42"));
        assert!(is_valid_call_id("A:b-c_d.e"));
        assert!(is_valid_call_id(&"a".repeat(128)));
        assert!(!is_valid_call_id(&"a".repeat(129)));
        assert!(!is_valid_call_id(".a"));
        assert!(!is_valid_call_id("a/b"));
        assert!(!is_valid_call_id(""));
    }

    #[test]
    fn envelope_errors_are_specific() {
        assert!(matches!(Envelope::parse(b"{"), Err(EnvelopeError::Json(_))));
        assert_eq!(
            Envelope::parse(b"[1]").unwrap_err(),
            EnvelopeError::NotObject
        );
        assert_eq!(
            Envelope::parse(br#"{"callId":"a"}"#).unwrap_err(),
            EnvelopeError::Missing("type")
        );
        assert_eq!(
            Envelope::parse(br#"{"type":"t","callId":5}"#).unwrap_err(),
            EnvelopeError::NotString("callId")
        );
        assert_eq!(
            Envelope::parse(br#"{"type":"t","callId":"*"}"#).unwrap_err(),
            EnvelopeError::WildcardCallId
        );
        assert_eq!(
            Envelope::parse(br#"{"type":"t","callId":"a","ts":1}"#).unwrap_err(),
            EnvelopeError::NotString("ts")
        );
        let long = format!(r#"{{"type":"t","callId":"{}"}}"#, "é".repeat(200));
        match Envelope::parse(long.as_bytes()).unwrap_err() {
            EnvelopeError::BadCallId(s) => assert!(s.len() < 90),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn envelope_keeps_unknown_fields() {
        let e = Envelope::parse(br#"{"type":"x.y","callId":"c1","z":[1,2]}"#).unwrap();
        assert_eq!(e.event_type(), "x.y");
        assert_eq!(e.call_id(), "c1");
        assert_eq!(e.fields["z"], serde_json::json!([1, 2]));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_795_550_470_007),
            "2026-11-24T20:01:10.007Z"
        );
    }
}
