//! The loopback-only guard for WebRTC tests.
//!
//! A browser gathers ICE candidates from every interface it can see and sends
//! STUN checks to every candidate its peer offers. On a developer machine
//! that means real addresses and real packets, so WebRTC tests only run in a
//! network namespace whose only addresses are 127.0.0.1 and ::1
//! (`unshare -n -- bash -c 'ip link set lo up && ...'`, as `scripts/test`
//! does). Inside one, the only candidates there are to offer are loopback
//! ones, which is what this module checks before anything starts.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Whether a WebRTC test should run, from `EARSHOT_E2E` and the addresses of
/// this network namespace.
pub enum Gate {
    /// Run it; the namespace is loopback-only.
    Run { required: bool },
    /// Do not run it, for this reason (printed as a notice).
    Skip(String),
}

/// `EARSHOT_E2E=1`: the test must run, and fails outside a loopback-only
/// namespace. `EARSHOT_E2E=0`: never run. Unset: run only when already inside
/// a loopback-only namespace.
pub fn gate() -> Result<Gate> {
    let setting = std::env::var("EARSHOT_E2E").unwrap_or_default();
    if setting == "0" {
        return Ok(Gate::Skip("EARSHOT_E2E=0".into()));
    }
    let required = setting == "1";
    match non_loopback_addresses() {
        Ok(addrs) if addrs.is_empty() => Ok(Gate::Run { required }),
        Ok(addrs) if required => bail!(
            "EARSHOT_E2E=1 but this network namespace has non-loopback addresses {addrs:?}; \
             WebRTC tests only run where nothing can leave 127.0.0.1: \
             use scripts/test, or unshare -n -- bash -c 'ip link set lo up && cargo test --offline'"
        ),
        Ok(addrs) => Ok(Gate::Skip(format!(
            "not in a loopback-only network namespace ({} other addresses); \
             scripts/test runs it in one",
            addrs.len()
        ))),
        Err(e) if required => Err(e.context("EARSHOT_E2E=1: cannot list interface addresses")),
        Err(e) => Ok(Gate::Skip(format!(
            "cannot list interface addresses: {e:#}"
        ))),
    }
}

/// Every interface address of this network namespace other than 127.0.0.1
/// and ::1. Reads `ip -o addr`, or `/proc/net` where `ip` is missing.
pub fn non_loopback_addresses() -> Result<Vec<String>> {
    let addrs = match Command::new("ip").args(["-o", "addr", "show"]).output() {
        Ok(out) if out.status.success() => parse_ip_o_addr(&String::from_utf8_lossy(&out.stdout)),
        _ => proc_addresses()?,
    };
    Ok(addrs
        .into_iter()
        .filter(|a| a != "127.0.0.1" && a != "::1")
        .collect())
}

/// Addresses from `ip -o addr` lines such as
/// `1: lo    inet 127.0.0.1/8 scope host lo\ ...`.
fn parse_ip_o_addr(text: &str) -> Vec<String> {
    let mut addrs = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "inet" || word == "inet6" {
                if let Some(cidr) = words.next() {
                    let addr = cidr.split('/').next().unwrap_or(cidr);
                    addrs.push(addr.to_string());
                }
                break;
            }
        }
    }
    addrs
}

/// The same list without `ip`: IPv6 from `/proc/net/if_inet6`, IPv4 from the
/// `/32 host LOCAL` leaves of `/proc/net/fib_trie`. Both are per namespace.
fn proc_addresses() -> Result<Vec<String>> {
    let mut addrs = Vec::new();
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in v6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        addrs.push(std::net::Ipv6Addr::from(bits).to_string());
    }
    let trie = std::fs::read_to_string("/proc/net/fib_trie")
        .context("neither `ip` nor /proc/net/fib_trie is available")?;
    let mut last = "";
    for line in trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            last = addr;
        } else if line.starts_with("/32 host LOCAL") && !addrs.iter().any(|a| a == last) {
            addrs.push(last.to_string());
        }
    }
    Ok(addrs)
}

#[test]
fn parses_ip_o_addr() {
    let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                1: lo    inet6 ::1/128 scope host \\       valid_lft forever\n\
                2: eth0    inet 10.0.0.7/24 brd 10.0.0.255 scope global eth0\n";
    assert_eq!(parse_ip_o_addr(text), ["127.0.0.1", "::1", "10.0.0.7"]);
}
