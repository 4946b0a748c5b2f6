//! First come, first served: untagged searchers are paired in arrival order.

#[allow(unused_imports)]
use super::*;

/// Greets `n` clients (ids 1..=n) on a default board.
pub(crate) fn greeted_board(n: u64, now: Instant) -> Switchboard {
    let mut board = Switchboard::new(Config::default());
    for i in 1..=n {
        // One client each: the per-client limits are not what this tests.
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let info = ConnInfo {
            key: ClientKey(key),
            ..ConnInfo::default()
        };
        board.connect(now, ConnId(i), info);
        board.handle_text(now, ConnId(i), &hello(1));
    }
    while board.poll_output().is_some() {}
    board
}

/// The pairs made, as (polite, impolite) = (the one who waited, the newcomer).
pub(crate) fn drain_pairs(board: &mut Switchboard) -> Vec<(ConnId, ConnId)> {
    let mut pairs = Vec::new();
    let mut half: Option<(ConnId, CallId, bool)> = None;
    while let Some(out) = board.poll_output() {
        if let Output::Send(to, ServerMsg::Matched { call, polite, .. }) = out {
            match half.take() {
                None => half = Some((to, call, polite)),
                Some((first, c, first_polite)) => {
                    assert_eq!(c, call);
                    assert_ne!(first_polite, polite);
                    pairs.push(if first_polite {
                        (first, to)
                    } else {
                        (to, first)
                    });
                }
            }
        }
    }
    assert!(half.is_none());
    pairs
}

#[derive(Debug, Clone)]
pub(crate) enum QueueOp {
    /// Search without interests, if idle.
    Search(u64),
    End(u64),
    Advance(Duration),
}

/// The reference queue: one FIFO of waiting clients, and who is with whom.
#[derive(Default)]
pub(crate) struct Fifo {
    pub(crate) waiting: VecDeque<u64>,
    pub(crate) partner: HashMap<u64, u64>,
}

impl Fifo {
    pub(crate) fn idle(&self, i: u64) -> bool {
        !self.waiting.contains(&i) && !self.partner.contains_key(&i)
    }

    /// `i` searches: paired with the oldest waiting client, or waits.
    pub(crate) fn search(&mut self, i: u64, pairs: &mut Vec<(ConnId, ConnId)>) {
        match self.waiting.pop_front() {
            Some(w) => {
                self.partner.insert(w, i);
                self.partner.insert(i, w);
                pairs.push((ConnId(w), ConnId(i)));
            }
            None => self.waiting.push_back(i),
        }
    }

    /// `i` ends: leaves the queue, or its partner searches again.
    pub(crate) fn end(&mut self, i: u64, pairs: &mut Vec<(ConnId, ConnId)>) {
        self.waiting.retain(|&w| w != i);
        if let Some(p) = self.partner.remove(&i) {
            self.partner.remove(&p);
            self.search(p, pairs);
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// N untagged clients searching in turn are paired (1st, 2nd), (3rd, 4th), ...
    /// with the one who waited polite.
    #[test]
    fn searchers_are_paired_in_arrival_order(
        order in (2u64..=30).prop_flat_map(|n| Just((1..=n).collect::<Vec<u64>>()).prop_shuffle()),
        gaps in prop::collection::vec(0u64..3000, 30),
    ) {
        let mut now = Instant::now();
        let mut board = greeted_board(order.len() as u64, now);
        let mut pairs = Vec::new();
        for (&i, &gap) in order.iter().zip(&gaps) {
            now += Duration::from_millis(gap);
            board.handle_timeout(now);
            board.handle_text(now, ConnId(i), r#"{"type":"search"}"#);
            pairs.extend(drain_pairs(&mut board));
        }
        let expected: Vec<(ConnId, ConnId)> = order
            .chunks_exact(2)
            .map(|p| (ConnId(p[0]), ConnId(p[1])))
            .collect();
        prop_assert_eq!(pairs, expected);
        prop_assert_eq!(board.stats().waiting, order.len() % 2);
    }

    /// With searches and ends in any order, every pair is the oldest waiting
    /// client and the newcomer, as in a plain FIFO.
    #[test]
    fn the_queue_is_first_come_first_served_across_ends(
        ops in prop::collection::vec(
            prop_oneof![
                3 => (1u64..=8).prop_map(QueueOp::Search),
                2 => (1u64..=8).prop_map(QueueOp::End),
                1 => (0u64..3000).prop_map(|ms| QueueOp::Advance(Duration::from_millis(ms))),
            ],
            1..100,
        )
    ) {
        let mut now = Instant::now();
        let mut board = greeted_board(8, now);
        let mut fifo = Fifo::default();
        for op in &ops {
            let mut expected = Vec::new();
            match *op {
                QueueOp::Search(i) if fifo.idle(i) => {
                    board.handle_text(now, ConnId(i), r#"{"type":"search"}"#);
                    fifo.search(i, &mut expected);
                }
                QueueOp::Search(_) => {}
                QueueOp::End(i) => {
                    board.handle_text(now, ConnId(i), r#"{"type":"end"}"#);
                    fifo.end(i, &mut expected);
                }
                QueueOp::Advance(d) => {
                    now += d;
                    board.handle_timeout(now);
                }
            }
            prop_assert_eq!(drain_pairs(&mut board), expected, "after {:?}", op);
            prop_assert_eq!(board.stats().waiting, fifo.waiting.len());
        }
    }
}
