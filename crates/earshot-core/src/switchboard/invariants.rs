//! The rules every state of the switchboard keeps, as code: the property
//! tests call [`Switchboard::check_invariants`] after every step.

use super::*;

impl Switchboard {
    /// Checks the switchboard's invariants; `Err` describes the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_call = 0;
        let mut remote = 0;
        let mut in_room = Vec::new();
        for (&id, c) in &self.conns {
            match c.phase {
                Phase::InRoom { room, peer } => {
                    if c.closed {
                        return Err(format!("{id} is closed but in a room"));
                    }
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is in a room and queued"));
                    }
                    in_room.push((id, room, peer));
                }
                Phase::Idle => {
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is idle but queued"));
                    }
                    if self.queue.is_joining(id) {
                        return Err(format!("{id} is idle but its room join is pending"));
                    }
                }
                Phase::Joining => {
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is joining a room but queued"));
                    }
                    if !self.queue.is_joining(id) {
                        return Err(format!("{id} is joining a room it has no name for"));
                    }
                }
                Phase::Searching => {
                    if !self.queue.is_waiting(id) {
                        return Err(format!("{id} is searching but not queued"));
                    }
                    if c.closed {
                        return Err(format!("{id} is closed but searching"));
                    }
                }
                Phase::InCall { call, partner } => {
                    in_call += 1;
                    if partner == id {
                        return Err(format!("{id} is in a call with itself"));
                    }
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is in a call and queued"));
                    }
                    if c.closed {
                        return Err(format!("{id} is closed but in a call"));
                    }
                    if self.is_remote(partner) {
                        remote += 1;
                        in_call -= 1;
                        continue;
                    }
                    let back = self.conns.get(&partner).map(|p| p.phase);
                    if back != Some(Phase::InCall { call, partner: id }) {
                        return Err(format!(
                            "{id}'s partner {partner} is not in call {call} with it"
                        ));
                    }
                }
            }
        }
        self.queue
            .check(|id| self.conns.get(&id).map(|c| c.phase))?;
        if remote != self.queue.remote_calls() {
            return Err(format!(
                "{remote} people in calls with other nodes but {} such calls",
                self.queue.remote_calls()
            ));
        }
        if in_call != 2 * self.calls {
            return Err(format!(
                "{in_call} people in calls but {} calls",
                self.calls
            ));
        }
        // In backplane mode a room also lists members on other nodes.
        if !self.queue.is_shared() {
            self.rooms.check(&in_room)?;
        }
        Ok(())
    }
}
