//! A client's request: routing by method, authentication (long-term
//! credentials with REST usernames), unknown attributes, and the answers
//! (success, error, the 401/438 challenge), within the source's answer
//! budget.

use super::*;

impl TurnServer {
    pub(super) fn request(
        &mut self,
        now: Instant,
        now_unix: u64,
        client: ClientAddr,
        msg: &Message<'_>,
    ) {
        match msg.method {
            method::BINDING => {
                if !self.reject_unknown(client, msg, None) {
                    let mapped = unmap(client.addr);
                    self.reply(
                        client,
                        msg.method,
                        msg.transaction_id,
                        Class::Success,
                        None,
                        |e| {
                            e.xor_address(attr::XOR_MAPPED_ADDRESS, mapped);
                        },
                    );
                }
                return;
            }
            method::ALLOCATE
            | method::REFRESH
            | method::CREATE_PERMISSION
            | method::CHANNEL_BIND => {}
            _ => {
                self.error(client, msg.method, msg.transaction_id, None, 400);
                return;
            }
        }
        let Some(auth) = self.authenticate(now_unix, client, msg) else {
            return;
        };
        let key = Some(&auth.key);
        if let Some(&id) = self.by_client.get(&client)
            && self.allocations[&id].username != auth.username
        {
            self.error(client, msg.method, msg.transaction_id, key, 441);
            return;
        }
        if self.reject_unknown(client, msg, key) {
            return;
        }
        match msg.method {
            method::ALLOCATE => self.allocate(now, client, msg, &auth),
            method::REFRESH => self.refresh(now, client, msg, &auth.key),
            method::CREATE_PERMISSION => self.create_permission(now, client, msg, &auth.key),
            _ => self.channel_bind(now, client, msg, &auth.key),
        }
    }

    /// RFC 5389 §10.2.2, in its order. Answers the failures itself.
    pub(super) fn authenticate<'a>(
        &mut self,
        now_unix: u64,
        client: ClientAddr,
        msg: &Message<'a>,
    ) -> Option<Auth<'a>> {
        let txid = msg.transaction_id;
        if !msg.has_integrity() {
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        let (Ok(Some(username)), Ok(Some(_)), Ok(Some(nonce))) = (
            msg.text(attr::USERNAME),
            msg.text(attr::REALM),
            msg.text(attr::NONCE),
        ) else {
            self.error(client, msg.method, txid, None, 400);
            return None;
        };
        if !self.nonces.is_valid(nonce, now_unix) {
            self.challenge(client, msg.method, txid, 438, now_unix);
            return None;
        }
        // An expired REST username is as good as unknown.
        if auth::rest_expiry(username).is_none_or(|expiry| expiry <= now_unix) {
            tracing::debug!("turn: expired or malformed username");
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        let password = auth::rest_password(&self.config.secret, username);
        let key = auth::long_term_key(username, &self.config.realm, &password);
        if !msg.check_integrity(&key) {
            tracing::debug!("turn: bad MESSAGE-INTEGRITY");
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        Some(Auth { key, username })
    }

    /// Answers with 420 if the request has comprehension-required
    /// attributes we do not understand.
    pub(super) fn reject_unknown(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        key: Option<&[u8; 16]>,
    ) -> bool {
        let mut unknown = Vec::new();
        for kind in msg.kinds() {
            if kind < 0x8000 && !KNOWN.contains(&kind) && !unknown.contains(&kind) {
                unknown.push(kind);
            }
        }
        if unknown.is_empty() {
            return false;
        }
        unknown.truncate(MAX_UNKNOWN_LISTED);
        let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
        self.reply(
            client,
            msg.method,
            msg.transaction_id,
            Class::Error,
            key,
            |e| {
                e.error_code(420, reason(420))
                    .add(attr::UNKNOWN_ATTRIBUTES, &list);
            },
        );
        true
    }

    /// 401 or 438 with REALM and a fresh NONCE, so the client can retry.
    pub(super) fn challenge(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        code: u16,
        now_unix: u64,
    ) {
        let nonce = self.nonces.mint(now_unix);
        let realm = self.config.realm.clone();
        self.reply(client, method, txid, Class::Error, None, |e| {
            e.error_code(code, reason(code))
                .add(attr::REALM, realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes());
        });
    }

    pub(super) fn error(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        key: Option<&[u8; 16]>,
        code: u16,
    ) {
        tracing::debug!(method, code, "turn: error response");
        self.reply(client, method, txid, Class::Error, key, |e| {
            e.error_code(code, reason(code));
        });
    }

    pub(super) fn reply(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        class: Class,
        key: Option<&[u8; 16]>,
        build: impl FnOnce(&mut Encoder),
    ) {
        let mut e = Encoder::new(method, class, txid);
        build(&mut e);
        if let Some(key) = key {
            e.integrity(key);
        }
        e.fingerprint();
        let data = e.finish();
        // A forged UDP source could aim unauthenticated answers at a victim;
        // over TCP the handshake proved the address.
        if key.is_none() && client.transport == Transport::Udp {
            let now = self
                .now
                .expect("answers follow an input, which sets the clock");
            let config = self.config.answers;
            let budget = self
                .answers
                .get_or_insert_with(|| AnswerBudget::new(now, config));
            if !budget.allow(now, client.addr.ip(), data.len()) {
                return;
            }
        }
        self.outputs.push_back(Output::ToClient { client, data });
    }
}
