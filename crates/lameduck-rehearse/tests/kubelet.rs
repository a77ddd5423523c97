//! The kubelet emulator against real processes: small `sh` containers that record the
//! signals they get, real exec hooks and probes, real time (scaled ten times).
//!
//! Assertions are on order and on lower bounds of durations (a sleep never ends early);
//! upper bounds are generous, because the machine is shared.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lameduck_rehearse::balancer::Endpoints;
use lameduck_rehearse::clock::{Clock, Event, EventKind, ProbeKind, Recorder};
use lameduck_rehearse::kubelet::{Delete, Engine, PodEnv, PodHandle, Reaper, spawn_pod};
use lameduck_rehearse::setup::{Handler, ProbeSpec, Setup};
use lameduck_timeline::Probe;

const SCALE: f64 = 10.0;

/// A container that writes `term` to term.log on SIGTERM and exits 0.
const TRAPS_TERM: &str = "trap 'echo term >> term.log; exit 0' TERM; while :; do sleep 0.05; done";
/// A container that ignores SIGTERM.
const IGNORES_TERM: &str = "trap '' TERM; while :; do sleep 0.05; done";

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn setup(name: &str, grace: u64) -> Setup {
    Setup {
        grace: Duration::from_secs(grace),
        ..Setup::new(name)
    }
}

struct Harness {
    rec: Recorder,
    endpoints: Arc<Endpoints>,
    env: Arc<PodEnv>,
    dir: PathBuf,
}

