use super::*;

fn key(n: u8) -> ClientKey {
    ClientKey([n; 16])
}

fn wide(n: u32) -> ClientKey {
    let mut k = [0xee; 16];
    k[..4].copy_from_slice(&n.to_le_bytes());
    ClientKey(k)
}

/// A reporter on a network of its own, reporting in a stranger call.
fn reporter(n: u8) -> Reporter {
    Reporter {
        key: key(n),
        network: key(n),
        previous_network: None,
        room: None,
    }
}

/// Weights without the reporter's history: every report counts fully.
fn unweighed() -> ModConfig {
    ModConfig {
        trusted_after: Duration::ZERO,
        held_calls_for_full: 0,
        arrived_together: Duration::ZERO,
        ..ModConfig::default()
    }
}

const SETTLED: Duration = Duration::from_secs(3600);

/// `n` arrives at `at`, stays connected and holds three calls of a minute
/// with three partners: by `at + SETTLED` its reports weigh fully.
fn establish(m: &mut Moderation, at: Instant, n: u8) {
    m.online(at, key(n));
    for p in 0..3u8 {
        let end = at + Duration::from_secs(120 + 60 * u64::from(p));
        m.call_ended(end, key(n), key(200 + p), Duration::from_secs(60));
    }
}

fn strike_weight(o: ReportOutcome) -> u32 {
    match o {
        ReportOutcome::Strike { weight } => weight,
        other => panic!("{other:?}"),
    }
}

#[test]
fn three_established_reporters_ban_with_escalation() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    for n in 1..7 {
        establish(&mut m, t0 + Duration::from_secs(120 * u64::from(n)), n);
    }
    let t = t0 + SETTLED;
    let bad = key(9);
    assert_eq!(
        m.report(t, &reporter(1), bad),
        ReportOutcome::Strike { weight: 1000 }
    );
    assert_eq!(
        m.report(t, &reporter(1), bad),
        ReportOutcome::Repeated,
        "counts once"
    );
    assert_eq!(
        m.report(t, &reporter(2), bad),
        ReportOutcome::Strike { weight: 1000 }
    );
    assert!(m.banned_until(t, bad).is_none());
    let first = t + Duration::from_secs(3600);
    assert_eq!(
        m.report(t, &reporter(3), bad),
        ReportOutcome::Banned { until: first }
    );
    assert_eq!(m.banned_until(t, bad), Some(first));
    assert!(m.banned_until(first, bad).is_none(), "the ban ends");
    assert!(m.blocked(key(1), bad) && m.blocked(bad, key(2)));
    assert!(!m.blocked(key(1), key(2)));

    // A second ban lasts a day.
    let later = first + Duration::from_secs(60);
    for r in 4..7 {
        m.report(later, &reporter(r), bad);
    }
    assert_eq!(
        m.banned_until(later, bad),
        Some(later + Duration::from_secs(24 * 3600))
    );
    assert_eq!(m.bans_total, 2);
}

#[test]
fn fresh_reporters_weigh_nothing_but_still_block() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    let victim = key(9);
    for n in 1..=5 {
        m.online(t0, key(n));
    }
    let t = t0 + Duration::from_secs(300);
    for n in 1..=5 {
        assert_eq!(
            m.report(t, &reporter(n), victim),
            ReportOutcome::Strike { weight: 0 }
        );
        assert!(m.blocked(key(n), victim));
    }
    assert!(m.banned_until(t, victim).is_none());
    assert_eq!(
        m.record_size(victim),
        Some((3 * BUCKETS, 0)),
        "no strike kept"
    );
}

#[test]
fn weight_grows_with_time_connected_and_distinct_calls_held() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    let k = key(1);
    m.online(t0, k);
    let t = t0 + Duration::from_secs(60);
    m.call_ended(t, k, key(2), Duration::from_secs(45));
    m.call_ended(t, k, key(3), Duration::from_secs(45));
    m.call_ended(t, k, key(3), Duration::from_secs(45));
    m.call_ended(t, k, key(4), Duration::from_secs(10));
    assert_eq!(m.trust(t, k), 0, "a minute connected");
    let t = t0 + Duration::from_secs(599);
    assert_eq!(m.trust(t, k), 0);
    let t = t0 + Duration::from_secs(600);
    assert_eq!(
        m.trust(t, k),
        666,
        "two held calls: a short one and a repeat do not count"
    );
    m.offline(t, k);
    m.call_ended(t, k, key(5), Duration::from_secs(30));
    let t = t + Duration::from_secs(3600);
    assert_eq!(m.trust(t, k), 1000, "connection time is kept while offline");
    // Held calls leave the window.
    let t = t + Duration::from_secs(25 * 3600);
    assert_eq!(m.trust(t, k), 0);
}

