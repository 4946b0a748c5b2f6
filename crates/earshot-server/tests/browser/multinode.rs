//! Several nodes: two `earshot` processes share one real `redis-server`,
//! or a Redis Cluster of three primaries (all on loopback ports); a
//! browser on each node. See the crate docs in `main.rs` and the
//! signalling-level tests in `tests/multinode.rs` and `tests/cluster.rs`.

use crate::strangers::{meet_and_chat, milestones};
use crate::support::harness::{Run, Setup, report, should_run};
use crate::support::redis::{RedisCluster, RedisServer};
use anyhow::Result;

/// What each node's trace log must mention: its half of a call whose other
/// half is on the other node.
const LOG_SHOWS: &[&str] = &["matched across nodes"];

/// A on node 1 and B on node 2 press Start: they are matched through
/// Redis, their offer, answer and candidates cross between the nodes over
/// pub/sub, and they hear each other and chat, as on one server. Ends with
/// the privacy checks of `Run::finish` over both nodes' logs.
#[test]
fn browser_strangers_talk_across_nodes() -> Result<()> {
    const TEST: &str = "browser_strangers_talk_across_nodes";
    if !should_run(TEST)? {
        return Ok(());
    }
    let redis = RedisServer::start();
    let setup = Setup {
        server_args: vec!["--redis".into(), redis.url()],
        ..Setup::default()
    };
    Run::scenario_setup(TEST, &["A", "B"], 1, LOG_SHOWS, &setup, |run| {
        let second = run.start_node()?;
        let (a, b) = (run.browser("A")?, run.browser("B")?);
        b.goto(&second)?;
        let time = meet_and_chat(run, a, b)?;
        let since = a.clicked_at("start")?.max(b.clicked_at("start")?);
        let steps: Vec<String> = milestones(a, b, since)?
            .iter()
            .map(|(label, ms)| format!("{label} {ms:.0}"))
            .collect();
        report(&format!(
            "strangers across two nodes (Redis): time to audio {time:.0} ms ({})",
            steps.join(", ")
        ));
        Ok(())
    })
}

/// The same on a Redis Cluster of three primaries: the queue in lanes
/// spread over the primaries, node channels sharded.
#[test]
fn browser_strangers_talk_across_nodes_on_a_cluster() -> Result<()> {
    const TEST: &str = "browser_strangers_talk_across_nodes_on_a_cluster";
    if !should_run(TEST)? {
        return Ok(());
    }
    let cluster = RedisCluster::start();
    let setup = Setup {
        server_args: vec!["--redis".into(), cluster.url()],
        ..Setup::default()
    };
    Run::scenario_setup(TEST, &["A", "B"], 1, LOG_SHOWS, &setup, |run| {
        let second = run.start_node()?;
        let (a, b) = (run.browser("A")?, run.browser("B")?);
        b.goto(&second)?;
        let time = meet_and_chat(run, a, b)?;
        report(&format!(
            "strangers across two nodes (Redis Cluster, 3 primaries): time to audio {time:.0} ms"
        ));
        Ok(())
    })
}
