//! The loopback-only guard for WebRTC tests.
//!
//! A browser gathers ICE candidates from every interface it can see and sends
//! STUN checks to every candidate its peer offers. On a developer machine
//! that means real addresses and real packets, so WebRTC tests only run in a
//! network namespace whose only addresses are 127.0.0.1 and ::1
//! (`unshare -n -- bash -c 'ip link set lo up && ...'`, as `scripts/test`
//! does). Inside one, the only candidates there are to offer are loopback
//! ones, which is what this module checks before anything starts.
//!
//! Firefox finds no candidates at all there: with no default route it falls
//! back to "default address only" and has no default address. So tests
//! with Firefox run again, alone, in a namespace of their own
//! ([`rerun_in_veth_namespace`]) which also has a veth pair whose both ends
//! are inside it: [`VETH_ADDRESS`] on one end, the default route through
//! it, nobody on the other end. Packets to anything but loopback and that
//! address go into the pair and are dropped there; nothing leaves the
//! namespace. The main suite's namespace stays loopback-only.

use anyhow::{Context, Result, bail, ensure};
use std::process::Command;

/// The address of the veth end in a Firefox test's namespace; ICE
/// candidates there carry it besides 127.0.0.1.
pub const VETH_ADDRESS: &str = "10.99.0.1";
/// Its network, for flags such as `--turn-allow-peer`.
pub const VETH_NETWORK: &str = "10.99.0.0/24";
/// Set in the environment of a test run again by
/// [`rerun_in_veth_namespace`], inside that namespace.
const IN_VETH: &str = "EARSHOT_E2E_VETH";
/// The namespace of [`rerun_in_veth_namespace`]: loopback up, and a veth
/// pair that leads nowhere, with no IPv6 link-local addresses (`addrgenmode
/// none`), so that [`VETH_ADDRESS`] is the only other address. Then the test
/// binary (`$0`) runs the test named `$1`, alone.
const VETH_SETUP: &str = "set -e
ip link set lo up
ip link add v0 type veth peer name v1
ip link set v0 addrgenmode none
ip link set v1 addrgenmode none
ip addr add 10.99.0.1/24 dev v0
ip link set v0 up
ip link set v1 up
ip route add default dev v0
exec \"$0\" \"$1\" --nocapture --test-threads 1";

/// Whether this process runs inside the namespace of
/// [`rerun_in_veth_namespace`].
pub fn in_veth_namespace() -> bool {
    std::env::var_os(IN_VETH).is_some()
}

/// The addresses besides 127.0.0.1 and ::1 that this namespace may have
/// and WebRTC tests may see: [`VETH_ADDRESS`] inside the namespace of
/// [`rerun_in_veth_namespace`], none elsewhere.
pub fn inside_addresses() -> &'static [&'static str] {
    if in_veth_namespace() {
        &[VETH_ADDRESS]
    } else {
        &[]
    }
}

/// Whether `address` (of an ICE candidate, say) is one of this namespace's
/// own: loopback, one of [`inside_addresses`], or inside the namespace of
/// [`rerun_in_veth_namespace`] any address of [`VETH_NETWORK`] (a test
/// there may move the veth end to another, see [`move_address`]).
pub fn is_inside(address: &str) -> bool {
    address == "127.0.0.1"
        || address == "::1"
        || inside_addresses().contains(&address)
        || (in_veth_namespace() && in_veth_network(address))
}

/// Whether `address` is an IPv4 address of [`VETH_NETWORK`].
fn in_veth_network(address: &str) -> bool {
    address
        .parse::<std::net::Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..3] == [10, 99, 0])
}

/// Inside the namespace of [`rerun_in_veth_namespace`]: the veth end `v0`
/// loses its address `from` (in [`VETH_NETWORK`]), the default route and
/// its link: the browsers there are left with loopback only, which they
/// do not use for calls.
pub fn cut_off(from: &str) -> Result<()> {
    ensure!(
        in_veth_namespace() && in_veth_network(from),
        "cut_off only cuts the veth inside the test's own namespace"
    );
    let script = format!(
        "set -e; ip addr del {from}/24 dev v0; ip route del default dev v0 || true; \
         ip link set v0 down"
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .context("cannot run ip")?;
    ensure!(status.success(), "cutting {from} off failed: {status}");
    Ok(())
}

/// After [`cut_off`]: the veth end `v0` is up again with the address `to`
/// (in [`VETH_NETWORK`]) and the default route through it.
pub fn bring_back(to: &str) -> Result<()> {
    ensure!(
        in_veth_namespace() && in_veth_network(to),
        "bring_back only sets the veth up inside the test's own namespace"
    );
    let script = format!(
        "set -e; ip link set v0 up; ip addr add {to}/24 dev v0; ip route replace default dev v0"
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .context("cannot run ip")?;
    ensure!(status.success(), "bringing {to} back failed: {status}");
    Ok(())
}

/// Inside the namespace of [`rerun_in_veth_namespace`]: the veth end `v0`
/// trades its address `from` for `to` (both in [`VETH_NETWORK`]), as a
/// phone's does when it moves from Wi-Fi to mobile data, and the default
/// route goes through it again.
pub fn move_address(from: &str, to: &str) -> Result<()> {
    ensure!(
        in_veth_namespace() && in_veth_network(from) && in_veth_network(to),
        "move_address only moves veth addresses inside the test's own namespace"
    );
    let script = format!(
        "set -e; ip addr del {from}/24 dev v0; ip addr add {to}/24 dev v0; \
         ip route replace default dev v0"
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .context("cannot run ip")?;
    ensure!(status.success(), "moving {from} to {to} failed: {status}");
    Ok(())
}

/// `unshare -n`: what follows runs in a new network namespace, and, for a
/// user who is not root, in a new user namespace too (`-r`), where it may
/// set the network namespace up.
pub fn unshare_net() -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let mut command = Command::new("unshare");
    if !root {
        command.arg("-r");
    }
    command.arg("-n");
    command
}

/// Runs the test `test` of this test binary again, alone, in a new network
/// namespace (`unshare -n`, with `-r` for a user who is not root) set up as
/// [`VETH_SETUP`] says. Its output; an error with it if the test failed or
/// did not run.
pub fn rerun_in_veth_namespace(test: &str) -> Result<String> {
    let exe = std::env::current_exe().context("no path to this test binary")?;
    let output = unshare_net()
        .args(["--", "bash", "-c", VETH_SETUP])
        .arg(&exe)
        .arg(test)
        .env(IN_VETH, "1")
        .output()
        .context("cannot run unshare")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "{test} failed in its own network namespace ({}):\n{text}",
        output.status
    );
    ensure!(
        text.contains("running 1 test") && text.contains("1 passed"),
        "{test} did not run alone in its own network namespace:\n{text}"
    );
    Ok(text)
}

/// Whether a WebRTC test should run, from `EARSHOT_E2E` and the addresses of
/// this network namespace.
pub enum Gate {
    /// Run it; the namespace is loopback-only (but for the veth of
    /// [`rerun_in_veth_namespace`], inside its namespace).
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
    let others = non_loopback_addresses().map(|addrs| {
        addrs
            .into_iter()
            .filter(|a| !is_inside(a))
            .collect::<Vec<_>>()
    });
    match others {
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
