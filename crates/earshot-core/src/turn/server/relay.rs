//! Relaying: permissions and channel bindings, and data from the client to
//! peers (Send indications, ChannelData) past the peer policy and the
//! bandwidth limit.

use super::*;

impl TurnServer {
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        key: &[u8; 16],
    ) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(id) = self.relaying(client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let mut ips = Vec::new();
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let Ok(peer) = peer else {
                return self.error(client, msg.method, txid, key, 400);
            };
            if let Err(code) = self.check_peer(peer) {
                return self.error(client, msg.method, txid, key, code);
            }
            ips.push(unmap(peer).ip());
        }
        if ips.is_empty() {
            return self.error(client, msg.method, txid, key, 400);
        }
        let max = self.config.max_permissions;
        let a = self
            .allocations
            .get_mut(&id)
            .expect("relaying names live allocations");
        a.prune(now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| !a.permissions.contains_key(ip) && !ips[..*i].contains(ip))
            .count();
        if a.permissions.len() + new > max {
            return self.error(client, msg.method, txid, key, 508);
        }
        for ip in ips {
            a.permissions.insert(ip, now + PERMISSION_LIFETIME);
        }
        self.reply(client, msg.method, txid, Class::Success, key, |_| {});
    }

    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        key: &[u8; 16],
    ) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(id) = self.relaying(client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let channel = match msg.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) if is_channel(u16::from_be_bytes([hi, lo])) => {
                u16::from_be_bytes([hi, lo])
            }
            _ => return self.error(client, msg.method, txid, key, 400),
        };
        let Ok(Some(peer)) = msg.xor_address(attr::XOR_PEER_ADDRESS) else {
            return self.error(client, msg.method, txid, key, 400);
        };
        if let Err(code) = self.check_peer(peer) {
            return self.error(client, msg.method, txid, key, code);
        }
        let peer = unmap(peer);
        // A channel names a port too: on our own address, only a relay's.
        let live_relay = self.by_port.contains_key(&peer.port());
        if let Verdict::Refused(_) = self.config.policy.check_addr(peer, live_relay) {
            self.stats.refused_peers += 1;
            return self.error(client, msg.method, txid, key, 403);
        }
        let (max_channels, max_permissions) =
            (self.config.max_channels, self.config.max_permissions);
        let a = self
            .allocations
            .get_mut(&id)
            .expect("relaying names live allocations");
        a.prune(now);
        // A channel is bound to one peer and a peer to one channel
        // (RFC 5766 §11.2); rebinding the same pair refreshes it.
        let taken = a.channels.get(&channel).is_some_and(|(p, _)| *p != peer)
            || a.channel_of_peer.get(&peer).is_some_and(|c| *c != channel);
        if taken {
            return self.error(client, msg.method, txid, key, 400);
        }
        if (!a.channels.contains_key(&channel) && a.channels.len() >= max_channels)
            || (!a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max_permissions)
        {
            return self.error(client, msg.method, txid, key, 508);
        }
        a.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        a.channel_of_peer.insert(peer, channel);
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        self.reply(client, msg.method, txid, Class::Success, key, |_| {});
    }

    pub(super) fn send_indication(&mut self, now: Instant, client: ClientAddr, msg: &Message<'_>) {
        let (Ok(Some(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.dropped += 1;
            return;
        };
        self.relay_to_peer(now, client, unmap(peer), data);
    }

    pub(super) fn channel_data_from_client(
        &mut self,
        now: Instant,
        client: ClientAddr,
        bytes: &[u8],
    ) {
        let peer = decode_channel_data(bytes).ok().and_then(|(channel, data)| {
            let id = self.by_client.get(&client)?;
            let peer = self.allocations[id].channel_peer(channel, now)?;
            Some((peer, data))
        });
        match peer {
            Some((peer, data)) => self.relay_to_peer(now, client, peer, data),
            None => self.stats.dropped += 1,
        }
    }

    /// Relays only to peers with a permission (which `check_peer` vetted),
    /// and only to ports the policy allows on them: a relay of ours is
    /// reached in memory.
    pub(super) fn relay_to_peer(
        &mut self,
        now: Instant,
        client: ClientAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        let Some(allocation) = self
            .relaying(client)
            .filter(|id| self.allocations[id].permitted(peer.ip(), now))
        else {
            self.stats.dropped += 1;
            return;
        };
        let target = self.by_port.get(&peer.port()).copied();
        // `OwnRelay` only for a live relay port of ours: handed over in memory.
        let in_memory = match self.config.policy.check_addr(peer, target.is_some()) {
            Verdict::Refused(_) => {
                self.stats.refused_peers += 1;
                return;
            }
            Verdict::OwnRelay => target,
            Verdict::Allowed => None,
        };
        let a = self
            .allocations
            .get_mut(&allocation)
            .expect("relaying names live allocations");
        if a.outbound
            .as_mut()
            .is_some_and(|b| !b.take(now, data.len()))
        {
            self.stats.over_bandwidth += 1;
            return;
        }
        let own_port = a.relay_port;
        self.stats.to_peers += 1;
        match (in_memory, own_port) {
            (Some(target), Some(port)) => {
                self.stats.relay_to_relay += 1;
                let from = SocketAddr::new(self.config.relay_ip, port);
                self.handle_peer(now, target, from, data);
            }
            _ => self.outputs.push_back(Output::ToPeer {
                allocation,
                peer,
                data: data.to_vec(),
            }),
        }
    }

    /// The client's allocation, if its relay is bound.
    pub(super) fn relaying(&self, client: ClientAddr) -> Option<AllocationId> {
        let id = *self.by_client.get(&client)?;
        self.allocations[&id].relay_port.map(|_| id)
    }

    /// Whether a peer may be given a permission: 443 for the other family,
    /// 403 for addresses the policy refuses.
    pub(super) fn check_peer(&mut self, peer: SocketAddr) -> Result<(), u16> {
        match self.config.policy.check_ip(peer.ip()) {
            Verdict::Allowed | Verdict::OwnRelay => Ok(()),
            Verdict::Refused(Refusal::Family) => Err(443),
            Verdict::Refused(_) => {
                self.stats.refused_peers += 1;
                tracing::debug!("turn: peer refused by policy");
                Err(403)
            }
        }
    }
}
