//! Allocations: creating one (transport, family, quotas), refreshing it,
//! the lifetime granted, and deleting it with everything it holds.

use super::*;

impl TurnServer {
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        auth: &Auth<'_>,
    ) {
        let (txid, key) = (msg.transaction_id, Some(&auth.key));
        if let Some(&id) = self.by_client.get(&client) {
            let a = &self.allocations[&id];
            if a.allocate_txid != txid {
                self.error(client, msg.method, txid, key, 437);
            } else if a.relay_port.is_some() {
                // A retransmission whose answer was lost.
                self.allocate_success(id);
            }
            // Else the relay is being bound and the answer is on its way.
            return;
        }
        let (even_port, requested) = match self.allocate_request(msg) {
            Ok(request) => request,
            Err(code) => return self.error(client, msg.method, txid, key, code),
        };
        if let Err(code) = self.quotas(client, auth.username) {
            return self.error(client, msg.method, txid, key, code);
        }
        let prefix = source_key(client.addr.ip());
        let bandwidth = || {
            (self.config.max_bps > 0).then(|| {
                // One second's worth may arrive at once.
                let rate = self.config.max_bps / 8;
                ByteBucket::new(now, rate, rate.max(MAX_PAYLOAD as u64))
            })
        };
        let (outbound, inbound) = (bandwidth(), bandwidth());
        let lifetime = self.grant(requested);
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        let expires = now + lifetime;
        self.allocations.insert(
            id,
            Allocation {
                client,
                username: auth.username.to_owned(),
                key: auth.key,
                relay_port: None,
                allocate_txid: txid,
                lifetime,
                expires,
                armed: expires,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of_peer: HashMap::new(),
                indications: 0,
                outbound,
                inbound,
            },
        );
        self.timers.push(Reverse((expires, id)));
        self.by_client.insert(client, id);
        *self.per_client.entry(prefix).or_insert(0) += 1;
        *self
            .per_credential
            .entry(session(auth.username).to_owned())
            .or_insert(0) += 1;
        self.outputs.push_back(Output::BindRelay {
            allocation: id,
            even_port,
        });
    }

    /// What an Allocate asks for: an even port, and the lifetime; the error
    /// code of a request this server cannot satisfy.
    pub(super) fn allocate_request(&self, msg: &Message<'_>) -> Result<(bool, Option<u32>), u16> {
        match msg.get(attr::REQUESTED_TRANSPORT) {
            Some([PROTO_UDP, _, _, _]) => {}
            Some([_, _, _, _]) => return Err(442),
            _ => return Err(400),
        }
        let family = if self.config.relay_ip.is_ipv4() {
            0x01
        } else {
            0x02
        };
        match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some(&[f, _, _, _]) if f == family => {}
            Some(&[0x01 | 0x02, _, _, _]) => return Err(440),
            Some(_) => return Err(400),
        }
        // EVEN-PORT's R bit asks to reserve the next port too, which needs
        // RESERVATION-TOKEN: not offered, so "cannot satisfy" (508).
        let even_port = match msg.get(attr::EVEN_PORT) {
            None => false,
            Some(&[flags, ..]) if flags & 0x80 == 0 => true,
            Some(&[_, ..]) => return Err(508),
            Some(_) => return Err(400),
        };
        let requested = msg.u32(attr::LIFETIME).map_err(|_| 400u16)?;
        Ok((even_port, requested))
    }

    /// Whether `username` from `client` may have one more allocation: its
    /// session is live, and no quota is reached (403, 486 or 508).
    pub(super) fn quotas(&mut self, client: ClientAddr, username: &str) -> Result<(), u16> {
        if let Some(check) = &self.config.credential_check
            && !check(username)
        {
            tracing::debug!("turn: credential of an ended session");
            self.stats.revoked_credentials += 1;
            return Err(403);
        }
        let prefix = source_key(client.addr.ip());
        let credential_used = self.per_credential.get(session(username)).copied();
        if credential_used.unwrap_or(0) >= self.config.max_allocations_per_credential {
            tracing::debug!("turn: per-credential allocation quota reached");
            self.stats.quota_credential += 1;
            return Err(486);
        }
        if self.per_client.get(&prefix).copied().unwrap_or(0)
            >= self.config.max_allocations_per_client
        {
            tracing::debug!("turn: per-client allocation quota reached");
            self.stats.quota_client += 1;
            return Err(486);
        }
        if self.allocations.len() >= self.config.max_allocations {
            tracing::debug!("turn: allocation capacity reached");
            self.stats.quota_total += 1;
            return Err(508);
        }
        Ok(())
    }

    pub(super) fn allocate_success(&mut self, id: AllocationId) {
        let a = &self.allocations[&id];
        let port = a.relay_port.expect("answered only once the relay is bound");
        let relayed = SocketAddr::new(self.config.relay_ip, port);
        let (client, txid, key, lifetime) = (a.client, a.allocate_txid, a.key, a.lifetime);
        self.reply(
            client,
            method::ALLOCATE,
            txid,
            Class::Success,
            Some(&key),
            |e| {
                e.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
                    .u32(attr::LIFETIME, secs(lifetime))
                    .xor_address(attr::XOR_MAPPED_ADDRESS, unmap(client.addr));
            },
        );
    }

    pub(super) fn refresh(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        key: &[u8; 16],
    ) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(&id) = self.by_client.get(&client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let Ok(requested) = msg.u32(attr::LIFETIME) else {
            return self.error(client, msg.method, txid, key, 400);
        };
        let lifetime = if requested == Some(0) {
            self.delete(id);
            Duration::ZERO
        } else {
            let lifetime = self.grant(requested);
            let a = self
                .allocations
                .get_mut(&id)
                .expect("by_client names live allocations");
            a.lifetime = lifetime;
            a.expires = now + lifetime;
            // Only a shorter lifetime needs an earlier timer; a longer one
            // re-arms when the current timer fires.
            if a.expires < a.armed {
                a.armed = a.expires;
                self.timers.push(Reverse((a.expires, id)));
            }
            lifetime
        };
        self.reply(client, msg.method, txid, Class::Success, key, |e| {
            e.u32(attr::LIFETIME, secs(lifetime));
        });
    }

    /// RFC 5766 §6.2: the requested lifetime capped at the maximum, and
    /// never below the default.
    pub(super) fn grant(&self, requested: Option<u32>) -> Duration {
        requested
            .map_or(self.config.default_lifetime, |s| {
                Duration::from_secs(u64::from(s))
            })
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime)
    }

    pub(super) fn delete(&mut self, id: AllocationId) {
        let Some(a) = self.allocations.remove(&id) else {
            return;
        };
        self.by_client.remove(&a.client);
        if let Some(port) = a.relay_port
            && self.by_port.get(&port) == Some(&id)
        {
            self.by_port.remove(&port);
        }
        let prefix = source_key(a.client.addr.ip());
        if let Some(n) = self.per_client.get_mut(&prefix) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&prefix);
            }
        }
        let session = session(&a.username);
        if let Some(n) = self.per_credential.get_mut(session) {
            *n -= 1;
            if *n == 0 {
                self.per_credential.remove(session);
            }
        }
        if a.relay_port.is_some() {
            self.outputs
                .push_back(Output::ReleaseRelay { allocation: id });
        }
        // Deleted allocations leave their timer entries behind; rebuild
        // the heap before they can pile up (allocate-delete loops).
        if self.timers.len() > 2 * self.allocations.len() + 1024 {
            self.timers = self
                .allocations
                .iter()
                .map(|(id, a)| Reverse((a.armed, *id)))
                .collect();
        }
        tracing::debug!(
            allocations = self.allocations.len(),
            "turn: allocation deleted"
        );
    }
}
