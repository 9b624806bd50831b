//! What the ingest files' tests share: a real row's id and date, and the
//! rows the CSV reader finds in an input.

use std::io::Read;

use super::{Row, RowError, Rows};
use crate::generation::record::Price;

pub(super) const ID: &str = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118";
pub(super) const DATE: &str = "2018-08-04 05:32:31 +0200 CEST";

pub(super) fn uuid(s: &str) -> u128 {
    uuid::Uuid::parse_str(s).unwrap().as_u128()
}

pub(super) fn price(units: u64, scale: u8) -> Price {
    Price::new(units, scale).unwrap()
}

/// Every yielded row of `input`, failing the test on a stream error.
pub(super) fn rows_of(input: impl Read) -> Vec<(u64, Result<Row, RowError>)> {
    Rows::new(input).map(|r| r.unwrap()).collect()
}

pub(super) fn rows(input: &[u8]) -> Vec<(u64, Result<Row, RowError>)> {
    rows_of(input)
}

pub(super) fn verdicts(input: &[u8]) -> Vec<(u64, bool)> {
    rows(input)
        .into_iter()
        .map(|(l, v)| (l, v.is_ok()))
        .collect()
}
