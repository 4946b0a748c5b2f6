//! Which backplane requests may be in flight together.
//!
//! Each request names what it must stay in order with (its keys: the
//! connections, client, room or call it is about; see
//! `earshot_core::backplane::Request::order_keys`). Requests that share no
//! key run at once, as many as there are. Requests that share one start in
//! the order they were submitted, each once the one before it on every
//! shared key is done, with one exception: a request that is a single
//! command may follow single commands already sent on the same link right
//! away, since one connection runs its commands in the order it received
//! them (so a burst of signals to one node costs no round trip each).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// How a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One command on this link, sent as it starts.
    Once(usize),
    /// Several steps (a reply decides the next), or a command whose link
    /// is not known in advance.
    Steps,
}

/// One key's requests: those waiting, in order, and those running.
#[derive(Debug, Default)]
struct Line {
    waiting: VecDeque<u64>,
    running: u32,
    /// `Some(l)` while every running request on this key is a single
    /// command sent on link `l`.
    link: Option<usize>,
}

#[derive(Debug)]
struct Entry<K> {
    keys: Vec<K>,
    shape: Shape,
}

/// The scheduler: sans-IO, the caller starts what it is told to.
#[derive(Debug)]
pub struct Order<K> {
    lines: HashMap<K, Line>,
    waiting: HashMap<u64, Entry<K>>,
    running: HashMap<u64, Entry<K>>,
    next: u64,
}

