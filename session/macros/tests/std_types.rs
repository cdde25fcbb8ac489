//! The std types a plugin API commonly uses cross a link through a
//! `#[osmos::service]` trait: `Duration`, paths (owned and borrowed),
//! addresses, 128-bit integers, maps and sets, and methods with more
//! arguments than facet has tuples for.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use osmos::{Connection, Dispatcher, Facet, SessionBuilder};

/// Bound on every wait; only reached when something hangs.
const BOUND: Duration = Duration::from_secs(20);

/// What a job will do, echoed back from its arguments.
#[derive(Debug, Clone, PartialEq, Facet)]
#[facet(crate = osmos::facet)]
pub struct Plan {
    /// The job's name.
    pub name: String,
    /// How often it runs.
    pub every: Option<Duration>,
    /// Its inputs.
    pub inputs: Vec<PathBuf>,
    /// Where its results go, by peer name.
    pub peers: HashMap<String, SocketAddr>,
    /// Its budget.
    pub budget: u128,
    /// Its tags.
    pub tags: BTreeSet<String>,
    /// The address it was planned for.
    pub host: IpAddr,
}

/// Plans jobs.
#[osmos::service]
pub trait Planner {
    /// Plans a job from seven arguments (more than facet's largest tuple).
    #[allow(clippy::too_many_arguments)]
    async fn plan(
        &self,
        name: &str,
        every: Duration,
        inputs: Vec<PathBuf>,
        host: IpAddr,
        budget: u128,
        tags: BTreeSet<String>,
        port: u16,
    ) -> Plan;
    /// The parent directory of `path`, if any.
    async fn parent(&self, path: &Path) -> Option<PathBuf>;
    /// The total of `waits`, by name.
    async fn total(&self, waits: BTreeMap<String, Vec<Duration>>) -> BTreeMap<String, Duration>;
}

struct Impl;

impl Planner for Impl {
    async fn plan(
        &self,
        name: &str,
        every: Duration,
        inputs: Vec<PathBuf>,
        host: IpAddr,
        budget: u128,
        tags: BTreeSet<String>,
        port: u16,
    ) -> Plan {
        Plan {
            name: name.to_string(),
            every: (!every.is_zero()).then_some(every),
            inputs,
            peers: HashMap::from([(name.to_string(), SocketAddr::new(host, port))]),
            budget,
            tags,
            host,
        }
    }
    async fn parent(&self, path: &Path) -> Option<PathBuf> {
        path.parent().map(Path::to_path_buf)
    }
    async fn total(&self, waits: BTreeMap<String, Vec<Duration>>) -> BTreeMap<String, Duration> {
        waits.into_iter().map(|(k, v)| (k, v.into_iter().sum())).collect()
    }
}

async fn connect(dispatcher: Arc<dyn Dispatcher>) -> Connection {
    let (ours, theirs) = osmos::link::memory::pair(1 << 20, 64);
    let (server, client) = tokio::time::timeout(BOUND, async {
        tokio::join!(
            SessionBuilder::new().serve(dispatcher).accept(theirs),
            SessionBuilder::new().initiate(ours)
        )
    })
    .await
    .expect("handshake timed out");
    let server = server.expect("server handshake");
    tokio::spawn(async move { server.closed().await });
    client.expect("client handshake")
}

#[tokio::test]
async fn std_types_and_many_arguments_cross_a_link() {
    let planner = PlannerClient::new(connect(PlannerDispatcher::new(Impl)).await);
    let tags = BTreeSet::from(["nightly".to_string(), "gpu".to_string()]);
    let host: IpAddr = "fd00::7".parse().unwrap();
    let inputs = vec![PathBuf::from("/data/ïn"), PathBuf::from("rel/two")];
    let plan = tokio::time::timeout(
        BOUND,
        planner.plan(
            "render",
            Duration::new(90, 5),
            inputs.clone(),
            host,
            u128::MAX - 1,
            tags.clone(),
            8443,
        ),
    )
    .await
    .expect("plan hung")
    .unwrap();
    assert_eq!(
        plan,
        Plan {
            name: "render".into(),
            every: Some(Duration::new(90, 5)),
            inputs,
            peers: HashMap::from([("render".into(), "[fd00::7]:8443".parse().unwrap())]),
            budget: u128::MAX - 1,
            tags,
            host,
        }
    );
    let parent = planner.parent(Path::new("/srv/plugins/a.so")).await.unwrap();
    assert_eq!(parent, Some(PathBuf::from("/srv/plugins")));
    assert_eq!(planner.parent(Path::new("/")).await.unwrap(), None);
    let waits = BTreeMap::from([(
        "io".to_string(),
        vec![Duration::from_millis(1500), Duration::from_nanos(1)],
    )]);
    let total = planner.total(waits).await.unwrap();
    assert_eq!(total["io"], Duration::new(1, 500_000_001));
}
