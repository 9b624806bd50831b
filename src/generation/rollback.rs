//! What a rollback records, and the feeds it refuses from then on.
//!
//! A rollback makes an older generation live again as a new one (a hard
//! link in a data directory, a manifest naming the same object in a
//! store). It records which generation it restored and which it undid,
//! with their body checksums, beside the new generation: a sidecar
//! `gen-N.rollback.json` in a data directory (see [`crate::generation::local`]),
//! the manifest's `"rollback"` in a store (see [`crate::store::remote`]).
//! The JSON is [`Rollback`]'s, field for field:
//!
//! ```text
//! {
//!   "of":      7,                       the sequence made live again
//!   "of_checksum": "3f2a...",           its body checksum, 16 hex digits
//!   "undone": [                         the generations after it, newest
//!     {"sequence": 9, "checksum": "..."},   first, which were live and are
//!     {"sequence": 8, "checksum": "..."}    not any more
//!   ]
//! }
//! ```
//!
//! A cron job that rebuilds the feed a rollback undid would publish the
//! bad data again; [`undone_by`] is how a build recognises it: the same
//! body checksum as a generation that a retained rollback undid, and not
//! made live again since.

use serde::{Deserialize, Serialize};

/// A rollback's record: what it restored and what it undid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The sequence made live again.
    pub of: u64,
    /// Its body checksum.
    #[serde(with = "crate::generation::json::hex")]
    pub of_checksum: u64,
    /// The generations newer than `of` that were undone, newest first.
    pub undone: Vec<Undone>,
}

impl Rollback {
    /// The record of a rollback to generation `of` (body checksum
    /// `of_checksum`), given the generations there as (sequence, body
    /// checksum), newest first: those newer than `of` are undone, but for
    /// any holding the same records as `of` (an earlier rollback to it).
    pub fn to(
        of: u64,
        of_checksum: u64,
        newest_first: impl IntoIterator<Item = (u64, u64)>,
    ) -> Rollback {
        Rollback {
            of,
            of_checksum,
            undone: newest_first
                .into_iter()
                .take_while(|&(sequence, _)| sequence > of)
                .filter(|&(_, checksum)| checksum != of_checksum)
                .map(|(sequence, checksum)| Undone { sequence, checksum })
                .collect(),
        }
    }
}

/// One generation a rollback undid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undone {
    pub sequence: u64,
    /// Its body checksum.
    #[serde(with = "crate::generation::json::hex")]
    pub checksum: u64,
}

/// One generation of a history, newest first: its sequence, its body
/// checksum, and its rollback record if it is a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Past {
    pub sequence: u64,
    pub checksum: u64,
    pub rollback: Option<Rollback>,
}

/// Whether a generation with body `checksum` would publish what a rollback
/// in `history` (newest first) undid: the undone generation's sequence,
/// the rollback's, and its record, if so. A generation with the same
/// checksum newer than that rollback (a rollback undone, a feed forced
/// through) means the content was made live on purpose since, and is not
/// refused again.
pub fn undone_by(history: &[Past], checksum: u64) -> Option<(u64, u64, &Rollback)> {
    for past in history {
        if past.checksum == checksum {
            return None;
        }
        if let Some(rollback) = &past.rollback {
            if let Some(u) = rollback.undone.iter().find(|u| u.checksum == checksum) {
                return Some((u.sequence, past.sequence, rollback));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(sequence: u64, checksum: u64, rollback: Option<Rollback>) -> Past {
        Past {
            sequence,
            checksum,
            rollback,
        }
    }

    fn rollback(of: u64, of_checksum: u64, undone: &[(u64, u64)]) -> Rollback {
        Rollback {
            of,
            of_checksum,
            undone: undone
                .iter()
                .map(|&(sequence, checksum)| Undone { sequence, checksum })
                .collect(),
        }
    }

    #[test]
    fn a_rollback_undoes_what_came_after_it_but_copies_of_its_own_records() {
        // 5 and 4 newer than 2, 4 a copy of 2 (an earlier rollback to it).
        let r = Rollback::to(2, 0xa, [(5, 0xc), (4, 0xa), (3, 0xb), (2, 0xa), (1, 0xd)]);
        assert_eq!(r, rollback(2, 0xa, &[(5, 0xc), (3, 0xb)]));
    }

    #[test]
    fn a_record_round_trips_through_its_json() {
        let r = rollback(1, 0xaa, &[(3, 0xbb), (2, 0xbb)]);
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"of_checksum\":\"00000000000000aa\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Rollback>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Rollback>(r#"{"of":1}"#).is_err());
    }

    #[test]
    fn an_undone_feed_is_recognised_until_it_is_made_live_again() {
        // 1 good (a), 2 and 3 the bad feed (b), 4 a rollback to 1.
        let mut history = vec![
            past(4, 0xa, Some(rollback(1, 0xa, &[(3, 0xb), (2, 0xb)]))),
            past(3, 0xb, None),
            past(2, 0xb, None),
            past(1, 0xa, None),
        ];
        let record = history[0].rollback.clone().unwrap();
        assert_eq!(undone_by(&history, 0xb), Some((3, 4, &record)));
        assert_eq!(undone_by(&history, 0xa), None, "the live content");
        assert_eq!(undone_by(&history, 0xc), None, "a new feed");
        // Forced through since (5): no longer refused.
        history.insert(0, past(5, 0xb, None));
        assert_eq!(undone_by(&history, 0xb), None);
    }
}
