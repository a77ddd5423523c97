//! Failures as the apiserver reports them: `Status` objects with a code and a reason.

use serde_json::{Value, json};

use crate::resources::{ResId, Resource, res};

/// A failed request, answered with a `Status` body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub(crate) struct ApiError {
    pub(crate) code: u16,
    /// Empty when the real server sends no reason (it then omits the field).
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
        .with_details(json!({"causes": [{"message": message}]}))
    }

    /// `the server could not find the requested resource`, for paths nothing serves.
    pub(crate) fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    pub(crate) fn not_found(id: ResId, name: &str) -> ApiError {
        let r = res(id);
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        )
        .with_details(details(r, name))
    }

    pub(crate) fn already_exists(id: ResId, name: &str) -> ApiError {
        let r = res(id);
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.qualified()),
        )
        .with_details(details(r, name))
    }

    pub(crate) fn conflict(id: ResId, name: &str) -> ApiError {
        let r = res(id);
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                r.qualified()
            ),
        )
        .with_details(details(r, name))
    }

    pub(crate) fn precondition(id: ResId, name: &str, what: &str) -> ApiError {
        let r = res(id);
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {what}",
                r.qualified()
            ),
        )
        .with_details(details(r, name))
    }

    /// An injected failure: `fail_with(Some(code))`.
    pub(crate) fn injected(code: u16) -> ApiError {
        ApiError::new(
            code,
            reason_for(code),
            format!("injected failure: HTTP {code}"),
        )
        .with_details(json!({}))
    }

    /// The `Status` object for this failure.
    pub(crate) fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
        });
        if !self.reason.is_empty() {
            v["reason"] = Value::from(self.reason);
        }
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v["code"] = Value::from(self.code);
        v
    }
}

fn details(r: &Resource, name: &str) -> Value {
    let mut d = json!({"name": name});
    if !r.group.is_empty() {
        d["group"] = Value::from(r.group);
    }
    d["kind"] = Value::from(r.plural);
    d
}

/// The `StatusReason` the apiserver pairs with an HTTP code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// A `Status` with `status: Success`, as a delete of a kind that does not return the object answers.
pub(crate) fn success_status(id: ResId, obj: &Value) -> Value {
    let r = res(id);
    let mut d = details(r, crate::meta::name(obj));
    d["uid"] = Value::from(crate::meta::uid(obj));
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}
