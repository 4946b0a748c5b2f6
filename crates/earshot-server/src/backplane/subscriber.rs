//! This node's channel: what other nodes publish to its connections.
//!
//! On a plain `redis-server` it is an ordinary channel (`SUBSCRIBE`); on a
//! cluster a sharded one (`SSUBSCRIBE`, on a connection of its own to the
//! primary that owns the channel's slot), so that a message travels only
//! to that primary and this node, not to every node of the cluster.

use super::link::{self, Target};
use super::resp::{Cmd, Value};

/// A subscribed connection.
pub struct Subscription {
    stream: Box<dyn link::Stream>,
    buf: Vec<u8>,
    sharded: bool,
}

impl Subscription {
    /// Connects to `target` and subscribes to `channel`.
    pub async fn open(
        target: &Target,
        channel: &str,
        sharded: bool,
    ) -> std::io::Result<Subscription> {
        let (mut stream, mut buf) = link::connect(target, !sharded).await?;
        let mut c = Cmd::new(if sharded { "SSUBSCRIBE" } else { "SUBSCRIBE" });
        c.arg(channel);
        let confirm = link::ask(&mut stream, &mut buf, &c).await?;
        let kind = if sharded { "ssubscribe" } else { "subscribe" };
        match confirm {
            Value::Array(parts) if parts.first().and_then(Value::text) == Some(kind) => {}
            other => {
                return Err(std::io::Error::other(format!(
                    "cannot subscribe: {other:?}"
                )));
            }
        }
        Ok(Subscription {
            stream,
            buf,
            sharded,
        })
    }

    /// The next message's payload. An error means messages may have been
    /// lost (the connection broke, or the channel's slot moved away).
    pub async fn next(&mut self) -> std::io::Result<Vec<u8>> {
        let kind = if self.sharded { "smessage" } else { "message" };
        loop {
            let v = link::read_reply(&mut self.stream, &mut self.buf).await?;
            let Value::Array(mut parts) = v else {
                return Err(std::io::Error::other("unexpected reply on a subscription"));
            };
            match parts.first().and_then(Value::text) {
                Some(k) if k == kind && parts.len() == 3 => {
                    if let Some(Value::Data(payload)) = parts.pop() {
                        return Ok(payload);
                    }
                }
                Some("sunsubscribe" | "unsubscribe") => {
                    return Err(std::io::Error::other("unsubscribed by Redis"));
                }
                _ => {}
            }
        }
    }
}
