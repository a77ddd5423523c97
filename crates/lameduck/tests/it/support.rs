//! Test support: real `lameduck` processes on loopback, a small HTTP client, SSE helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The `lameduck` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lameduck")
}

/// A loopback port for an engine the gate starts (the gate is told it with `--upstream`).
///
/// Taken from below the kernel's ephemeral range: a port the kernel hands out for a `:0` bind
/// (such as the gate's own listeners) can then never be the one chosen here, which would make
/// the engine fail to listen. Chosen at random and checked free, since tests run in parallel.
pub fn free_port() -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    for _ in 0..1000 {
        // xorshift64: no dependency needed for a port pick.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = low + (x % u64::from(high - low)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {high}")
}

/// A running `lameduck` process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `lameduck ARGS` with JSON logs.
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_with(args, &[], None)
    }

    /// Starts `lameduck ARGS` with JSON logs, extra environment variables, and (through
    /// `sh -c 'ulimit -n N; exec …'`) a file-descriptor limit.
    pub fn spawn_with(args: &[&str], env: &[(&str, &str)], nofile: Option<u32>) -> Proc {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("LAMEDUCK_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lameduck");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Proc { child, lines }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Stderr lines that parse as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to `timeout`) for a JSON log line whose `message` (or `msg`) is `msg`.
    pub async fn wait_for_line(&self, msg: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.json_lines().into_iter().find(|v| {
                v.get("message").and_then(Value::as_str) == Some(msg)
                    || v.get("msg").and_then(Value::as_str) == Some(msg)
            }) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no log line {msg:?} within {timeout:?}; stderr:\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Waits for exit (up to `timeout`); returns the exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the stderr thread drain the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status.code().unwrap_or(-1);
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; stderr:\n{}",
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The drain report line printed at exit.
    pub fn report(&self) -> Value {
        self.json_lines()
            .into_iter()
            .find(|v| v.get("msg").and_then(Value::as_str) == Some("drain report"))
            .unwrap_or_else(|| panic!("no drain report; stderr:\n{}", self.lines().join("\n")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            use nix::sys::signal::{Signal, kill, killpg};
            use nix::unistd::Pid;
            let pid = self.child.id() as i32;
            // A wrapped engine runs in its own process group and would outlive a SIGKILLed
            // gate: kill the gate's children (and their groups) first.
            for child in children(pid) {
                let _ = killpg(Pid::from_raw(child), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Direct children of `pid`, from /proc.
fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// A gate under test, with its addresses.
pub struct Gate {
    pub proc: Proc,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

/// Default timing flags that keep tests short.
pub const FAST: &[&str] = &[
    "--convergence-min",
    "300ms",
    "--convergence-quiet",
    "200ms",
    "--convergence-max",
    "3s",
    "--health-interval",
    "200ms",
];

impl Gate {
    /// Starts `lameduck gate` on ephemeral ports with `args`, then `--` and `engine` (wrapper
    /// mode) when given; waits until it listens.
    pub async fn start(args: &[&str], engine: Option<&[&str]>) -> Gate {
        Gate::start_with(args, engine, &[], None).await
    }

    /// [`Gate::start`] with extra environment variables and a file-descriptor limit.
    pub async fn start_with(
        args: &[&str],
        engine: Option<&[&str]>,
        env: &[(&str, &str)],
        nofile: Option<u32>,
    ) -> Gate {
        let mut all = vec!["gate", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        all.extend_from_slice(args);
        if let Some(engine) = engine {
            all.push("--");
            all.extend_from_slice(engine);
        }
        let proc = Proc::spawn_with(&all, env, nofile);
        let line = proc
            .wait_for_line("Listening", Duration::from_secs(20))
            .await;
        let addr = |k: &str| -> SocketAddr {
            line[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line}"))
        };
        Gate {
            proxy: addr("proxy"),
            admin: addr("admin"),
            proc,
        }
    }

    /// Starts a gate in wrapper mode around `lameduck engine-sim ENGINE_ARGS` on a free port.
    pub async fn wrapping_sim(gate_args: &[&str], sim_args: &[&str]) -> Gate {
        let port = free_port();
        let upstream = format!("http://127.0.0.1:{port}");
        let listen = format!("127.0.0.1:{port}");
        // FAST defaults, minus any flag the test sets itself.
        let mut args: Vec<&str> = FAST
            .chunks(2)
            .filter(|pair| !gate_args.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        args.extend_from_slice(&["--upstream", &upstream]);
        args.extend_from_slice(gate_args);
        let mut engine = vec![
            bin(),
            "--log-format",
            "json",
            "engine-sim",
            "--listen",
            &listen,
        ];
        engine.extend_from_slice(sim_args);
        let g = Gate::start(&args, Some(&engine)).await;
        g.wait_ready(Duration::from_secs(20)).await;
        g
    }

    /// Starts a gate in sidecar mode in front of `upstream` with the FAST timings plus `args`,
    /// and waits until it is ready.
    pub async fn sidecar(upstream: std::net::SocketAddr, args: &[&str]) -> Gate {
        let url = format!("http://{upstream}");
        let mut all = FAST.to_vec();
        all.extend_from_slice(&["--upstream", &url]);
        all.extend_from_slice(args);
        let g = Gate::start(&all, None).await;
        g.wait_ready(Duration::from_secs(20)).await;
        g
    }

    /// Starts a streamed chat completion of `max_tokens` through the gate; the task reads it to
    /// the end and classifies how it ended.
    pub fn open_stream(&self, max_tokens: u32) -> tokio::task::JoinHandle<StreamEnd> {
        let req = post(
            &self.url("/v1/chat/completions"),
            chat_body(true, max_tokens),
        );
        tokio::spawn(async move { read_stream(send(req).await).await })
    }

    /// Polls /status until `n` streams are in flight.
    pub async fn wait_streams(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.status().await["in_flight"]["stream"] != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} streams never in flight: {}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://proxy{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// `http://admin{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Waits until /ready answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok((s, _)) = get(&self.admin_url("/ready")).await
                && s == StatusCode::OK
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "gate not ready within {timeout:?}; stderr:\n{}",
                    self.proc.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The JSON of /status.
    pub async fn status(&self) -> Value {
        let (_, body) = get(&self.admin_url("/status")).await.expect("status");
        serde_json::from_str(&body).expect("status json")
    }

    /// The phase in /status.
    pub async fn phase(&self) -> String {
        self.status().await["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Polls /status until the phase is `phase`.
    pub async fn wait_phase(&self, phase: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.phase().await != phase {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "phase {phase} not reached within {timeout:?}: {}",
                    self.status().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a metric line (exact name and labels) in /metrics.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = get(&self.admin_url("/metrics")).await.ok()?;
        body.lines()
            .find(|l| l.split(' ').next() == Some(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// A shared pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET → (status, body).
pub async fn get(url: &str) -> Result<(StatusCode, String), String> {
    let resp = client()
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A chat completion request body.
pub fn chat_body(stream: bool, max_tokens: u32) -> String {
    serde_json::json!({
        "model": "sim-llm",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "max_tokens": max_tokens,
    })
    .to_string()
}

/// A GET with an empty body.
pub fn get_req(url: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// POST a JSON body.
pub fn post(url: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// Sends `req` and returns the response head.
pub async fn send(req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
    client().request(req).await.map_err(|e| format!("{e:?}"))
}

/// How a streamed completion ended, as a careful client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// A `finish_reason` of stop/length, then `[DONE]`.
    Finished {
        tokens: usize,
        finish_reason: String,
    },
    /// An `event: error` with its `error.type`, then `[DONE]`.
    TerminalError { kind: String, done: bool },
    /// The response was not 200.
    Status(u16, String),
    /// The body failed (reset) or ended without `[DONE]`.
    Broken(String),
}

/// Reads an SSE chat completion to the end and classifies it.
pub async fn read_stream(resp: Result<Response<Incoming>, String>) -> StreamEnd {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return StreamEnd::Broken(e),
    };
    let status = resp.status();
    let body = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => return StreamEnd::Broken(format!("body error: {e}")),
    };
    if status != StatusCode::OK {
        return StreamEnd::Status(status.as_u16(), body);
    }
    classify_sse(&body)
}

/// Classifies a complete SSE body.
pub fn classify_sse(body: &str) -> StreamEnd {
    let mut tokens = 0;
    let mut finish = None;
    let mut error = None;
    let mut done = false;
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let mut name = None;
        let mut data = String::new();
        for line in event.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            return StreamEnd::Broken(format!("unparseable event: {event:?}"));
        };
        if name.as_deref() == Some("error") {
            error = Some(v["error"]["type"].as_str().unwrap_or("?").to_owned());
            continue;
        }
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str()
            && !c.is_empty()
        {
            tokens += 1;
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    match (error, finish, done) {
        (Some(kind), _, done) => StreamEnd::TerminalError { kind, done },
        (None, Some(f), true) => StreamEnd::Finished {
            tokens,
            finish_reason: f,
        },
        (None, _, _) => StreamEnd::Broken(format!("no [DONE] / finish_reason in {body:?}")),
    }
}

/// Runs `lameduck ARGS…` to the end with `stdin` as its standard input.
pub fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write");
    drop(input);
    child.wait_with_output().expect("wait")
}

/// A program of the test venv (`scripts/test` creates it and sets LAMEDUCK_TEST_PYTHON).
pub fn venv_bin(name: &str) -> std::path::PathBuf {
    let python = std::env::var("LAMEDUCK_TEST_PYTHON").expect(
        "LAMEDUCK_TEST_PYTHON: run the tests with scripts/test, which installs the Python clients",
    );
    std::path::Path::new(&python)
        .parent()
        .expect("venv bin")
        .join(name)
}

/// Validates files against the Kubernetes schema, strictly; panics with the validator's words.
#[track_caller]
pub fn assert_schema_valid(what: &str, files: &[&std::path::Path]) {
    let out = std::process::Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--no-warn", "--quiet"])
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
