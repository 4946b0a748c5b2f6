//! The stranger queue, and with it the one choice between a single node and
//! several: [`Queue::Local`] pairs strangers in this process's
//! [`Matchmaker`]; [`Queue::Shared`] leaves pairing to the shared store
//! (backplane mode) and keeps this node's side of what spans nodes.
//!
//! The rest of the switchboard asks the queue (`node`, `is_remote`,
//! `is_shared`) rather than keeping a mode of its own, so switching modes
//! ([`Switchboard::set_node`]) is replacing this one value.

use super::*;

#[derive(Debug)]
pub(super) enum Queue {
    /// One node: the queue is here.
    Local(Matchmaker),
    /// Several nodes: the queue is in the shared store.
    Shared(Shared),
}

/// This node's part of a queue, calls and rooms held in the shared store.
#[derive(Debug)]
pub(super) struct Shared {
    /// This node, whose number is in every id it makes.
    pub(super) node: NodeId,
    /// Calls with the partner on another node.
    pub(super) remote_calls: usize,
    /// The client keys of partners and room members on other nodes.
    pub(super) remote_keys: HashMap<ConnId, ClientKey>,
    /// Who waits in the shared queue.
    pub(super) waiting: HashMap<ConnId, SharedWait>,
    /// Interest waits ending, in time order.
    pub(super) fallbacks: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// The normalised room names of connections in `Phase::Joining`.
    pub(super) joining: HashMap<ConnId, String>,
    /// How long a waiter with interests holds out for a shared one.
    interest_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SharedWait {
    /// From when it will talk to anyone (its interest wait is over).
    pub(super) open_at: Instant,
    /// The next join charges the client's shared search allowance (it is
    /// the client's own search or skip).
    pub(super) charge: bool,
}

/// What a join asks of the switchboard next.
pub(super) enum Joined {
    /// Paired here, at once.
    Paired(Pairing),
    /// Waiting here.
    Waiting,
    /// Waiting for the shared store: ask it (`Switchboard::enqueue`).
    AskStore,
}

impl Queue {
    pub(super) fn new(node: Option<NodeId>, config: &Config) -> Queue {
        match node {
            None => Queue::Local(Matchmaker::new(MatchConfig {
                interest_wait: config.interest_wait,
                scan_limit: config.scan_limit,
            })),
            Some(node) => Queue::Shared(Shared {
                node,
                remote_calls: 0,
                remote_keys: HashMap::new(),
                waiting: HashMap::new(),
                fallbacks: BinaryHeap::new(),
                joining: HashMap::new(),
                interest_wait: config.interest_wait,
            }),
        }
    }

    pub(super) fn node(&self) -> Option<NodeId> {
        self.shared().map(|s| s.node)
    }

    pub(super) fn is_shared(&self) -> bool {
        matches!(self, Queue::Shared(_))
    }

    pub(super) fn shared(&self) -> Option<&Shared> {
        match self {
            Queue::Shared(s) => Some(s),
            Queue::Local(_) => None,
        }
    }

    pub(super) fn shared_mut(&mut self) -> Option<&mut Shared> {
        match self {
            Queue::Shared(s) => Some(s),
            Queue::Local(_) => None,
        }
    }

    /// Puts `id` in the queue: here, pairing it at once if someone fits;
    /// or as a waiter of the shared store, which an interest wait keeps to
    /// tagged partners until it ends. `charge`: the client's own search or
    /// skip, charged by the store to the client's search allowance.
    pub(super) fn join(
        &mut self,
        now: Instant,
        id: ConnId,
        interests: Vec<String>,
        charge: bool,
        blocked: &Blocker<'_>,
    ) -> Joined {
        match self {
            Queue::Local(m) => match m.join(now, id, interests, blocked) {
                Some(p) => Joined::Paired(p),
                None => Joined::Waiting,
            },
            Queue::Shared(s) => {
                let open_at = if interests.is_empty() {
                    now
                } else {
                    now + s.interest_wait
                };
                s.waiting.insert(id, SharedWait { open_at, charge });
                if open_at > now {
                    s.fallbacks.push(Reverse((open_at, id)));
                }
                Joined::AskStore
            }
        }
    }