impl Harness {
    fn new(setup: Setup, container: &str) -> Self {
        let clock = Clock::start(SCALE);
        let rec = Recorder::new(clock);
        let endpoints = Endpoints::new(rec.clone(), "1s".parse().expect("lag"), 1);
        let dir = std::env::temp_dir().join(format!(
            "lameduck-kubelet-test-{}-{}",
            std::process::id(),
            setup.name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let env = Arc::new(PodEnv {
            clock,
            rec: rec.clone(),
            endpoints: endpoints.clone(),
            setup,
            engine: Engine::Command(sh(container)),
            exe: PathBuf::from("/nonexistent"),
            dir: dir.clone(),
            reaper: Arc::new(Reaper::default()),
            seed: 1,
            service: "127.0.0.1:9".parse().expect("addr"),
        });
        Harness {
            rec,
            endpoints,
            env,
            dir,
        }
    }

    fn pod(&self) -> PodHandle {
        spawn_pod(self.env.clone(), 0).expect("pod")
    }

    fn file(&self, pod: &PodHandle, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(&pod.name).join(name)).unwrap_or_default()
    }

    fn events(&self) -> Vec<Event> {
        self.rec.events()
    }

    async fn until(&self, what: &str, f: impl Fn(&[Event]) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while !f(&self.events()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}: {:#?}",
            self.events()
        );
    }

    async fn started(&self) {
        self.until("the container to start", |ev| {
            at(ev, |k| matches!(k, EventKind::Started { .. })).is_some()
        })
        .await;
    }

    async fn delete_and_wait(&self, pod: &PodHandle) {
        assert!(pod.delete(Delete::default()));
        assert!(!pod.delete(Delete::default()), "a second delete is refused");
        let gone = tokio::time::timeout(Duration::from_secs(30), pod.wait_gone()).await;
        assert!(
            gone.is_ok(),
            "the pod never went away: {:#?}",
            self.events()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.env.reaper.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The time of the first event matching `f`.
fn at(events: &[Event], f: impl Fn(&EventKind) -> bool) -> Option<f64> {
    events.iter().find(|e| f(&e.kind)).map(|e| e.t)
}

fn count(events: &[Event], f: impl Fn(&EventKind) -> bool) -> usize {
    events.iter().filter(|e| f(&e.kind)).count()
}

#[tokio::test]
async fn prestop_runs_before_sigterm_while_the_endpoint_is_removed() {
    let mut s = setup("order", 60);
    s.pre_stop = Some(Handler::Exec {
        command: sh("echo prestop >> prestop.log; sleep 20"),
    });
    let h = Harness::new(s, TRAPS_TERM);
    let pod = h.pod();
    h.until("the endpoint to become ready", |_| {
        h.endpoints.ready_count() == 1
    })
    .await;
    h.delete_and_wait(&pod).await;
    let ev = h.events();
    let deleted = at(&ev, |k| *k == EventKind::Deleted).expect("deleted");
    let hook_start = at(&ev, |k| *k == EventKind::PreStopStart).expect("preStop start");
    let hook_end =
        at(&ev, |k| matches!(k, EventKind::PreStopEnd { ok: true, .. })).expect("preStop end");
    let term = at(&ev, |k| *k == EventKind::Sigterm).expect("SIGTERM");
    let exited = at(
        &ev,
        |k| matches!(k, EventKind::Exited { status } if status == "exit 0"),
    )
    .expect("exit 0");
    let removed = at(&ev, |k| {
        matches!(k, EventKind::Endpoint { state: "removed" })
    })
    .expect("endpoint removed");
    assert!(deleted <= hook_start && hook_start < hook_end && hook_end <= term && term <= exited);
    // `sleep 20` lasts 20 unscaled seconds.
    assert!(hook_end - hook_start >= 19.9, "{ev:#?}");
    // Removal started with the deletion, not after the hook: it landed one lag later,
    // while the hook still ran.
    assert!(removed >= deleted + 0.99 && removed < hook_end, "{ev:#?}");
    assert_eq!(count(&ev, |k| matches!(k, EventKind::Sigkill { .. })), 0);
    assert_eq!(h.file(&pod, "prestop.log"), "prestop\n");
    assert_eq!(h.file(&pod, "term.log"), "term\n");
    assert_eq!(h.endpoints.ready_count(), 0);
}

#[tokio::test]
async fn sigkill_comes_when_the_grace_period_ends() {
    let h = Harness::new(setup("deadline", 5), IGNORES_TERM);
    let pod = h.pod();
    h.started().await;
    h.delete_and_wait(&pod).await;
    let ev = h.events();
    let deleted = at(&ev, |k| *k == EventKind::Deleted).expect("deleted");
    let term = at(&ev, |k| *k == EventKind::Sigterm).expect("SIGTERM");
    let kill = at(
        &ev,
        |k| matches!(k, EventKind::Sigkill { reason } if reason.contains("grace period")),
    )
    .expect("SIGKILL");
    let exited = at(
        &ev,
        |k| matches!(k, EventKind::Exited { status } if status.starts_with("signal 9")),
    )
    .expect("killed by signal 9");
    assert!(term < kill && kill <= exited, "{ev:#?}");
    // With no preStop, SIGTERM is immediate and SIGKILL waits for the whole grace period.
    assert!(term - deleted < 2.0, "{ev:#?}");
    assert!(kill - deleted >= 4.9, "{ev:#?}");
}

#[tokio::test]
async fn a_prestop_longer_than_grace_is_abandoned_then_two_seconds_of_sigterm() {
    let mut s = setup("long-hook", 5);
    s.pre_stop = Some(Handler::Exec {
        command: sh("sleep 60"),
    });
    let h = Harness::new(s, IGNORES_TERM);
    let pod = h.pod();
    h.started().await;
    h.delete_and_wait(&pod).await;
    let ev = h.events();
    let deleted = at(&ev, |k| *k == EventKind::Deleted).expect("deleted");
    let abandoned = at(&ev, |k| {
        matches!(k, EventKind::PreStopEnd { ok: false, .. })
    })
    .expect("hook abandoned");
    let term = at(&ev, |k| *k == EventKind::Sigterm).expect("SIGTERM");
    let kill = at(&ev, |k| matches!(k, EventKind::Sigkill { .. })).expect("SIGKILL");
    // The hook ran the whole grace period; SIGTERM came only then, and SIGKILL the
    // kubelet's minimum stop window later, not at once.
    assert!(abandoned - deleted >= 4.9, "{ev:#?}");
    assert!(abandoned <= term && term < kill, "{ev:#?}");
    // The two seconds count from the hook's deadline, not from the moment the SIGTERM
    // event was logged (which a busy machine can delay), so measure from the deletion
    // and keep a wide margin against the immediate kill this test guards against.
    assert!(kill - deleted >= 6.9, "{ev:#?}");
    assert!(kill - term >= 1.5, "{ev:#?}");
}

#[tokio::test]
async fn probes_keep_running_during_termination() {
    let mut s = setup("probes", 60);
    // The shell pattern: the hook sets a marker that fails readiness. `/tmp` is the pod's own.
    s.pre_stop = Some(Handler::Exec {
        command: sh("touch /tmp/draining && sleep 10"),
    });
    s.readiness = Some(ProbeSpec {
        handler: Handler::Exec {
            command: sh("! test -f /tmp/draining"),
        },
        timing: Probe {
            period: Duration::from_secs(1),
            failure_threshold: 1,
            ..Probe::default()
        },
    });
    let h = Harness::new(s, TRAPS_TERM);
    let pod = h.pod();
    h.until("readiness", |ev| {
        at(ev, |k| *k == EventKind::Ready { ready: true }).is_some()
    })
    .await;
    assert!(pod.is_ready());
    h.delete_and_wait(&pod).await;
    let ev = h.events();
    let deleted = at(&ev, |k| *k == EventKind::Deleted).expect("deleted");
    let term = at(&ev, |k| *k == EventKind::Sigterm).expect("SIGTERM");
    let failed_during = ev
        .iter()
        .filter(|e| {
            e.t > deleted
                && e.t < term
                && e.kind
                    == EventKind::Probe {
                        probe: ProbeKind::Readiness,
                        ok: false,
                    }
        })
        .count();
    assert!(failed_during >= 3, "{ev:#?}");
    let unready = ev
        .iter()
        .find(|e| e.t > deleted && e.kind == EventKind::Ready { ready: false })
        .map(|e| e.t)
        .expect("unready after the deletion");
    assert!(unready > deleted && unready < term);
    assert!(
        h.dir.join(&pod.name).join("tmp/draining").exists(),
        "the marker went into the pod's own /tmp"
    );
}

#[tokio::test]
async fn a_failed_liveness_probe_restarts_the_container() {
    let mut s = setup("liveness", 3);
    s.liveness = Some(ProbeSpec {
        handler: Handler::Exec {
            command: sh("! test -f /tmp/dead"),
        },
        timing: Probe {
            period: Duration::from_secs(1),
            failure_threshold: 2,
            ..Probe::default()
        },
    });
    let h = Harness::new(s, TRAPS_TERM);
    let pod = h.pod();
    h.started().await;
    let marker = h.dir.join(&pod.name).join("tmp/dead");
    std::fs::write(&marker, "").expect("marker");
    h.until("the liveness kill", |ev| {
        at(ev, |k| *k == EventKind::LivenessKill).is_some()
    })
    .await;
    std::fs::remove_file(&marker).expect("marker");
    h.until("the restart", |ev| {
        count(ev, |k| matches!(k, EventKind::Started { .. })) >= 2
    })
    .await;
    let ev = h.events();
    let kill = at(&ev, |k| *k == EventKind::LivenessKill).expect("liveness kill");
    let term = at(&ev, |k| *k == EventKind::Sigterm).expect("SIGTERM");
    assert!(kill <= term, "{ev:#?}");
    assert!(h.file(&pod, "term.log").starts_with("term\n"));
    assert_eq!(count(&ev, |k| *k == EventKind::Deleted), 0);
    h.delete_and_wait(&pod).await;
}

/// A container that becomes healthy (creates `/tmp/up`) 8 unscaled seconds after it starts,
/// like an engine loading its model, and traps SIGTERM.
const SLOW_START: &str = "trap 'echo term >> term.log; exit 0' TERM; sleep 0.8; touch tmp/up; while :; do sleep 0.05; done";

fn exec_probe(script: &str, period: u64, failures: u32) -> ProbeSpec {
    ProbeSpec {
        handler: Handler::Exec {
            command: sh(script),
        },
        timing: Probe {
            period: Duration::from_secs(period),
            failure_threshold: failures,
            ..Probe::default()
        },
    }
}

/// A startup probe holds readiness and liveness back until it succeeds: the impatient
/// liveness probe that kills the slow starter without it never runs early with it.
#[tokio::test]
async fn a_startup_probe_protects_a_slow_start() {
    // Without a startup probe: liveness (every 1 s, 2 failures) restarts it during its start.
    let mut bare = setup("no-startup", 3);
    bare.liveness = Some(exec_probe("test -f /tmp/up", 1, 2));
    bare.readiness = Some(exec_probe("test -f /tmp/up", 1, 1));
    let h = Harness::new(bare, SLOW_START);
    let pod = h.pod();
    h.until("the liveness kill", |ev| {
        at(ev, |k| *k == EventKind::LivenessKill).is_some()
    })
    .await;
    h.delete_and_wait(&pod).await;
    drop(h);

    // With one (every 1 s, up to 30 failures): no kill, readiness and liveness probe only
    // after its first success, and the pod becomes ready.
    let mut guarded = setup("startup", 3);
    guarded.liveness = Some(exec_probe("test -f /tmp/up", 1, 2));
    guarded.readiness = Some(exec_probe("test -f /tmp/up", 1, 1));
    guarded.startup = Some(exec_probe("test -f /tmp/up", 1, 30));
    let h = Harness::new(guarded, SLOW_START);
    let pod = h.pod();
    h.until("readiness", |_| h.endpoints.ready_count() == 1)
        .await;
    let ev = h.events();
    let started = at(&ev, |k| {
        matches!(
            k,
            EventKind::Probe {
                probe: ProbeKind::Startup,
                ok: true
            }
        )
    })
    .expect("the startup probe succeeded");
    let first_other = at(&ev, |k| {
        matches!(
            k,
            EventKind::Probe {
                probe: ProbeKind::Readiness | ProbeKind::Liveness,
                ..
            }
        )
    })
    .expect("readiness and liveness probed");
    assert!(started <= first_other, "{ev:#?}");
    assert!(
        count(&ev, |k| matches!(
            k,
            EventKind::Probe {
                probe: ProbeKind::Startup,
                ok: false
            }
        )) >= 1,
        "the startup probe waited through the slow start: {ev:#?}"
    );
    assert_eq!(count(&ev, |k| *k == EventKind::LivenessKill), 0, "{ev:#?}");
    h.delete_and_wait(&pod).await;
    drop(h);

    // A startup probe that never succeeds restarts the container after its failures.
    let mut hopeless = setup("never-starts", 3);
    hopeless.startup = Some(exec_probe("test -f /tmp/never", 1, 2));
    let h = Harness::new(hopeless, TRAPS_TERM);
    let pod = h.pod();
    h.until("the restart", |ev| {
        count(ev, |k| matches!(k, EventKind::Started { .. })) >= 2
    })
    .await;
    assert_eq!(
        h.endpoints.ready_count(),
        0,
        "never ready: {:#?}",
        h.events()
    );
    h.delete_and_wait(&pod).await;
}

/// A gRPC health server written with the official `grpcio` library: the whole server is
/// SERVING, the service `model` NOT_SERVING.
const GRPC_HEALTH_SERVER: &str = r#"
import os, time, grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
servicer.set("model", health_pb2.HealthCheckResponse.NOT_SERVING)
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
while True:
    time.sleep(0.05)
"#;

fn python() -> String {
    std::env::var("LAMEDUCK_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LAMEDUCK_TEST_PYTHON is not set: run the tests with scripts/test, which installs grpcio")
    })
}

/// gRPC probes ask `grpc.health.v1.Health/Check` as the kubelet does: a SERVING server is
/// ready, a NOT_SERVING or unknown service is not.
#[tokio::test]
async fn grpc_probes_ask_the_standard_health_service() {
    let grpc = |service: &str| ProbeSpec {
        handler: Handler::Grpc {
            port: lameduck_rehearse::setup::PortRef::Serve,
            service: service.into(),
        },
        timing: Probe {
            period: Duration::from_secs(1),
            failure_threshold: 1,
            ..Probe::default()
        },
    };
    for (service, ready) in [("", true), ("model", false), ("nonexistent", false)] {
        let mut s = setup(
            &format!("grpc-{}", if service.is_empty() { "all" } else { service }),
            3,
        );
        s.readiness = Some(grpc(service));
        let mut h = Harness::new(s, "");
        let env = Arc::get_mut(&mut h.env).expect("not shared yet");
        env.engine = Engine::Command(vec![python(), "-c".into(), GRPC_HEALTH_SERVER.into()]);
        let pod = h.pod();
        if ready {
            h.until("readiness", |_| h.endpoints.ready_count() == 1)
                .await;
        } else {
            // Five probes answered, none ready (the server is up: the first ones may fail
            // while it starts, later ones get its answer).
            h.until("five failed probes", |ev| {
                count(ev, |k| matches!(k, EventKind::Probe { ok: false, .. })) >= 5
            })
            .await;
            assert_eq!(h.endpoints.ready_count(), 0, "{service}: {:#?}", h.events());
        }
        // The same check, asked directly: what grpcio answered. The failed probes above may
        // all have come before the Python server listened (its import of grpcio is slow on a
        // cold machine): ask until it is up.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let answer = loop {
            let a = lameduck_rehearse::kubelet::grpc_health(pod.serve_port, service).await;
            let starting = a.as_ref().is_err_and(|e| e.contains("Connection refused"));
            if !starting || std::time::Instant::now() > deadline {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match service {
            "" => assert_eq!(answer, Ok(1), "SERVING"),
            "model" => assert_eq!(answer, Ok(2), "NOT_SERVING"),
            _ => assert!(
                answer.as_ref().is_err_and(|e| e.contains("grpc-status 5")),
                "NOT_FOUND: {answer:?}"
            ),
        }
        h.delete_and_wait(&pod).await;
    }
}
