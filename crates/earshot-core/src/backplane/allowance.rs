//! A client's allowance shared by every node: a token bucket in the store
//! (one string, `<level>:<at>`, written with its TTL in one `SET`).
//!
//! [`take`] is the rule; `take.lua` ([`TAKE_LUA`]) is its twin, a function
//! the scripts that charge an allowance call in the same slot as the rest
//! of their work (the client's). Times are milliseconds since the epoch,
//! passed in by the node. The arithmetic is that of
//! [`crate::ratelimit::TokenBucket`], in whole milliseconds: `burst`
//! tokens at most, one more every `every` ms; the bucket is kept only
//! until it is full again (a full bucket says nothing).

/// `take(key, burst, every_ms, now_ms)`, in Lua.
pub const TAKE_LUA: &str = include_str!("take.lua");

/// A bucket as the store keeps it (`<level>:<at>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Milliseconds of refill banked; a token costs `every`.
    pub level: u64,
    /// When it was last charged.
    pub at: u64,
}

/// Takes one token from `bucket` (`None`: full, or never used) at `now`:
/// the bucket to keep and for how long (ms), or the ms until a token is
/// there (and the bucket is left as it was).
pub fn take(
    bucket: Option<Bucket>,
    burst: u32,
    every: u64,
    now: u64,
) -> Result<(Bucket, u64), u64> {
    let every = every.max(1);
    let cap = every.saturating_mul(u64::from(burst));
    let (level, at) = bucket.map_or((cap, now), |b| (b.level, b.at));
    let level = cap.min(level.saturating_add(now.saturating_sub(at)));
    if level < every {
        return Err(every - level);
    }
    let level = level - every;
    Ok((Bucket { level, at: now }, cap - level + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let mut b = None;
        for _ in 0..3 {
            b = Some(take(b, 3, 1000, 10_000).unwrap().0);
        }
        assert_eq!(take(b, 3, 1000, 10_000), Err(1000));
        assert_eq!(take(b, 3, 1000, 10_400), Err(600));
        let (after, ttl) = take(b, 3, 1000, 11_000).unwrap();
        assert_eq!(
            after,
            Bucket {
                level: 0,
                at: 11_000
            }
        );
        assert_eq!(ttl, 3001, "kept until full again");
        // A clock behind the last charge earns nothing.
        assert_eq!(take(Some(after), 3, 1000, 10_000), Err(1000));
    }
}
