//! A client of one gate's admin port. One HTTP/1.1 connection per call: calls are rare (a
//! status read, a drain), and a fresh connection never inherits a broken one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};

use crate::{DrainAccepted, GateReport, GateStatus};

/// The longest answer read from a gate.
const MAX_BODY: usize = 1 << 20;

/// Why a call to a gate failed; each names the gate and what to check.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No connection.
    #[error(
        "gate at {addr}: cannot connect ({cause}); is the pod running, and is {addr} its admin address (--admin)?"
    )]
    Connect {
        /// The admin address.
        addr: SocketAddr,
        /// The cause.
        cause: String,
    },
    /// No answer in time.
    #[error("gate at {addr}: no answer to {what} within {timeout:?}")]
    Timeout {
        /// The admin address.
        addr: SocketAddr,
        /// The call.
        what: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The token was refused.
    #[error("gate at {addr}: {what} was refused (401): pass the gate's --admin-token")]
    Unauthorized {
        /// The admin address.
        addr: SocketAddr,
        /// The call.
        what: &'static str,
    },
    /// Any other answer than the expected one.
    #[error("gate at {addr}: {what} answered {status}: {body}")]
    Status {
        /// The admin address.
        addr: SocketAddr,
        /// The call.
        what: &'static str,
        /// The status code.
        status: StatusCode,
        /// The answer's start.
        body: String,
    },
    /// An answer that is not what a gate sends: another program on that port, or a gate of
    /// another version.
    #[error(
        "gate at {addr}: {what} answered something that is not a gate's ({cause}); is a lameduck gate listening there?"
    )]
    Decode {
        /// The admin address.
        addr: SocketAddr,
        /// The call.
        what: &'static str,
        /// The parser's message.
        cause: String,
    },
}

/// What `/drain` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum DrainAnswer {
    /// Waited for: the drain is done; its final report.
    Done(GateReport),
    /// Not waited for: the drain was started or joined.
    Accepted(DrainAccepted),
}

/// A gate's admin port.
#[derive(Debug, Clone)]
pub struct GateClient {
    addr: SocketAddr,
    token: Option<String>,
    timeout: Duration,
}

impl GateClient {
    /// A client of the gate whose admin port is `addr`, with a 5 s limit per call.
    pub fn new(addr: SocketAddr) -> Self {
        GateClient {
            addr,
            token: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Sends `Authorization: Bearer <token>` on `/drain` (the gate's `--admin-token`).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The limit for calls that do not wait for a drain.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<GateStatus, GateError> {
        let body = self
            .call("GET /status", Method::GET, "/status", self.timeout)
            .await?;
        self.decode("GET /status", &body)
    }

    /// `POST /drain`: starts a drain (or joins the one running), with `deadline` as the
    /// longest it may take from now. With `wait`, returns when the drain is done (`limit`
    /// bounds the wait); else at once.
    pub async fn drain(
        &self,
        deadline: Option<Duration>,
        wait: bool,
        limit: Duration,
    ) -> Result<DrainAnswer, GateError> {
        let mut path = format!("/drain?wait={wait}");
        if let Some(d) = deadline {
            path.push_str(&format!("&deadline={}ms", d.as_millis()));
        }
        let timeout = if wait { limit } else { self.timeout };
        let body = self
            .call("POST /drain", Method::POST, &path, timeout)
            .await?;
        if wait {
            self.decode("POST /drain", &body).map(DrainAnswer::Done)
        } else {
            self.decode("POST /drain", &body).map(DrainAnswer::Accepted)
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        body: &[u8],
    ) -> Result<T, GateError> {
        serde_json::from_slice(body).map_err(|e| GateError::Decode {
            addr: self.addr,
            what,
            cause: e.to_string(),
        })
    }

    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<Bytes, GateError> {
        let addr = self.addr;
        let work = async {
            let stream =
                tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| GateError::Connect {
                        addr,
                        cause: e.to_string(),
                    })?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| GateError::Connect {
                        addr,
                        cause: e.to_string(),
                    })?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, addr.to_string())
                .header(header::USER_AGENT, "lameduck-gate-api");
            if let Some(t) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| GateError::Connect {
                    addr,
                    cause: e.to_string(),
                })?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| GateError::Connect {
                    addr,
                    cause: e.to_string(),
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| GateError::Decode {
                    addr,
                    what,
                    cause: e.to_string(),
                })?;
            match status {
                StatusCode::OK | StatusCode::ACCEPTED => Ok(body),
                StatusCode::UNAUTHORIZED => Err(GateError::Unauthorized { addr, what }),
                _ => Err(GateError::Status {
                    addr,
                    what,
                    status,
                    body: String::from_utf8_lossy(&body[..body.len().min(200)])
                        .trim()
                        .to_owned(),
                }),
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| GateError::Timeout {
                addr,
                what,
                timeout,
            })?
    }
}
