//! Wrapper mode's child process, the engine health check, and the drain triggers that come
//! from outside HTTP (signals, the marker file).

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lameduck_timeline::{DrainRequest, Trigger};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::Error;
use crate::state::{Child, Shared};

/// Starts the engine command in its own process group. Returns the task that waits for it
/// (and reports its exit to the machine), for the caller to own; `None` in sidecar mode.
pub fn spawn_child(
    shared: &Arc<Shared>,
) -> Result<Option<impl Future<Output = ()> + Send + 'static>, Error> {
    let command = &shared.config.command;
    let Some((program, args)) = command.split_first() else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .env(
            "LAMEDUCK_UPSTREAM",
            format!(
                "{}://{}",
                shared.config.upstream.scheme, shared.config.upstream.authority
            ),
        )
        .env(
            "LAMEDUCK_UPSTREAM_PORT",
            shared
                .config
                .upstream
                .authority
                .port_u16()
                .unwrap_or(80)
                .to_string(),
        );
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.join(" "),
        source,
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    shared.set_child(|c| {
        *c = Child::Running {
            pid,
            signalled: false,
        }
    });
    // Logged by name only: the arguments can hold secrets (API keys, tokens).
    tracing::info!(pid, program = %program_name(program), "Engine started");
    let shared = shared.clone();
    Ok(Some(async move {
        let status = match child.wait().await {
            Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            Err(e) => {
                tracing::error!(error = %e, "Cannot wait for the engine process");
                1
            }
        };
        let expected = matches!(
            shared.child(),
            Child::Running {
                signalled: true,
                ..
            }
        );
        if expected {
            tracing::info!(status, "Engine exited");
        } else {
            tracing::error!(
                status,
                "Engine exited on its own: readiness and liveness now fail; the gate ends what is in flight, then exits"
            );
        }
        shared.child_exited(status);
        // An essential task: it lives as long as the gate.
        shared.exit.cancelled().await;
    }))
}

/// The program's file name, without its directory.
pub fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// SIGTERM to the engine process (as the kubelet would), or SIGKILL to its whole process
/// group (an engine's workers must not outlive it).
pub fn signal_child(shared: &Shared, hard: bool) {
    let mut pid = 0;
    shared.set_child(|c| {
        if let Child::Running { pid: p, signalled } = c {
            pid = *p;
            *signalled = true;
        }
    });
    if pid <= 0 {
        return;
    }
    let result = if hard {
        tracing::warn!(
            pid,
            "Engine did not exit in time: SIGKILL to its process group"
        );
        killpg(Pid::from_raw(pid), Signal::SIGKILL)
    } else {
        tracing::info!(pid, "Nothing in flight: SIGTERM to the engine");
        kill(Pid::from_raw(pid), Signal::SIGTERM)
    };
    if let Err(e) = result {
        tracing::warn!(pid, error = %e, "Cannot signal the engine");
    }
}

/// SIGKILL to the engine's process group when the gate itself must stop abnormally, so that
/// the engine never outlives it. Does not mark the exit as expected.
pub fn kill_child_group(shared: &Shared) {
    if let Child::Running { pid, .. } = shared.child()
        && pid > 0
    {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Checks the engine's health until exit; the first success (then the warm-up, if any) ends
/// start-up.
pub async fn health_loop(shared: Arc<Shared>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http();
    let cfg = &shared.config;
    let uri = match Uri::builder()
        .scheme(cfg.upstream.scheme.clone())
        .authority(cfg.upstream.authority.clone())
        .path_and_query(cfg.health_path.as_str())
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, path = %cfg.health_path, "Invalid --health-path");
            return;
        }
    };
    let grpc_client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut was_healthy = None;
    loop {
        let healthy = match &cfg.health_grpc {
            Some(service) => {
                let check = grpc_health(&grpc_client, cfg, service);
                matches!(
                    tokio::time::timeout(cfg.health_timeout, check).await,
                    Ok(true)
                )
            }
            None => {
                let check = client.get(uri.clone());
                matches!(
                    tokio::time::timeout(cfg.health_timeout, check).await,
                    Ok(Ok(r)) if r.status().is_success()
                )
            }
        };
        shared.upstream_healthy.store(healthy, Ordering::SeqCst);
        shared.metrics.upstream_healthy.set(i64::from(healthy));
        if was_healthy != Some(healthy) {
            tracing::info!(healthy, uri = %uri, "Engine health changed");
            was_healthy = Some(healthy);
        }
        if healthy && !shared.started.load(Ordering::SeqCst) && warm_up(&shared, &client).await {
            shared.started.store(true, Ordering::SeqCst);
            match shared.readiness() {
                Ok(()) => tracing::info!("Engine ready: serving"),
                Err(why) => tracing::info!(not_ready = why, "Engine ready"),
            }
        }
        shared
            .metrics
            .ready
            .set(i64::from(shared.readiness().is_ok()));
        let period = if shared.started.load(Ordering::SeqCst) {
            cfg.health_interval
        } else {
            cfg.health_interval.min(Duration::from_millis(250))
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shared.exit.cancelled() => return,
        }
    }
}

