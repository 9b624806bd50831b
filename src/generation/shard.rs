//! Range shards: one contiguous range of ids per shard.
//!
//! A data set larger than one machine is split into N shards. Shard K holds
//! the ids whose first 32 bits `x` (as an unsigned integer) satisfy
//! `floor(x * N / 2^32) = K`. Ranges keep each shard's generation one
//! sorted file like any other, and let a router pick the shard from the
//! id's first hex digits: with N = 4, digit `0`-`3` is shard 0, `4`-`7`
//! shard 1, and so on (see `deploy/nginx/shards.conf`).

use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count`; `0/1` is the whole id space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

impl Shard {
    /// The whole id space: an unsharded generation.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`, or `None` unless `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Shard> {
        (index < count).then_some(Shard { index, count })
    }

    /// K in K/N.
    pub fn index(self) -> u32 {
        self.index
    }

    /// N in K/N.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether this is the whole id space.
    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// The shard of N that `key` belongs to.
    #[inline]
    pub fn of(key: u128, count: u32) -> u32 {
        let x = (key >> 96) as u64;
        ((x * u64::from(count)) >> 32) as u32
    }

    /// Whether `key` is in this shard's range.
    #[inline]
    pub fn contains(self, key: u128) -> bool {
        Shard::of(key, self.count) == self.index
    }
}

impl Default for Shard {
    fn default() -> Shard {
        Shard::WHOLE
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N`, with `0 <= K < N`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?} is not a shard: expected K/N with 0 <= K < N, like 0/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u32 = k.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(k, n).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shards_parse_and_print() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard::new(1, 4).unwrap()));
        assert_eq!(Shard::new(3, 4).unwrap().to_string(), "3/4");
        for bad in ["4/4", "1", "a/4", "1/0", "-1/4", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn four_shards_follow_the_first_hex_digit() {
        for digit in 0..16u128 {
            let key = digit << 124 | 0x1234_5678;
            assert_eq!(Shard::of(key, 4), (digit / 4) as u32, "{digit:x}");
        }
        assert_eq!(Shard::of(u128::MAX, 4), 3);
        assert_eq!(Shard::of(0, 4), 0);
    }

    proptest! {
        /// Every key is in exactly one shard, and shards are contiguous
        /// ranges in key order.
        #[test]
        fn every_key_has_one_shard_in_order(a in any::<u128>(), b in any::<u128>(), n in 1u32..1000) {
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(Shard::of(lo, n) <= Shard::of(hi, n));
            let k = Shard::of(a, n);
            prop_assert!(k < n);
            prop_assert_eq!((0..n).filter(|&i| Shard::new(i, n).unwrap().contains(a)).count(), 1);
        }
    }
}