#[test]
fn serial_reporters_lose_weight() {
    let t0 = Instant::now();
    let mut m = Moderation::new(unweighed());
    let troll = reporter(1);
    for _ in 0..10 {
        m.matched(t0, troll.key);
    }
    let weights: Vec<u32> = (10..20)
        .map(|victim| strike_weight(m.report(t0, &troll, key(victim))))
        .collect();
    assert_eq!(weights[..3], [1000, 1000, 1000]);
    // 4th: 3/4 of a report; from the 6th on, more than half the people
    // met are reported, so weight is quartered as well.
    assert_eq!(weights[3], 750);
    assert_eq!(weights[5], 500 / 4);
    assert!(weights.windows(2).all(|w| w[1] <= w[0]));
    // The troll's report plus one honest one are not enough for a ban.
    let target = key(10);
    m.report(t0, &reporter(50), target);
    assert!(m.banned_until(t0, target).is_none());
}

#[test]
fn strikes_expire_after_the_window() {
    let t0 = Instant::now();
    let mut m = Moderation::new(unweighed());
    let bad = key(9);
    m.report(t0, &reporter(1), bad);
    m.report(t0, &reporter(2), bad);
    let next_day = t0 + Duration::from_secs(24 * 3600 + 1);
    assert!(matches!(
        m.report(next_day, &reporter(3), bad),
        ReportOutcome::Strike { .. }
    ));
    assert!(m.banned_until(next_day, bad).is_none());
}

#[test]
fn bans_and_blocks_survive_a_key_rotation() {
    let t0 = Instant::now();
    let mut m = Moderation::new(unweighed());
    let (old, new) = (key(9), key(19));
    for r in 1..4 {
        m.report(t0, &reporter(r), old);
    }
    m.carry_over(old, new);
    assert!(m.banned_until(t0, new).is_some());
    assert!(m.blocked(key(1), new));
    assert!(!m.blocked(key(1), old));
}

#[test]
fn records_are_forgotten_after_key_memory() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    for n in 0..2000u32 {
        m.matched(t0, wide(n));
    }
    let later = t0 + Duration::from_secs(49 * 3600);
    for n in 0..1100u32 {
        m.matched(later, wide(100_000 + n));
    }
    assert!(m.records() <= 1100, "{}", m.records());
}

#[test]
fn reporting_yourself_does_nothing() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    assert_eq!(m.report(t0, &reporter(1), key(1)), ReportOutcome::Repeated);
    assert!(!m.blocked(key(1), key(1)));
}

/// Many IPv6 /64s of one /48 cost nothing: established or not, they are
/// one reporter.
#[test]
fn reporters_on_one_slash_48_count_once() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    for n in 1..=6 {
        establish(&mut m, t0 + Duration::from_secs(120 * u64::from(n)), n);
    }
    let t = t0 + SETTLED;
    let bad = key(9);
    let one_48 = key(99);
    for n in 1..=5 {
        let r = Reporter {
            network: one_48,
            ..reporter(n)
        };
        assert_eq!(m.report(t, &r, bad), ReportOutcome::Strike { weight: 1000 });
    }
    assert!(m.banned_until(t, bad).is_none(), "five /64s of one /48");
    // Under the next secret the /48 has a new key, and is still one.
    let rotated = Reporter {
        network: key(98),
        previous_network: Some(one_48),
        ..reporter(6)
    };
    m.report(t, &rotated, bad);
    assert!(m.banned_until(t, bad).is_none());
}

