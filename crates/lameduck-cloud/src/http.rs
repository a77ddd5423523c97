//! The one HTTP client every provider uses: hyper-util's legacy client over plain HTTP/1.1,
//! a deadline on the whole exchange (connect, headers and body), and a cap on the body size so a
//! confused or hostile answer cannot grow without bound.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Metadata documents are small (a few KiB at most); anything bigger is not an answer we want.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A complete answer: status, headers, and the whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) url: String,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, if it is UTF-8.
    pub(crate) fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The start of the body, printable, for error messages.
    pub(crate) fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut out: String = text
            .chars()
            .take(160)
            .map(|c| if c.is_control() { '�' } else { c })
            .collect();
        if text.chars().count() > 160 {
            out.push('…');
        }
        out
    }

    /// Fails unless the status is 2xx.
    pub(crate) fn success(self) -> Result<Answer, Failure> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(Failure::Status {
                url: self.url.clone(),
                status: self.status,
                body: self.snippet(),
            })
        }
    }
}

/// The request never produced a complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    BadRequest { url: String, reason: String },
    Unreachable { url: String, reason: String },
    Failed { url: String, reason: String },
    Timeout { url: String, timeout: Duration },
    Body { url: String, reason: String },
}

impl FetchError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FetchError::BadRequest { .. } => "bad request",
            FetchError::Unreachable { .. } => "unreachable",
            FetchError::Failed { .. } => "request failed",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Body { .. } => "broken answer",
        }
    }
}

impl FetchError {
    /// The message without the URL, for callers that already name the request.
    pub(crate) fn reason(&self) -> String {
        match self {
            FetchError::BadRequest { reason, .. } => reason.clone(),
            FetchError::Unreachable { reason, .. } => format!("cannot connect: {reason}"),
            FetchError::Failed { reason, .. } => format!("request failed: {reason}"),
            FetchError::Timeout { timeout, .. } => format!("no answer within {timeout:?}"),
            FetchError::Body { reason, .. } => format!("answer broke off: {reason}"),
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadRequest { url, reason } => write!(f, "cannot request {url}: {reason}"),
            FetchError::Unreachable { url, reason } => write!(f, "cannot reach {url}: {reason}"),
            FetchError::Failed { url, reason } => write!(f, "request to {url} failed: {reason}"),
            FetchError::Timeout { url, timeout } => {
                write!(f, "no answer from {url} within {timeout:?}")
            }
            FetchError::Body { url, reason } => write!(f, "answer from {url} broke off: {reason}"),
        }
    }
}

/// Why one look at the metadata service told us nothing: no answer, an error status, or an
/// answer we could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Fetch(FetchError),
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    Garbage {
        url: String,
        reason: String,
    },
}

impl Failure {
    /// The kind of failure, for "log the first of each kind at warn".
    pub(crate) fn kind(&self) -> String {
        match self {
            Failure::Fetch(e) => e.kind().to_owned(),
            Failure::Status { status, .. } => format!("HTTP {}", status.as_u16()),
            Failure::Garbage { .. } => "unreadable answer".to_owned(),
        }
    }

    /// The message without the URL, for callers that already name the request.
    pub(crate) fn reason(&self) -> String {
        match self {
            Failure::Fetch(e) => e.reason(),
            Failure::Status { status, body, .. } if body.is_empty() => format!("answered {status}"),
            Failure::Status { status, body, .. } => format!("answered {status}: {body}"),
            Failure::Garbage { reason, .. } => format!("unreadable answer: {reason}"),
        }
    }

    pub(crate) fn garbage(url: &str, reason: impl Into<String>) -> Failure {
        Failure::Garbage {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Fetch(e) => e.fmt(f),
            Failure::Status { url, status, body } if body.is_empty() => {
                write!(f, "{url} answered {status}")
            }
            Failure::Status { url, status, body } => write!(f, "{url} answered {status}: {body}"),
            Failure::Garbage { url, reason } => write!(f, "unreadable answer from {url}: {reason}"),
        }
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Failure {
        Failure::Fetch(e)
    }
}

impl Http {
    pub(crate) fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Http { client }
    }

    /// One request; `timeout` bounds everything from connecting to the last body byte.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, FetchError> {
        let bad = |reason: String| FetchError::BadRequest {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only plain http:// is supported".to_owned()));
        }
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| bad(format!("{e}")))?;

        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let reason = error_chain(&e);
                if e.is_connect() {
                    FetchError::Unreachable {
                        url: url.to_owned(),
                        reason,
                    }
                } else {
                    FetchError::Failed {
                        url: url.to_owned(),
                        reason,
                    }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body {
                    url: url.to_owned(),
                    reason: error_chain(&*e),
                })?
                .to_bytes();
            Ok(Answer {
                url: url.to_owned(),
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_owned(),
                timeout,
            })?
    }
}

/// "outer: inner: innermost", without repeating a message its cause already says.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}