    /// The queue's part of the switchboard's invariants, given each
    /// connection's phase: everyone waiting here is a live connection;
    /// everyone waiting in the shared store is searching.
    pub(super) fn check(&self, phase: impl Fn(ConnId) -> Option<Phase>) -> Result<(), String> {
        match self {
            Queue::Local(m) => {
                if let Some(id) = m.waiting().find(|&id| phase(id).is_none()) {
                    return Err(format!("{id} is queued but gone"));
                }
            }
            Queue::Shared(s) => {
                if let Some(id) = s
                    .waiting
                    .keys()
                    .find(|&&id| phase(id) != Some(Phase::Searching))
                {
                    return Err(format!(
                        "{id} waits in the shared queue but is not searching"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `id` is a connection of another node.
    pub(super) fn is_remote(&self, id: ConnId) -> bool {
        self.node().is_some_and(|n| backplane::node_of(id) != n)
    }

    /// Whether `id` waits in this queue (here, or in the shared store).
    pub(super) fn is_waiting(&self, id: ConnId) -> bool {
        match self {
            Queue::Local(m) => m.is_waiting(id),
            Queue::Shared(s) => s.waiting.contains_key(&id),
        }
    }

    /// How many of this node's connections wait.
    pub(super) fn len(&self) -> usize {
        match self {
            Queue::Local(m) => m.len(),
            Queue::Shared(s) => s.waiting.len(),
        }
    }

    /// Takes `id` out of the queue. True if the shared store must be told.
    pub(super) fn leave(&mut self, id: ConnId) -> bool {
        match self {
            Queue::Local(m) => {
                m.leave(id);
                false
            }
            Queue::Shared(s) => s.waiting.remove(&id).is_some(),
        }
    }

    /// When an interest wait next ends.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Queue::Local(m) => m.poll_timeout(),
            Queue::Shared(s) => s.fallbacks.peek().map(|&Reverse((at, _))| at),
        }
    }

    pub(super) fn remote_calls(&self) -> usize {
        self.shared().map_or(0, |s| s.remote_calls)
    }

    pub(super) fn remote_key(&self, id: ConnId) -> Option<ClientKey> {
        self.shared()?.remote_keys.get(&id).copied()
    }

    /// `id`, on another node, is a partner or room member of someone here.
    pub(super) fn note_remote(&mut self, id: ConnId, key: ClientKey) {
        if let Some(s) = self.shared_mut() {
            s.remote_keys.insert(id, key);
        }
    }

    pub(super) fn forget_remote(&mut self, id: ConnId) {
        if let Some(s) = self.shared_mut() {
            s.remote_keys.remove(&id);
        }
    }

    /// Runs what is due by `now`: here, pairings the ends of interest
    /// waits and cooldowns allow; in the shared store, the waiters whose
    /// interest wait ended, to be asked for again (`Switchboard::enqueue`).
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        blocked: &Blocker<'_>,
    ) -> (Vec<Pairing>, Vec<ConnId>) {
        let (mut pairs, mut due) = (Vec::new(), Vec::new());
        match self {
            Queue::Local(m) => m.handle_timeout(now, blocked, &mut pairs),
            Queue::Shared(s) => {
                while let Some(&Reverse((at, id))) = s.fallbacks.peek() {
                    if at > now {
                        break;
                    }
                    s.fallbacks.pop();
                    if s.waiting.get(&id).map(|w| w.open_at) == Some(at) {
                        due.push(id);
                    }
                }
            }
        }
        (pairs, due)
    }

    /// `id` waits for the shared store to let it into the room `name`.
    pub(super) fn start_joining(&mut self, id: ConnId, name: String) {
        if let Some(s) = self.shared_mut() {
            s.joining.insert(id, name);
        }
    }

    /// Takes the name of the room `id` was joining, if it still was.
    pub(super) fn take_joining(&mut self, id: ConnId) -> Option<String> {
        self.shared_mut()?.joining.remove(&id)
    }

    pub(super) fn is_joining(&self, id: ConnId) -> bool {
        self.shared().is_some_and(|s| s.joining.contains_key(&id))
    }
}