/// Connections first seen within a minute of each other are one reporter,
/// however long they then stay and however many calls they hold.
#[test]
fn reporters_who_arrived_together_count_once() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    for n in 1..=3 {
        establish(&mut m, t0 + Duration::from_secs(20 * u64::from(n)), n);
    }
    let t = t0 + SETTLED;
    let bad = key(9);
    for n in 1..=3 {
        m.report(t, &reporter(n), bad);
    }
    assert!(m.banned_until(t, bad).is_none());
    // A fourth, who came an hour apart from them, makes a second reporter
    // of two: still not three.
    establish(&mut m, t, 4);
    let t = t + SETTLED;
    m.report(t, &reporter(4), bad);
    assert!(m.banned_until(t, bad).is_none());
}

/// Members of one room are one reporter toward a ban, however established.
#[test]
fn members_of_one_room_count_once() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig::default());
    for n in 1..=5 {
        establish(&mut m, t0 + Duration::from_secs(120 * u64::from(n)), n);
    }
    let t = t0 + SETTLED;
    let bad = key(9);
    for n in 1..=5 {
        let r = Reporter {
            room: Some(7),
            ..reporter(n)
        };
        assert_eq!(m.report(t, &r, bad), ReportOutcome::Strike { weight: 1000 });
    }
    assert!(m.banned_until(t, bad).is_none());
}

/// A million matches, reports and calls of one key: its record keeps the
/// same number of counters, and its strikes stay within the cap.
#[test]
fn a_million_events_keep_a_record_the_same_size() {
    let t0 = Instant::now();
    let mut m = Moderation::new(unweighed());
    let k = key(1);
    m.online(t0, k);
    let size = m.record_size(k);
    assert_eq!(size, Some((3 * BUCKETS, 0)));
    for i in 0..1_000_000u32 {
        let t = t0 + Duration::from_millis(u64::from(i) * 90);
        m.matched(t, k);
        m.call_ended(t, k, wide(i), Duration::from_secs(60));
        if i % 1000 == 0 {
            m.report(t, &reporter(1), wide(i));
        }
    }
    assert_eq!(m.record_size(k), size);
    let target = key(2);
    for n in 0..10_000u32 {
        let r = Reporter {
            key: wide(n),
            network: wide(n),
            previous_network: None,
            room: Some(7),
        };
        m.report(t0, &r, target);
    }
    let max = ModConfig::default().max_strikes;
    assert_eq!(m.record_size(target), Some((3 * BUCKETS, max)));
}

/// At the cap, a flood of fresh keys evicts plain records, never a ban or
/// strikes: the ban holds, and the table stays within its cap.
#[test]
fn a_ban_is_not_evicted_by_a_flood_of_fresh_keys() {
    let t0 = Instant::now();
    let mut m = Moderation::new(ModConfig {
        max_records: 100,
        max_blocks: 50,
        ..unweighed()
    });
    let (bad, struck) = (key(9), key(8));
    for r in 1..4 {
        m.report(t0, &reporter(r), bad);
    }
    m.report(t0, &reporter(4), struck);
    let until = m.banned_until(t0, bad).expect("banned");
    for n in 0..100_000u32 {
        let t = t0 + Duration::from_millis(u64::from(n));
        m.matched(t, wide(n));
        if n % 10 == 0 {
            m.block(t, wide(n), wide(n + 1));
        }
        assert!(m.records() <= 100 && m.blocks() <= 50);
    }
    let t = t0 + Duration::from_secs(100);
    assert_eq!(m.banned_until(t, bad), Some(until), "the ban is kept");
    assert_eq!(
        m.record_size(struck).map(|s| s.1),
        Some(1),
        "so are strikes"
    );
    // And the ban still counts when its holder comes back.
    m.matched(t, bad);
    assert_eq!(m.banned_until(t, bad), Some(until));
}

/// What an entry of each table costs, as README says (64-bit Linux): a
/// record is a 16-byte key and at most 160 bytes, whatever the key does.
#[test]
fn entries_cost_what_readme_says() {
    assert!(
        std::mem::size_of::<Record>() <= 160,
        "{}",
        std::mem::size_of::<Record>()
    );
    assert!(std::mem::size_of::<Strike>() <= 112);
    assert!(std::mem::size_of::<((ClientKey, ClientKey), Instant)>() <= 48);
}