impl<K> Default for Order<K> {
    fn default() -> Self {
        Order {
            lines: HashMap::new(),
            waiting: HashMap::new(),
            running: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> Order<K> {
    /// Adds a request; its id, and whether it may start now (otherwise a
    /// later [`Order::finish`] names it).
    pub fn submit(&mut self, mut keys: Vec<K>, shape: Shape) -> (u64, bool) {
        let id = self.next;
        self.next += 1;
        dedup(&mut keys);
        let free = keys.iter().all(|k| {
            self.lines
                .get(k)
                .is_none_or(|l| l.waiting.is_empty() && may_join(l, shape))
        });
        let entry = Entry { keys, shape };
        if free {
            self.start(id, entry);
        } else {
            for k in &entry.keys {
                self.lines
                    .entry(k.clone())
                    .or_default()
                    .waiting
                    .push_back(id);
            }
            self.waiting.insert(id, entry);
        }
        (id, free)
    }

    /// Request `id` is done: the ids that may start now, in order.
    pub fn finish(&mut self, id: u64) -> Vec<u64> {
        let Some(entry) = self.running.remove(&id) else {
            return Vec::new();
        };
        let mut check: Vec<K> = Vec::new();
        for k in entry.keys {
            if let Some(line) = self.lines.get_mut(&k) {
                line.running = line.running.saturating_sub(1);
                if line.running == 0 {
                    line.link = None;
                    if line.waiting.is_empty() {
                        self.lines.remove(&k);
                        continue;
                    }
                }
                check.push(k);
            }
        }
        let mut started = Vec::new();
        while let Some(k) = check.pop() {
            let Some(&front) = self.lines.get(&k).and_then(|l| l.waiting.front()) else {
                continue;
            };
            let ready = self.waiting.get(&front).is_some_and(|e| {
                e.keys.iter().all(|k| {
                    self.lines
                        .get(k)
                        .is_some_and(|l| l.waiting.front() == Some(&front) && may_join(l, e.shape))
                })
            });
            if ready && let Some(entry) = self.waiting.remove(&front) {
                for k in &entry.keys {
                    if let Some(line) = self.lines.get_mut(k) {
                        line.waiting.pop_front();
                    }
                }
                // The next in line may follow a single command at once.
                check.extend(entry.keys.iter().cloned());
                self.start(front, entry);
                started.push(front);
            }
        }
        started
    }

    fn start(&mut self, id: u64, entry: Entry<K>) {
        for k in &entry.keys {
            let line = self.lines.entry(k.clone()).or_default();
            line.link = match entry.shape {
                Shape::Once(l) if line.running == 0 || line.link == Some(l) => Some(l),
                _ => None,
            };
            line.running += 1;
        }
        self.running.insert(id, entry);
    }

    /// Requests submitted and not finished.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
    }
}

/// Whether a request of `shape` may run beside what runs on `line`.
fn may_join(line: &Line, shape: Shape) -> bool {
    line.running == 0 || matches!(shape, Shape::Once(l) if line.link == Some(l))
}

fn dedup<K: PartialEq>(keys: &mut Vec<K>) {
    let mut i = 0;
    while i < keys.len() {
        if keys[..i].contains(&keys[i]) {
            keys.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn unrelated_requests_run_together_related_ones_in_turn() {
        let mut o = Order::default();
        let (a, go_a) = o.submit(vec![1], Shape::Steps);
        let (_, go_b) = o.submit(vec![2], Shape::Steps);
        let (c, go_c) = o.submit(vec![1, 2], Shape::Steps);
        assert!(go_a && go_b && !go_c);
        assert_eq!(o.finish(a), Vec::<u64>::new(), "c still waits for b");
        assert_eq!(o.finish(1), vec![c]);
        assert_eq!(o.finish(c), Vec::<u64>::new());
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn single_commands_on_one_link_follow_each_other_at_once() {
        let mut o = Order::default();
        let (_, a) = o.submit(vec![7], Shape::Once(0));
        let (_, b) = o.submit(vec![7], Shape::Once(0));
        let (c, c_now) = o.submit(vec![7], Shape::Once(1));
        let (d, d_now) = o.submit(vec![7], Shape::Once(0));
        assert!(a && b);
        assert!(!c_now, "another link: must wait for the replies");
        assert!(!d_now, "behind c");
        assert_eq!(o.finish(0), Vec::<u64>::new());
        assert_eq!(o.finish(1), vec![c]);
        assert_eq!(o.finish(c), vec![d]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit(Vec<u8>, Option<usize>),
        Finish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                prop::collection::vec(0..4u8, 0..3),
                prop::option::of(0..2usize)
            )
                .prop_map(|(k, l)| Op::Submit(k, l)),
            (0..8usize).prop_map(Op::Finish),
        ]
    }

    proptest! {
        /// On every key, requests start in submission order, and run side
        /// by side only as single commands on one link; everything starts
        /// once everything before it is done.
        #[test]
        fn requests_on_a_key_keep_their_order(ops in prop::collection::vec(op(), 1..60)) {
            let mut o = Order::default();
            let mut all: Vec<(Vec<u8>, Shape)> = Vec::new();
            let mut running: Vec<u64> = Vec::new();
            let mut started: Vec<u64> = Vec::new();
            let check = |o: &Order<u8>, running: &Vec<u64>, all: &Vec<(Vec<u8>, Shape)>| -> Result<(), TestCaseError> {
                for key in 0..4u8 {
                    let on: Vec<&(Vec<u8>, Shape)> = running
                        .iter()
                        .map(|&id| &all[id as usize])
                        .filter(|(k, _)| k.contains(&key))
                        .collect();
                    if on.len() > 1 {
                        let link = match on[0].1 { Shape::Once(l) => l, Shape::Steps => 99 };
                        prop_assert!(on.iter().all(|(_, s)| *s == Shape::Once(link)), "{:?}", on);
                    }
                }
                prop_assert!(o.len() >= running.len());
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Submit(keys, link) => {
                        let shape = link.map_or(Shape::Steps, Shape::Once);
                        let (id, go) = o.submit(keys.clone(), shape);
                        all.push((keys, shape));
                        if go {
                            running.push(id);
                            started.push(id);
                        }
                    }
                    Op::Finish(i) => {
                        if !running.is_empty() {
                            let id = running.remove(i % running.len());
                            for s in o.finish(id) {
                                running.push(s);
                                started.push(s);
                            }
                        }
                    }
                }
                check(&o, &running, &all)?;
            }
            while let Some(id) = running.pop() {
                for s in o.finish(id) {
                    running.push(s);
                    started.push(s);
                }
                check(&o, &running, &all)?;
            }
            prop_assert_eq!(started.len(), all.len(), "everything started");
            prop_assert_eq!(o.len(), 0);
            for key in 0..4u8 {
                let order: Vec<u64> = started
                    .iter()
                    .copied()
                    .filter(|&id| all[id as usize].0.contains(&key))
                    .collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "key {}: {:?}", key, order);
            }
        }
    }
}
