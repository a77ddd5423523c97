//! `lameduck rainbow run` against the test API server, with real gates as pods: the test
//! API server's Deployment and ReplicaSet controllers make the pods, a small kubelet here
//! starts a real gate wrapping engine-sim for each (on its own loopback address, with the
//! real ports) and stops it with SIGTERM when the pod is deleted, and the controller reads
//! the gates' `/status` through the API server's pod proxy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck_testapi::TestApi;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::cluster::{KubePod, LONG_STREAMS, PodSetup, kubeconfig, pod_spec};
use crate::support::*;

const RD: (&str, &str) = ("lameduck.io/v1alpha1", "RainbowDeployment");

/// The pods' kubelet: starts a gate for each new pod of the rainbow, SIGTERMs it when the pod
/// is deleted, and removes the pod once its gate has exited.
struct Kubelet {
    pods: Arc<Mutex<HashMap<String, KubePod>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// Pods get addresses 127.0.`subnet`.1, .2, …; their gates run with `gate_args`.
    fn start(
        api: &Arc<TestApi>,
        config: &std::path::Path,
        subnet: u8,
        gate_args: &'static [&'static str],
    ) -> Kubelet {
        let pods: Arc<Mutex<HashMap<String, KubePod>>> = Arc::default();
        let (api, config, shared) = (api.clone(), config.to_owned(), pods.clone());
        let task = tokio::spawn(async move {
            let mut next = 1u8;
            let mut starting: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
            let mut stopping: Vec<String> = Vec::new();
            loop {
                for p in api.list("v1", "Pod", Some("default")) {
                    let name = p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if p["metadata"]["labels"]["lameduck.io/rainbow"].is_null() {
                        continue;
                    }
                    let deleted = !p["metadata"]["deletionTimestamp"].is_null();
                    if !deleted && p["status"]["podIP"].is_null() && !starting.contains_key(&name) {
                        let ip: &'static str =
                            Box::leak(format!("127.0.{subnet}.{next}").into_boxed_str());
                        next += 1;
                        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
                        let (api, config, shared) = (api.clone(), config.clone(), shared.clone());
                        starting.insert(
                            name.clone(),
                            tokio::spawn(async move {
                                let pod = KubePod::start(
                                    &api,
                                    &config,
                                    PodSetup {
                                        name: leaked,
                                        ip,
                                        kube: false,
                                        probe_period: 1,
                                        gate_args,
                                        sim_args: LONG_STREAMS,
                                        ..PodSetup::default()
                                    },
                                )
                                .await;
                                shared.lock().expect("pods").insert(leaked.to_owned(), pod);
                            }),
                        );
                    }
                    if deleted && !stopping.contains(&name) {
                        let pods = shared.lock().expect("pods");
                        if let Some(pod) = pods.get(&name) {
                            pod.gate.signal(Signal::SIGTERM);
                            stopping.push(name.clone());
                        }
                    }
                }
                // A stopped gate's pod is removed, as the kubelet's final delete does.
                stopping.retain(|name| {
                    let mut pods = shared.lock().expect("pods");
                    let exited = pods
                        .get_mut(name)
                        .is_none_or(|p| p.gate.child.try_wait().ok().flatten().is_some());
                    if exited {
                        pods.remove(name);
                        api.remove("v1", "Pod", Some("default"), name);
                    }
                    !exited
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Kubelet { pods, task }
    }

    /// Opens a stream of `tokens` (20 a second) on the first running pod of `colour`.
    fn open_stream(
        &self,
        api: &TestApi,
        colour: &str,
        tokens: u32,
    ) -> tokio::task::JoinHandle<StreamEnd> {
        let name = pods_of(api, colour)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no pod of colour {colour}"));
        let pods = self.pods.lock().expect("pods");
        pods.get(&name)
            .unwrap_or_else(|| panic!("pod {name} not running"))
            .open_stream(tokens)
    }
}

fn pods_of(api: &TestApi, colour: &str) -> Vec<String> {
    api.list("v1", "Pod", Some("default"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["lameduck.io/colour"] == colour)
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// The RainbowDeployment `llm`: one replica of a gated engine whose template carries
/// `release` as an annotation (a new release is a new value).
pub(crate) fn rainbow(api: &TestApi, release: &str, quiet: &str, max_age: &str) {
    api.create(json!({
        "apiVersion": RD.0, "kind": RD.1,
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "services": ["llm"],
            "retirement": {"quietPeriod": quiet, "maxAge": max_age},
            "template": template(release),
        }
    }));
}

fn template(release: &str) -> Value {
    let mut spec = pod_spec(&PodSetup {
        probe_period: 1,
        kube: false,
        ..PodSetup::default()
    });
    if let Some(o) = spec.as_object_mut() {
        o.remove("nodeName");
    }
    json!({
        "metadata": {"labels": {"app": "llm"}, "annotations": {"release": release}},
        "spec": spec,
    })
}

fn release(api: &TestApi, release: &str) {
    assert!(api.modify(RD.0, RD.1, Some("default"), "llm", |rd| {
        rd["spec"]["template"] = template(release);
    }));
}

fn status(api: &TestApi) -> Value {
    api.get(RD.0, RD.1, Some("default"), "llm")
        .map(|rd| rd["status"].clone())
        .unwrap_or_default()
}

/// The colours with a Deployment: (colour, replicas).
fn colours(api: &TestApi) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = api
        .list("apps/v1", "Deployment", Some("default"))
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["lameduck.io/rainbow"] == "llm")
        .map(|d| {
            (
                d["metadata"]["labels"]["lameduck.io/colour"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["spec"]["replicas"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

fn serving(api: &TestApi) -> Option<String> {
    api.get("v1", "Service", Some("default"), "llm")
        .and_then(|s| {
            s["spec"]["selector"]["lameduck.io/colour"]
                .as_str()
                .map(str::to_owned)
        })
}

fn colour_row(api: &TestApi, colour: &str) -> Value {
    status(api)["colours"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["colour"] == colour).cloned())
        .unwrap_or_default()
}

fn events(api: &TestApi, reason: &str) -> Vec<String> {
    api.list("v1", "Event", Some("default"))
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"] == "RainbowDeployment" && e["reason"] == reason)
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

async fn until(what: &str, timeout: Duration, api: &TestApi, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "{what} within {timeout:?}; status: {:#}\ncolours: {:?}",
            status(api),
            colours(api)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn controller(config: &std::path::Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let cfg = config.display().to_string();
    let mut args = vec![
        "rainbow",
        "run",
        "--kubeconfig",
        &cfg,
        "--poll",
        "300ms",
        "--admin",
        &admin,
        "--lease-duration",
        "2",
    ];
    args.extend_from_slice(extra);
    (Proc::spawn(&args), port)
}

async fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, body) = get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    body.lines()
        .find(|l| l.split(' ').next() == Some(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Setup {
    api: Arc<TestApi>,
    config: PathBuf,
    kubelet: Kubelet,
}

/// The API server, the Service, the kubelet, and the rainbow at its first release, serving.
async fn setup(
    tag: &str,
    subnet: u8,
    gate_args: &'static [&'static str],
    quiet: &str,
    max_age: &str,
) -> Setup {
    let api = Arc::new(TestApi::start().await);
    service(&api);
    let config = kubeconfig(&api, tag);
    let kubelet = Kubelet::start(&api, &config, subnet, gate_args);
    rainbow(&api, "1", quiet, max_age);
    Setup {
        api,
        config,
        kubelet,
    }
}

fn service(api: &TestApi) {
    crate::cluster::service(api);
}

impl Setup {
    /// Opens a stream of `tokens` (20 a second) on `colour`'s pod and waits until the
    /// controller's status counts it.
    async fn stream_on(&self, colour: &str, tokens: u32) -> tokio::task::JoinHandle<StreamEnd> {
        let stream = self.kubelet.open_stream(&self.api, colour, tokens);
        until(
            "the stream is in flight",
            Duration::from_secs(20),
            &self.api,
            || colour_row(&self.api, colour)["inFlight"] == 1,
        )
        .await;
        stream
    }

    /// Releases `release` and waits until the Services select a colour other than `from`;
    /// returns it.
    async fn release_from(&self, release_name: &str, from: &[&str]) -> String {
        release(&self.api, release_name);
        until(
            "the Services move to the new colour",
            Duration::from_secs(40),
            &self.api,
            || serving(&self.api).is_some_and(|c| !from.contains(&c.as_str())),
        )
        .await;
        serving(&self.api).unwrap_or_default()
    }
}

async fn first_colour(s: &Setup) -> String {
    until(
        "the first colour serves",
        Duration::from_secs(40),
        &s.api,
        || serving(&s.api).is_some(),
    )
    .await;
    serving(&s.api).unwrap_or_default()
}

/// A release while a long stream runs on the old colour: the Services move to the new
/// colour once it is Ready, the old one keeps its pod (and the stream) until the stream ends,
/// then after the quiet period it is scaled to zero, its pod drains and goes, and its
/// Deployment is deleted. The stream completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_keeps_the_old_colour_until_its_streams_end() {
    let s = setup("rainbow-release", 1, &[], "2s", "1h").await;
    let (mut ctl, port) = controller(&s.config, &[]);
    let old = first_colour(&s).await;
    // 200 tokens at 20 a second: about 10 s.
    let stream = s.stream_on(&old, 200).await;
    let new = s.release_from("2", &[&old]).await;
    // The old colour is kept, whole, while its stream runs.
    until(
        "the status shows the old colour draining",
        Duration::from_secs(10),
        &s.api,
        || colour_row(&s.api, &old)["phase"] == "Draining",
    )
    .await;
    let row = colour_row(&s.api, &old);
    assert_eq!(row["phase"], "Draining", "{row}");
    assert_eq!(row["inFlight"], 1, "{row}");
    assert!(
        colours(&s.api).contains(&(old.clone(), 1)),
        "{:?}",
        colours(&s.api)
    );
    assert_eq!(metric(port, &format!("lameduck_rainbow_in_flight{{namespace=\"default\",rainbow=\"llm\",colour=\"{old}\"}}")).await, Some(1.0));
    let end = stream.await.expect("join");
    assert!(
        matches!(end, StreamEnd::Finished { tokens: 200, .. }),
        "the stream completes on the old colour: {end:?}"
    );
    // While it ran, the old colour was never scaled down.
    assert!(
        events(&s.api, "ColourRetired").is_empty(),
        "{:?}",
        events(&s.api, "ColourRetired")
    );
    until(
        "the old colour is retired and deleted",
        Duration::from_secs(40),
        &s.api,
        || colours(&s.api) == vec![(new.clone(), 1)],
    )
    .await;
    let retired = events(&s.api, "ColourRetired");
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert!(retired[0].contains("nothing in flight"), "{retired:?}");
    assert!(pods_of(&s.api, &old).is_empty());
    assert_eq!(serving(&s.api).as_deref(), Some(new.as_str()));
    until(
        "the status shows one colour",
        Duration::from_secs(10),
        &s.api,
        || status(&s.api)["alive"] == 1,
    )
    .await;
    assert_eq!(
        metric(port, "lameduck_rainbow_retirements_total{reason=\"quiet\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            port,
            "lameduck_rainbow_retirements_total{reason=\"max_age\"}"
        )
        .await,
        Some(0.0)
    );
    assert_eq!(metric(port, "lameduck_rainbow_leader").await, Some(1.0));
    ctl.signal(Signal::SIGTERM);
    assert_eq!(ctl.wait_exit(Duration::from_secs(10)).await, 0);
}

/// `maxAge` retires a colour whose work never ends: its pod is then deleted, its gate drains
/// (the stream ends with the terminal event, not a reset), and the colour goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_retires_a_stuck_colour() {
    // A short grace period: the stuck stream is ended at the gate's deadline.
    let s = setup("rainbow-maxage", 2, &["--grace-period", "4"], "1h", "3s").await;
    let (_ctl, port) = controller(&s.config, &[]);
    let old = first_colour(&s).await;
    let stream = s.stream_on(&old, 100_000).await;
    release(&s.api, "2");
    until(
        "the old colour is retired",
        Duration::from_secs(40),
        &s.api,
        || colours(&s.api).contains(&(old.clone(), 0)),
    )
    .await;
    // The Event follows the scale-down.
    until(
        "the retirement's Event",
        Duration::from_secs(10),
        &s.api,
        || !events(&s.api, "ColourRetired").is_empty(),
    )
    .await;
    let retired = events(&s.api, "ColourRetired");
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert!(
        retired[0].contains("maxAge with 1 in flight"),
        "{retired:?}"
    );
    // The status is written after the actions: it may lag the scale-down by a moment.
    until(
        "the status says why it is retiring",
        Duration::from_secs(10),
        &s.api,
        || colour_row(&s.api, &old)["retiring"] == "maxAge",
    )
    .await;
    let end = stream.await.expect("join");
    assert!(
        matches!(end, StreamEnd::TerminalError { done: true, .. }),
        "the stuck stream ends cleanly at its gate's deadline: {end:?}"
    );
    until(
        "the retired colour is deleted",
        Duration::from_secs(40),
        &s.api,
        || colours(&s.api).len() == 1,
    )
    .await;
    assert_eq!(
        metric(
            port,
            "lameduck_rainbow_retirements_total{reason=\"max_age\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(port, "lameduck_rainbow_retirements_total{reason=\"quiet\"}").await,
        Some(0.0)
    );
}

/// Two releases in a row, each while the colour before held a stream: three colours live at
/// once, and each old one goes when its own stream has ended — the oldest first, since its
/// stream ends first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_releases_leave_three_colours_each_retired_by_its_own_work() {
    let s = setup("rainbow-three", 3, &[], "1s", "1h").await;
    let (_ctl, _port) = controller(&s.config, &[]);
    let first = first_colour(&s).await;
    // About 10 s on the first colour.
    let a = s.stream_on(&first, 200).await;
    let second = s.release_from("2", &[&first]).await;
    // About 18 s on the second colour.
    let b = s.stream_on(&second, 360).await;
    release(&s.api, "3");
    until(
        "three colours live at once",
        Duration::from_secs(10),
        &s.api,
        || colours(&s.api).len() == 3,
    )
    .await;
    until(
        "the third colour serves",
        Duration::from_secs(40),
        &s.api,
        || serving(&s.api).is_some_and(|c| c != first && c != second),
    )
    .await;
    let third = serving(&s.api).unwrap_or_default();
    assert!(matches!(
        a.await.expect("join"),
        StreamEnd::Finished { tokens: 200, .. }
    ));
    until(
        "the first colour goes",
        Duration::from_secs(30),
        &s.api,
        || !colours(&s.api).iter().any(|(c, _)| *c == first),
    )
    .await;
    // The second still holds its stream: it stays.
    assert!(
        colours(&s.api).contains(&(second.clone(), 1)),
        "the second colour is kept while its stream runs: {:?}",
        colours(&s.api)
    );
    assert_eq!(colour_row(&s.api, &second)["inFlight"], 1);
    assert!(matches!(
        b.await.expect("join"),
        StreamEnd::Finished { tokens: 360, .. }
    ));
    until(
        "the second colour goes",
        Duration::from_secs(30),
        &s.api,
        || colours(&s.api) == vec![(third.clone(), 1)],
    )
    .await;
    let retired = events(&s.api, "ColourRetired");
    assert_eq!(retired.len(), 2, "{retired:?}");
    assert!(
        retired[0].contains(&first) && retired[1].contains(&second),
        "{retired:?}"
    );
}

/// A controller that crashes (SIGKILL) mid-transition — new colour serving, old colour still
/// streaming — is replaced by another replica, which takes the Lease once it expires and
/// converges to the same state: the old colour kept until its stream ends, then retired, no
/// colour created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_converges_to_the_same_state() {
    let s = setup("rainbow-restart", 4, &[], "1s", "1h").await;
    let (mut first_ctl, _) = controller(&s.config, &["--identity", "first"]);
    let old = first_colour(&s).await;
    let lease = |api: &TestApi| {
        api.get(
            "coordination.k8s.io/v1",
            "Lease",
            Some("default"),
            "lameduck-rainbow",
        )
        .map(|l| l["spec"]["holderIdentity"].clone())
        .unwrap_or_default()
    };
    assert_eq!(lease(&s.api), "first");
    let stream = s.stream_on(&old, 240).await;
    let new = s.release_from("2", &[&old]).await;
    first_ctl.signal(Signal::SIGKILL);
    first_ctl.wait_exit(Duration::from_secs(10)).await;
    let (mut second_ctl, port) = controller(&s.config, &["--identity", "second"]);
    until(
        "the second replica takes the Lease",
        Duration::from_secs(20),
        &s.api,
        || lease(&s.api) == "second",
    )
    .await;
    // It says so in its metrics a moment after it took the Lease.
    let t0 = Instant::now();
    while metric(port, "lameduck_rainbow_leader").await != Some(1.0) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the new leader's metric"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old colour is still there with its stream.
    assert!(
        colours(&s.api).contains(&(old.clone(), 1)),
        "{:?}",
        colours(&s.api)
    );
    assert!(matches!(
        stream.await.expect("join"),
        StreamEnd::Finished { tokens: 240, .. }
    ));
    until(
        "the old colour goes",
        Duration::from_secs(40),
        &s.api,
        || colours(&s.api) == vec![(new.clone(), 1)],
    )
    .await;
    assert_eq!(events(&s.api, "ColourCreated").len(), 2, "one per release");
    // The crash may land between the Services' patch and its Event: one or two, never more.
    let moved = events(&s.api, "ServicesMoved").len();
    assert!((1..=2).contains(&moved), "{moved}");
    assert_eq!(events(&s.api, "ColourRetired").len(), 1);
    // A clean stop gives the Lease up.
    second_ctl.signal(Signal::SIGTERM);
    assert_eq!(second_ctl.wait_exit(Duration::from_secs(10)).await, 0);
    assert_eq!(lease(&s.api), Value::Null, "released");
}

/// Rollback: the template set back to the old colour's while it is still alive moves the
/// Services back to it, with no new Deployment; the colour rolled back from is then the old
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_moves_the_services_back_to_a_live_colour() {
    let s = setup("rainbow-rollback", 5, &[], "1h", "1h").await;
    let (_ctl, _port) = controller(&s.config, &[]);
    let old = first_colour(&s).await;
    let new = s.release_from("2", &[&old]).await;
    until(
        "the old colour is quiet",
        Duration::from_secs(10),
        &s.api,
        || colour_row(&s.api, &old)["phase"] == "Quiet",
    )
    .await;
    release(&s.api, "1");
    until(
        "the Services move back",
        Duration::from_secs(20),
        &s.api,
        || serving(&s.api).as_deref() == Some(old.as_str()),
    )
    .await;
    assert_eq!(
        colours(&s.api),
        {
            let mut v = vec![(old.clone(), 1), (new.clone(), 1)];
            v.sort();
            v
        },
        "no Deployment created for the rollback"
    );
    until(
        "the status shows the rollback",
        Duration::from_secs(10),
        &s.api,
        || {
            let st = status(&s.api);
            st["desired"] == old.as_str()
                && colour_row(&s.api, &old)["phase"] == "Serving"
                && colour_row(&s.api, &new)["phase"] == "Quiet"
        },
    )
    .await;
    assert_eq!(events(&s.api, "ColourCreated").len(), 2);
    let moved = events(&s.api, "ServicesMoved");
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(
        moved[2].contains(&format!("select colour {old} (was {new})")),
        "{moved:?}"
    );
}

/// A KEDA ScaledObject per colour, its trigger's query naming the colour's own pods through
/// `$(DEPLOYMENT)`; the superseded colour's goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_colour_gets_its_own_keda_scaled_object() {
    let s = setup("rainbow-keda", 8, &[], "1s", "1h").await;
    assert!(s.api.modify(RD.0, RD.1, Some("default"), "llm", |rd| {
        rd["spec"]["autoscaler"] = json!({
            "kind": "ScaledObject",
            "spec": {"minReplicaCount": 1, "maxReplicaCount": 4,
                     "triggers": [{"type": "prometheus", "metadata": {
                         "serverAddress": "http://prometheus.monitoring:9090",
                         "query": "sum(lameduck_gate_in_flight{pod=~\"$(DEPLOYMENT)-.*\"})",
                         "threshold": "8"}}]}
        });
    }));
    let (_ctl, _port) = controller(&s.config, &[]);
    let first = first_colour(&s).await;
    let scaled = |colour: &str| {
        s.api.get(
            "keda.sh/v1alpha1",
            "ScaledObject",
            Some("default"),
            &format!("llm-{colour}"),
        )
    };
    let so = scaled(&first).expect("the first colour's ScaledObject");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        format!("llm-{first}").as_str()
    );
    assert_eq!(
        so["spec"]["triggers"][0]["metadata"]["query"],
        format!("sum(lameduck_gate_in_flight{{pod=~\"llm-{first}-.*\"}})").as_str(),
        "the query selects this colour's pods"
    );
    assert_eq!(so["spec"]["maxReplicaCount"], 4);
    release_and_retire_with_autoscalers(&s, &first, scaled).await;
}

/// Releases "2" after `first`: the new colour gets its autoscaler, and the first colour's
/// goes when the colour does.
async fn release_and_retire_with_autoscalers(
    s: &Setup,
    first: &str,
    autoscaler: impl Fn(&str) -> Option<Value>,
) {
    let second = s.release_from("2", &[first]).await;
    until(
        "the new colour's autoscaler",
        Duration::from_secs(10),
        &s.api,
        || autoscaler(&second).is_some(),
    )
    .await;
    until(
        "the first colour goes",
        Duration::from_secs(40),
        &s.api,
        || colours(&s.api) == vec![(second.clone(), 1)],
    )
    .await;
    assert!(autoscaler(first).is_none(), "its autoscaler went with it");
}

/// A Service whose selector asks for a label the template's pods do not carry would select no
/// pod once moved: the controller leaves it where it is, says why in the status and the
/// colour's message, and moves it once the selector is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_would_select_no_pod_is_not_moved() {
    let s = setup("rainbow-unroutable", 7, &[], "1h", "1h").await;
    assert!(
        s.api
            .modify("v1", "Service", Some("default"), "llm", |svc| {
                svc["spec"]["selector"] = json!({"app": "llm", "tier": "gpu"});
            })
    );
    let (_ctl, _port) = controller(&s.config, &[]);
    until(
        "the status names the selector",
        Duration::from_secs(40),
        &s.api,
        || {
            status(&s.api)["problem"]
                .as_str()
                .is_some_and(|p| p.contains("Service llm selects tier=gpu"))
        },
    )
    .await;
    let desired = status(&s.api)["desired"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    until(
        "the colour is Ready and says why it does not serve",
        Duration::from_secs(40),
        &s.api,
        || {
            let row = colour_row(&s.api, &desired);
            row["readyReplicas"] == 1
                && row["phase"] == "Starting"
                && row["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Ready, but the Services stay where they are"))
        },
    )
    .await;
    assert_eq!(serving(&s.api), None, "the Service was not moved");
    assert!(
        s.api
            .modify("v1", "Service", Some("default"), "llm", |svc| {
                svc["spec"]["selector"] = json!({"app": "llm"});
            })
    );
    until(
        "the Service moves once it can select the pods",
        Duration::from_secs(20),
        &s.api,
        || serving(&s.api).as_deref() == Some(desired.as_str()),
    )
    .await;
    until(
        "the problem is gone",
        Duration::from_secs(10),
        &s.api,
        || status(&s.api).get("problem").is_none_or(Value::is_null),
    )
    .await;
}

/// `examples/rainbow/`: the CRD is exactly what `lameduck rainbow crd` prints, the injected
/// RainbowDeployment exactly what `inject --kube` writes from the plain one, everything but
/// the plain one lints with no finding (the plain one is told it has no gate), the built-in
/// kinds validate against the Kubernetes schema, and the RainbowDeployments against the
/// CRD's own schema (which refuses one without a template).
#[test]
fn the_rainbow_examples_are_current_lint_clean_and_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rainbow");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .expect("lameduck runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let path = |f: &str| dir.join(f).display().to_string();
    let (code, crd) = run(&["rainbow", "crd"]);
    assert_eq!(code, 0);
    assert_eq!(
        crd,
        std::fs::read_to_string(dir.join("crd.yaml")).expect("crd.yaml"),
        "examples/rainbow/crd.yaml is stale: lameduck rainbow crd > examples/rainbow/crd.yaml"
    );
    let doc = std::fs::read_to_string(dir.join("../../docs/rainbow.md")).expect("docs/rainbow.md");
    let plain = std::fs::read_to_string(dir.join("rainbow.yaml")).expect("rainbow.yaml");
    assert!(
        doc.contains(&format!("```yaml\n{plain}```\n")),
        "docs/rainbow.md no longer shows examples/rainbow/rainbow.yaml as it is"
    );
    let (code, injected) = run(&["inject", "--kube", "-q", &path("rainbow.yaml")]);
    assert_eq!(code, 0);
    assert_eq!(
        injected,
        std::fs::read_to_string(dir.join("injected.yaml")).expect("injected.yaml"),
        "examples/rainbow/injected.yaml is stale: lameduck inject --kube examples/rainbow/rainbow.yaml > examples/rainbow/injected.yaml"
    );
    let (code, report) = run(&[
        "lint",
        &path("crd.yaml"),
        &path("controller.yaml"),
        &path("injected.yaml"),
    ]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("0 error(s), 0 warning(s)"), "{report}");
    let (code, report) = run(&["lint", &path("rainbow.yaml")]);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("error[rainbow-not-gated]"), "{report}");
    let files: Vec<std::path::PathBuf> = [
        "crd.yaml",
        "controller.yaml",
        "rainbow.yaml",
        "injected.yaml",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    assert_schema_valid("examples/rainbow", &refs);
    // The custom resources against the CRD's openAPIV3Schema.
    let check = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
n = 0
for f in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "RainbowDeployment":
            jsonschema.validate(doc, schema)
            n += 1
bad = {"apiVersion": "lameduck.io/v1alpha1", "kind": "RainbowDeployment", "metadata": {"name": "x"}, "spec": {"replicas": 1}}
try:
    jsonschema.validate(bad, schema)
    sys.exit("a RainbowDeployment without a template passed the schema")
except jsonschema.ValidationError:
    pass
print(n)
"#;
    let out = std::process::Command::new(venv_bin("python"))
        .args(["-c", check])
        .args([
            path("crd.yaml"),
            path("rainbow.yaml"),
            path("injected.yaml"),
        ])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

/// With `spec.autoscaler`, each colour gets its own HorizontalPodAutoscaler aimed at its
/// Deployment; the controller leaves the replicas to it (a count the autoscaler set is not
/// undone), and deletes a colour's autoscaler when it retires that colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_colour_gets_its_own_autoscaler() {
    let s = setup("rainbow-hpa", 6, &[], "1s", "1h").await;
    assert!(s.api.modify(RD.0, RD.1, Some("default"), "llm", |rd| {
        rd["spec"]["autoscaler"] = json!({
            "kind": "HorizontalPodAutoscaler",
            "spec": {"minReplicas": 1, "maxReplicas": 3,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}
        });
    }));
    let (_ctl, _port) = controller(&s.config, &[]);
    let first = first_colour(&s).await;
    let hpa = |colour: &str| {
        s.api.get(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            Some("default"),
            &format!("llm-{colour}"),
        )
    };
    let h = hpa(&first).expect("the first colour's autoscaler");
    assert_eq!(
        h["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("llm-{first}")})
    );
    assert_eq!(h["spec"]["maxReplicas"], 3);
    // A changed autoscaler spec reaches the colour's autoscaler, fields left out included.
    assert!(s.api.modify(RD.0, RD.1, Some("default"), "llm", |rd| {
        rd["spec"]["autoscaler"]["spec"] = json!({"minReplicas": 1, "maxReplicas": 4});
    }));
    until(
        "the autoscaler follows the spec",
        Duration::from_secs(10),
        &s.api,
        || {
            hpa(&first).is_some_and(|h| {
                h["spec"]["maxReplicas"] == 4 && h["spec"].get("metrics").is_none()
            })
        },
    )
    .await;
    // The autoscaler scales the colour up: the controller leaves it so.
    assert!(s.api.modify(
        "apps/v1",
        "Deployment",
        Some("default"),
        &format!("llm-{first}"),
        |d| {
            d["spec"]["replicas"] = json!(2);
        }
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        colours(&s.api).contains(&(first.clone(), 2)),
        "{:?}",
        colours(&s.api)
    );
    release_and_retire_with_autoscalers(&s, &first, hpa).await;
    assert_eq!(events(&s.api, "AutoscalerCreated").len(), 2);
}
