//! The ids ari-coach gives the channels and bridges it creates. They are
//! derived from the call id, so that after a reconnect or a restart
//! `GET /channels` and `GET /bridges` alone tell which call each belongs to.
//!
//! | object | id |
//! |---|---|
//! | agent leg (dialled) | `{call}-agent` |
//! | call bridge (customer + agent) | `{call}-call` |
//! | snoop on a party | `{call}-snoop-{speaker}` |
//! | ExternalMedia channel | `{call}-em-{speaker}` |
//! | tap bridge (snoop + ExternalMedia), named `tap:{snooped channel id}` | `{call}-tap-{speaker}` |

use crate::event::Speaker;

/// The parties ari-coach taps, in the order of its per-party arrays.
pub const SPEAKERS: [Speaker; 2] = [Speaker::Customer, Speaker::Agent];

pub fn agent(call: &str) -> String {
    format!("{call}-agent")
}

pub fn call_bridge(call: &str) -> String {
    format!("{call}-call")
}

pub fn snoop(call: &str, speaker: Speaker) -> String {
    format!("{call}-snoop-{speaker}")
}

pub fn external_media(call: &str, speaker: Speaker) -> String {
    format!("{call}-em-{speaker}")
}

pub fn tap_bridge(call: &str, speaker: Speaker) -> String {
    format!("{call}-tap-{speaker}")
}

/// The tap bridge's name records which channel it listens to.
pub fn tap_bridge_name(snooped: &str) -> String {
    format!("tap:{snooped}")
}

pub fn snooped_of(bridge_name: &str) -> Option<&str> {
    bridge_name.strip_prefix("tap:").filter(|s| !s.is_empty())
}

/// What one of our ids is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Agent,
    CallBridge,
    Snoop(Speaker),
    ExternalMedia(Speaker),
    TapBridge(Speaker),
}

/// Splits one of our ids into its call id and kind; `None` for ids that are
/// not ours.
pub fn parse(id: &str) -> Option<(&str, Kind)> {
    for speaker in SPEAKERS {
        for (infix, kind) in [
            ("-snoop-", Kind::Snoop(speaker)),
            ("-em-", Kind::ExternalMedia(speaker)),
            ("-tap-", Kind::TapBridge(speaker)),
        ] {
            if let Some(call) = id
                .strip_suffix(speaker.as_str())
                .and_then(|rest| rest.strip_suffix(infix))
                && !call.is_empty()
            {
                return Some((call, kind));
            }
        }
    }
    if let Some(call) = id.strip_suffix("-agent") {
        return (!call.is_empty()).then_some((call, Kind::Agent));
    }
    if let Some(call) = id.strip_suffix("-call") {
        return (!call.is_empty()).then_some((call, Kind::CallBridge));
    }
    None
}

/// A call id from a channel id: `PREFIX:` (this Asterisk's
/// `ari_coach.call_id_prefix`, when set) and the channel id when it is a
/// valid call id (Asterisk's `1732476767.12` is), else a cleaned copy.
/// Two Asterisk hosts number their channels alike; their prefixes keep
/// their calls apart in the relay.
pub fn call_id_for(prefix: &str, channel: &str) -> String {
    let id = plain_call_id(channel);
    if prefix.is_empty() || id.starts_with(&format!("{prefix}:")) {
        return id;
    }
    let mut id = format!("{prefix}:{id}");
    id.truncate(128);
    id
}

fn plain_call_id(channel: &str) -> String {
    if crate::event::is_valid_call_id(channel) {
        return channel.to_owned();
    }
    let mut id: String = channel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        id.insert(0, 'c');
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_parses_back() {
        let call = "1732476767.12";
        assert_eq!(parse(&agent(call)), Some((call, Kind::Agent)));
        assert_eq!(parse(&call_bridge(call)), Some((call, Kind::CallBridge)));
        for s in SPEAKERS {
            assert_eq!(parse(&snoop(call, s)), Some((call, Kind::Snoop(s))));
            assert_eq!(
                parse(&external_media(call, s)),
                Some((call, Kind::ExternalMedia(s)))
            );
            assert_eq!(
                parse(&tap_bridge(call, s)),
                Some((call, Kind::TapBridge(s)))
            );
        }
        assert_eq!(parse("1732476767.12"), None);
        assert_eq!(parse("-agent"), None);
        assert_eq!(snooped_of(&tap_bridge_name("abc")), Some("abc"));
    }

    #[test]
    fn call_ids_are_valid() {
        assert_eq!(call_id_for("", "1732476767.12"), "1732476767.12");
        let odd = call_id_for("", "/weird id");
        assert!(crate::event::is_valid_call_id(&odd), "{odd}");
        assert!(crate::event::is_valid_call_id(&call_id_for(
            "",
            &"x".repeat(400)
        )));
        // One prefix per Asterisk host; given once, kept once.
        assert_eq!(call_id_for("ast1", "1732476767.12"), "ast1:1732476767.12");
        assert_eq!(
            call_id_for("ast1", "ast1:1732476767.12"),
            "ast1:1732476767.12"
        );
        let long = call_id_for("ast2", &"x".repeat(400));
        assert!(crate::event::is_valid_call_id(&long), "{long}");
    }
}
