//! `hello`: the versioned greeting, and proof of work when the server is
//! loaded or the client has misbehaved.

use super::*;

impl Switchboard {
    pub(super) fn hello(
        &mut self,
        now: Instant,
        id: ConnId,
        version: u32,
        pow: Option<PowSolution>,
    ) {
        if version != protocol::PROTOCOL_VERSION {
            return self.reject(now, id, ErrorCode::UnsupportedVersion, None);
        }
        if let Some(maxnumber) = self.pow_needed(now, id) {
            match pow {
                Some(solution) if self.pow.verify(now, &solution) => {}
                given => {
                    if given.is_some() {
                        self.reject(now, id, ErrorCode::PowInvalid, None);
                    }
                    let random = [self.entropy.next(), self.entropy.next()];
                    let c = self
                        .pow
                        .issue(now, self.config.pow.expiry, maxnumber, random);
                    // Solving takes a while on a slow phone: wait for hello
                    // as long as the challenge lives.
                    let by = now + self.config.pow.expiry;
                    if let Some(conn) = self.conns.get_mut(&id)
                        && conn.hello_by < by
                    {
                        conn.hello_by = by;
                        self.hello_deadlines.push(Reverse((by, id)));
                    }
                    return self.send(
                        id,
                        ServerMsg::Challenge {
                            algorithm: "SHA-256",
                            salt: c.salt,
                            challenge: c.challenge,
                            maxnumber: c.maxnumber,
                            signature: c.signature,
                        },
                    );
                }
            }
        }
        let ice_servers = self.ice_servers(id);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.greeted = true;
        let offers_turn = ice_servers.iter().any(|s| s.credential.is_some());
        let mut limits = self.config.limits();
        if !offers_turn {
            limits.ice_credential_ttl_ms = 0;
        }
        let welcome = ServerMsg::Welcome {
            version: protocol::PROTOCOL_VERSION,
            ice_servers,
            limits,
            country: conn.info.country,
            hide_ip_default: offers_turn && self.config.hide_ip_default,
        };
        self.send(id, welcome);
    }

    /// Whether `id` must prove work before `welcome`, and how much: when the
    /// server is loaded, or its client has many connections or recent abuse.
    pub(super) fn pow_needed(&self, now: Instant, id: ConnId) -> Option<u64> {
        let c = &self.config.pow;
        match c.mode {
            PowMode::Off => None,
            PowMode::Always => Some(c.base_maxnumber),
            PowMode::Auto => {
                let key = self.key(id);
                let load = self.conns.len() / c.load_threshold.max(1);
                let crowded =
                    self.clients.open.get(&key).copied().unwrap_or(0) > c.client_threshold;
                let abusive = self
                    .abuse
                    .get(&key)
                    .is_some_and(|&t| now.saturating_duration_since(t) < Duration::from_secs(600));
                if load == 0 && !crowded && !abusive {
                    return None;
                }
                let mut m = c.base_maxnumber.saturating_mul(load.max(1) as u64);
                if crowded || abusive {
                    m = m.saturating_mul(4);
                }
                Some(m.min(c.max_maxnumber))
            }
        }
    }
}