/// `grpc.health.v1.Health/Check` for `service`: whether the engine answers SERVING.
///
/// The two protobuf messages are one field each (`HealthCheckRequest.service = 1`,
/// `HealthCheckResponse.status = 1`, SERVING = 1), encoded and read here rather than by
/// generated code: a protobuf toolchain for two fields would cost more than it saves.
async fn grpc_health(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    cfg: &crate::config::Config,
    service: &str,
) -> bool {
    let up = &cfg.upstream;
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = Request::builder()
        .method(Method::POST)
        .version(http::Version::HTTP_2)
        .uri(format!(
            "{}://{}/grpc.health.v1.Health/Check",
            up.scheme, up.authority
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else { return false };
    let Ok(resp) = client.request(req).await else {
        return false;
    };
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return false;
    };
    let ok_status = |h: &http::HeaderMap| h.get("grpc-status").is_some_and(|v| v == "0");
    let status_ok = ok_status(&parts.headers) || collected.trailers().is_some_and(ok_status);
    let data = collected.to_bytes();
    status_ok && parts.status.is_success() && serving(&data)
}

/// Whether a length-prefixed `HealthCheckResponse` says SERVING (status field 1 = 1).
fn serving(data: &[u8]) -> bool {
    let Some(msg) = data.get(5..) else {
        return false;
    };
    let mut i = 0;
    while i < msg.len() {
        let tag = msg[i];
        i += 1;
        let Some((value, used)) = varint(&msg[i..]) else {
            return false;
        };
        match tag {
            // Field 1, varint: the status.
            0x08 => return value == 1,
            // Any other varint field: skip it.
            t if t & 0x07 == 0 => i += used,
            // Length-delimited: skip its bytes.
            t if t & 0x07 == 2 => i += used + value as usize,
            _ => return false,
        }
    }
    false
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

async fn warm_up(
    shared: &Shared,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> bool {
    let Some((body, path)) = &shared.config.warmup else {
        return true;
    };
    let up = &shared.config.upstream;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{}://{}{}", up.scheme, up.authority, path))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.clone())));
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, path, "Invalid --warmup-path");
            return false;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(300), async {
        let resp = client.request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
    })
    .await;
    match result {
        Ok(Ok(status)) if status.is_success() => {
            tracing::info!(path, %status, "Warm-up request succeeded");
            true
        }
        Ok(Ok(status)) => {
            tracing::warn!(path, %status, "Warm-up request failed; retrying");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(path, error = %e, "Warm-up request failed; retrying");
            false
        }
        Err(_) => {
            tracing::warn!(path, "Warm-up request timed out after 300 s; retrying");
            false
        }
    }
}

/// The SIGTERM and SIGINT streams, installed before anything else starts so that no signal
/// can arrive unhandled.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(Error::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(Error::Signals)?,
        })
    }
}

/// SIGTERM and SIGINT start (or join) a drain that ends in exit.
pub async fn signal_loop(shared: Arc<Shared>, signals: Signals) {
    let Signals { mut term, mut int } = signals;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = shared.exit.cancelled() => return,
        };
        tracing::info!(signal = name, "Signal received");
        shared.drain(DrainRequest {
            already_spent: shared.spent_at_sigterm(),
            exit: true,
            ..DrainRequest::new(Trigger::Signal)
        });
    }
}

/// Starts a drain when the marker file appears, or is touched again if it was already there
/// at start (a marker left on a volume that outlived a container restart must not keep the new
/// container from ever serving).
pub async fn marker_loop(shared: Arc<Shared>) {
    let Some(path) = shared.config.drain_file.clone() else {
        // Nothing to watch; an essential task still lives as long as the gate.
        shared.exit.cancelled().await;
        return;
    };
    let mtime = |meta: std::fs::Metadata| meta.modified().ok();
    let stale = tokio::fs::metadata(&path).await.ok().map(mtime);
    if stale.is_some() {
        tracing::warn!(
            path = %path.display(),
            "Drain marker file exists at start: ignored until it is touched again (remove it to silence this)"
        );
    }
    loop {
        if let Ok(meta) = tokio::fs::metadata(&path).await
            && stale.as_ref().is_none_or(|s| *s != mtime(meta))
        {
            tracing::info!(path = %path.display(), "Drain marker file found");
            shared.drain(DrainRequest::new(Trigger::MarkerFile));
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shared.exit.cancelled() => return,
        }
    }
    shared.exit.cancelled().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8];
        b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn health_responses_are_read() {
        assert!(serving(&framed(&[0x08, 0x01])));
        assert!(!serving(&framed(&[0x08, 0x02])), "NOT_SERVING");
        assert!(!serving(&framed(&[])), "UNKNOWN (the default, omitted)");
        assert!(!serving(&[0, 0]), "truncated");
        // An unknown length-delimited field before the status is skipped.
        assert!(serving(&framed(&[0x12, 0x02, b'h', b'i', 0x08, 0x01])));
    }

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 16_384, u64::from(u32::MAX)] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(varint(&b), Some((v, b.len())));
        }
    }
}
