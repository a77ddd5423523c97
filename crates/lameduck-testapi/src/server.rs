//! The HTTP side: connections, routing, discovery and the verbs on collections and objects.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{ApiError, success_status};
use crate::eviction;
use crate::meta;
use crate::ops::{self, DeleteOptions, Deleted, Part, PatchKind};
use crate::proxy;
use crate::resources::{self, NAMESPACE, POD, RESOURCES, ResId, SERVICE, Sub, res};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Shared;
use crate::watch::{self, Start, WatchParams};
use crate::{Body, BoxError};

/// Largest request body accepted (proxied bodies stream and are not limited).
const MAX_BODY: usize = 16 << 20;

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    shared.handle.clone().spawn(serve_connection(shared, stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = crate::store::stopped(&mut shutdown) => return,
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut shutdown = shared.shutdown.subscribe();
    let svc_shared = shared.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = crate::store::stopped(&mut shutdown) => {}
    }
}

/// A JSON response.
pub(crate) fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status(), &[])
}

/// Decoded query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// Percent-decoding with `+` as space, as form encoding has it.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a path leads.
#[derive(Debug, PartialEq)]
enum Route {
    Version,
    ApiVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    Collection {
        id: ResId,
        ns: Option<String>,
    },
    Object {
        id: ResId,
        ns: Option<String>,
        name: String,
        sub: Option<String>,
        rest: String,
    },
}

fn parse_route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let segs: &[&str] = match segs.as_slice() {
        // A trailing slash on a non-proxy path is ignored.
        [head @ .., ""] if !head.contains(&"proxy") => head,
        all => all,
    };
    match segs {
        ["version"] => Some(Route::Version),
        ["api"] => Some(Route::ApiVersions),
        ["apis"] => Some(Route::GroupList),
        ["api", "v1"] => Some(Route::ResourceList(String::new(), "v1".into())),
        ["apis", g] => Some(Route::Group((*g).to_owned())),
        ["apis", g, v] => Some(Route::ResourceList((*g).to_owned(), (*v).to_owned())),
        ["api", v, rest @ ..] => resource_route("", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(g, v, rest),
        _ => None,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let (id, ns, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::find_by_path(group, version, plural)
                .is_some_and(|id| res(id).namespaced) =>
        {
            (
                resources::find_by_path(group, version, plural)?,
                Some((*ns).to_owned()),
                tail,
            )
        }
        [plural, tail @ ..] => (resources::find_by_path(group, version, plural)?, None, tail),
        [] => return None,
    };
    match tail {
        [] => Some(Route::Collection { id, ns }),
        [name] => Some(Route::Object {
            id,
            ns,
            name: (*name).to_owned(),
            sub: None,
            rest: String::new(),
        }),
        [name, sub, more @ ..] => Some(Route::Object {
            id,
            ns,
            name: (*name).to_owned(),
            sub: Some((*sub).to_owned()),
            rest: more.join("/"),
        }),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let path_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let (delay, fail) = {
        let mut st = shared.lock();
        st.requests.push((method.to_string(), path_query));
        (st.delay, st.fail)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = fail {
        return error_response(&ApiError::injected(code));
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let Some(route) = parse_route(&path) else {
        return error_response(&ApiError::no_route());
    };
    if let Route::Object {
        id: POD,
        ns: Some(ns),
        name,
        sub: Some(sub),
        rest,
    } = &route
        && sub == "proxy"
    {
        return match proxy::forward(&shared, req, ns, name, rest).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    let req = ApiRequest {
        method,
        query,
        content_type,
        body,
        host,
    };
    match api(&shared, route, req) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

struct ApiRequest {
    method: Method,
    query: Query,
    content_type: String,
    body: Bytes,
    host: String,
}

impl ApiRequest {
    /// The body as JSON; an empty body is `null`.
    fn json(&self) -> Result<Value, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body of the request could not be decoded as JSON: {e}"
            ))
        })
    }

    fn object(&self) -> Result<Value, ApiError> {
        let v = self.json()?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ))
        }
    }
}

fn api(shared: &Arc<Shared>, route: Route, req: ApiRequest) -> Result<Response<Body>, ApiError> {
    let ok = |v: &Value| json_response(200, v, &[]);
    match route {
        Route::Version => {
            if req.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            Ok(ok(&version_info()))
        }
        Route::ApiVersions => Ok(ok(&json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": req.host}],
        }))),
        Route::GroupList => Ok(ok(&json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": resources::groups().into_iter().map(|(g, v)| group_json(g, v)).collect::<Vec<_>>(),
        }))),
        Route::Group(g) => {
            let (g, v) = resources::groups()
                .into_iter()
                .find(|(name, _)| *name == g)
                .ok_or_else(ApiError::no_route)?;
            let mut out = group_json(g, v);
            out["kind"] = Value::from("APIGroup");
            out["apiVersion"] = Value::from("v1");
            Ok(ok(&out))
        }
        Route::ResourceList(g, v) => Ok(ok(&resource_list(&g, &v).ok_or_else(ApiError::no_route)?)),
        Route::Collection { id, ns } => collection(shared, id, ns, &req),
        Route::Object {
            id,
            ns,
            name,
            sub,
            rest: _,
        } => {
            let r = res(id);
            let ns = match (r.namespaced, ns) {
                (true, Some(ns)) => ns,
                (false, None) => String::new(),
                _ => return Err(ApiError::no_route()),
            };
            object(shared, id, &ns, &name, sub.as_deref(), &req)
        }
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": "v1.34.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group_json(g: &str, v: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    const VERBS: &[&str] = &[
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    const SUB_VERBS: &[&str] = &["get", "patch", "update"];
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            let entry = match sub {
                Sub::Status => json!({"name": format!("{}/status", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "kind": r.kind, "verbs": SUB_VERBS}),
                Sub::Scale => json!({"name": format!("{}/scale", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "group": "autoscaling", "version": "v1",
                    "kind": "Scale", "verbs": SUB_VERBS}),
                Sub::Eviction => {
                    json!({"name": format!("{}/eviction", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "group": "policy", "version": "v1",
                    "kind": "Eviction", "verbs": ["create"]})
                }
                Sub::Proxy => json!({"name": format!("{}/proxy", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "kind": "PodProxyOptions",
                    "verbs": ["create", "delete", "get", "patch", "update"]}),
            };
            out.push(entry);
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn selectors(id: ResId, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), id)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// An object as it appears in a list: without `apiVersion` and `kind`, as the apiserver sends
/// list items.
fn list_item(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

fn collection(
    shared: &Arc<Shared>,
    id: ResId,
    ns: Option<String>,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let r = res(id);
    let q = &req.query;
    match req.method {
        Method::GET if q.flag("watch") => watch(shared, id, ns, q),
        Method::GET => {
            let (labels, fields) = selectors(id, q)?;
            let st = shared.lock();
            let items: Vec<Value> = st
                .list(id, ns.as_deref())
                .filter(|o| labels.matches_object(o) && fields.matches(id, o))
                .map(list_item)
                .collect();
            Ok(json_response(
                200,
                &json!({
                    "kind": r.list_kind(),
                    "apiVersion": r.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items,
                }),
                &[],
            ))
        }
        Method::POST => {
            if r.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let mut obj = req.object()?;
            ops::reset_status_for_api_create(id, &mut obj);
            let dry = q.dry_run();
            let created = shared.mutate(|st| ops::create(st, id, obj, ns.as_deref(), dry))?;
            Ok(json_response(201, &created, &[]))
        }
        Method::DELETE => {
            let (labels, fields) = selectors(id, q)?;
            let opts = delete_options(req)?;
            let deleted = shared.mutate(|st| {
                let targets: Vec<(String, String)> = st
                    .list(id, ns.as_deref())
                    .filter(|o| labels.matches_object(o) && fields.matches(id, o))
                    .map(|o| (meta::namespace(o).to_owned(), meta::name(o).to_owned()))
                    .collect();
                let mut out = Vec::new();
                for (ns, name) in targets {
                    match ops::delete(st, shared, id, &ns, &name, &opts) {
                        Ok(Deleted::Gone(v) | Deleted::Terminating(v)) => out.push(list_item(&v)),
                        Err(e) => return Err(e),
                    }
                }
                Ok((out, st.rv))
            })?;
            Ok(json_response(
                200,
                &json!({
                    "kind": r.list_kind(),
                    "apiVersion": r.api_version(),
                    "metadata": {"resourceVersion": deleted.1.to_string()},
                    "items": deleted.0,
                }),
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn watch(
    shared: &Arc<Shared>,
    id: ResId,
    ns: Option<String>,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let (labels, fields) = selectors(id, q)?;
    let send_initial = q.flag("sendInitialEvents");
    let bookmarks = q.flag("allowWatchBookmarks");
    let rv_match = q.get("resourceVersionMatch").unwrap_or("");
    let invalid =
        |why: &str| ApiError::invalid(format!("ListOptions.meta.k8s.io \"\" is invalid: {why}"));
    if send_initial {
        if rv_match != "NotOlderThan" {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    } else if !rv_match.is_empty() {
        return Err(invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch",
        ));
    }
    let rv = q.get("resourceVersion").unwrap_or("");
    let start = if send_initial || rv.is_empty() || rv == "0" {
        Start::Initial
    } else {
        Start::After(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        )
    };
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}"))
        })?)),
        None => None,
    };
    let params = WatchParams {
        id,
        ns,
        labels,
        fields,
        start,
        bookmarks,
        initial_end: send_initial,
        timeout,
    };
    let body = watch::start(shared.clone(), params);
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn delete_options(req: &ApiRequest) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::from_json(&req.json()?)?;
    if opts.grace.is_none()
        && let Some(g) = req.query.get("gracePeriodSeconds")
    {
        opts.grace =
            Some(g.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid gracePeriodSeconds: {g:?}"))
            })?);
    }
    opts.dry_run |= req.query.dry_run();
    Ok(opts)
}

fn object(
    shared: &Arc<Shared>,
    id: ResId,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let r = res(id);
    let dry = req.query.dry_run();
    let ok = |v: &Value| json_response(200, v, &[]);
    let get = || {
        shared
            .lock()
            .get(id, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(id, name))
    };
    match (sub, &req.method) {
        (None | Some("status"), &Method::GET) if sub.is_none() || r.has(Sub::Status) => {
            Ok(ok(&get()?))
        }
        (None, &Method::PUT) => {
            let body = req.object()?;
            Ok(ok(&shared.mutate(|st| {
                ops::replace(st, id, ns, name, body, Part::Main, dry)
            })?))
        }
        (Some("status"), &Method::PUT) if r.has(Sub::Status) => {
            let body = req.object()?;
            Ok(ok(&shared.mutate(|st| {
                ops::replace(st, id, ns, name, body, Part::Status, dry)
            })?))
        }
        (None, &Method::PATCH) => patch(shared, id, ns, name, Part::Main, req),
        (Some("status"), &Method::PATCH) if r.has(Sub::Status) => {
            patch(shared, id, ns, name, Part::Status, req)
        }
        (None, &Method::DELETE) => {
            let opts = delete_options(req)?;
            let outcome = shared.mutate(|st| ops::delete(st, shared, id, ns, name, &opts))?;
            Ok(match outcome {
                Deleted::Terminating(v) => ok(&v),
                Deleted::Gone(v) if matches!(id, POD | SERVICE | NAMESPACE) => ok(&v),
                Deleted::Gone(v) => ok(&success_status(id, &v)),
            })
        }
        (Some("scale"), m) if r.has(Sub::Scale) => scale(shared, id, ns, name, m, req),
        (Some("eviction"), &Method::POST) if r.has(Sub::Eviction) => {
            let body = req.json()?;
            let warnings: Vec<String> = eviction::unknown_fields(&body)
                .into_iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            let status = shared.mutate(|st| eviction::evict(st, shared, ns, name, &body, dry))?;
            Ok(json_response(201, &status, &warnings))
        }
        (None, _) => Err(ApiError::method_not_allowed()),
        (Some(s), _) if known_sub(r, s) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::no_route()),
    }
}

fn known_sub(r: &resources::Resource, s: &str) -> bool {
    match s {
        "status" => r.has(Sub::Status),
        "scale" => r.has(Sub::Scale),
        "eviction" => r.has(Sub::Eviction),
        "proxy" => r.has(Sub::Proxy),
        _ => false,
    }
}

fn patch_kind(req: &ApiRequest) -> Result<PatchKind, ApiError> {
    PatchKind::from_content_type(&req.content_type).ok_or_else(|| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/apply-patch+yaml, application/strategic-merge-patch+json (got {:?})",
                req.content_type
            ),
        )
    })
}

fn patch(
    shared: &Arc<Shared>,
    id: ResId,
    ns: &str,
    name: &str,
    part: Part,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let kind = patch_kind(req)?;
    let doc = req.json().map_err(|e| {
        if kind == PatchKind::Apply {
            ApiError::bad_request(format!(
                "{}; this test server accepts apply bodies written as JSON only",
                e.message
            ))
        } else {
            e
        }
    })?;
    let dry = req.query.dry_run();
    if kind == PatchKind::Apply {
        if req.query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if !doc.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        let (created, obj) = shared.mutate(|st| {
            if st.get(id, ns, name).is_none() && part == Part::Main {
                let mut obj = doc.clone();
                meta::obj_mut(&mut obj, &["metadata"]).insert("name".into(), Value::from(name));
                ops::reset_status_for_api_create(id, &mut obj);
                let ns_opt = res(id).namespaced.then_some(ns);
                return ops::create(st, id, obj, ns_opt, dry).map(|o| (true, o));
            }
            ops::patch(st, id, ns, name, kind, &doc, part, dry).map(|o| (false, o))
        })?;
        return Ok(json_response(if created { 201 } else { 200 }, &obj, &[]));
    }
    let obj = shared.mutate(|st| ops::patch(st, id, ns, name, kind, &doc, part, dry))?;
    Ok(json_response(200, &obj, &[]))
}

fn scale(
    shared: &Arc<Shared>,
    id: ResId,
    ns: &str,
    name: &str,
    method: &Method,
    req: &ApiRequest,
) -> Result<Response<Body>, ApiError> {
    let dry = req.query.dry_run();
    let current = shared
        .lock()
        .get(id, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(id, name))?;
    let wanted = match *method {
        Method::GET => return Ok(json_response(200, &ops::scale_of(&current), &[])),
        Method::PUT => req.object()?,
        Method::PATCH => {
            let kind = patch_kind(req)?;
            ops::apply_patch(kind, &ops::scale_of(&current), &req.json()?)?
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let replicas = meta::i64_at(&wanted, &["spec", "replicas"]).ok_or_else(|| {
        ApiError::invalid("Scale.autoscaling \"\" is invalid: spec.replicas: Required value")
    })?;
    if replicas < 0 {
        return Err(ApiError::invalid(format!(
            "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
        )));
    }
    let rv = meta::str_at(&wanted, &["metadata", "resourceVersion"]).map(str::to_owned);
    let stored = shared.mutate(|st| {
        let old = st
            .get(id, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(id, name))?;
        ops::check_rv(id, &old, rv.as_deref())?;
        let mut new = old.clone();
        meta::obj_mut(&mut new, &["spec"]).insert("replicas".into(), Value::from(replicas));
        let new = ops::merge_write(id, &old, new, Part::Main);
        Ok::<_, ApiError>(ops::store_write(st, id, &old, new, dry))
    })?;
    Ok(json_response(200, &ops::scale_of(&stored), &[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DEPLOYMENT, NODE, PDB};

    #[test]
    fn routes() {
        assert_eq!(parse_route("/version"), Some(Route::Version));
        assert_eq!(parse_route("/api"), Some(Route::ApiVersions));
        assert_eq!(
            parse_route("/apis/apps/v1"),
            Some(Route::ResourceList("apps".into(), "v1".into()))
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/d/pods"),
            Some(Route::Collection {
                id: POD,
                ns: Some("d".into())
            })
        );
        assert_eq!(
            parse_route("/api/v1/pods"),
            Some(Route::Collection { id: POD, ns: None })
        );
        assert_eq!(
            parse_route("/api/v1/namespaces"),
            Some(Route::Collection {
                id: NAMESPACE,
                ns: None
            })
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/d"),
            Some(Route::Object {
                id: NAMESPACE,
                ns: None,
                name: "d".into(),
                sub: None,
                rest: String::new()
            })
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/d/status"),
            Some(Route::Object {
                id: NAMESPACE,
                ns: None,
                name: "d".into(),
                sub: Some("status".into()),
                rest: String::new()
            })
        );
        assert_eq!(
            parse_route("/api/v1/nodes/n1"),
            Some(Route::Object {
                id: NODE,
                ns: None,
                name: "n1".into(),
                sub: None,
                rest: String::new()
            })
        );
        assert_eq!(
            parse_route("/apis/policy/v1/namespaces/d/poddisruptionbudgets/b/status"),
            Some(Route::Object {
                id: PDB,
                ns: Some("d".into()),
                name: "b".into(),
                sub: Some("status".into()),
                rest: String::new()
            })
        );
        assert_eq!(
            parse_route("/apis/apps/v1/namespaces/d/deployments/x/scale"),
            Some(Route::Object {
                id: DEPLOYMENT,
                ns: Some("d".into()),
                name: "x".into(),
                sub: Some("scale".into()),
                rest: String::new()
            })
        );
        assert_eq!(
            parse_route("/api/v1/namespaces/d/pods/p:8080/proxy/a/b/"),
            Some(Route::Object {
                id: POD,
                ns: Some("d".into()),
                name: "p:8080".into(),
                sub: Some("proxy".into()),
                rest: "a/b/".into()
            })
        );
        assert_eq!(parse_route("/api/v1/bogus"), None);
        assert_eq!(parse_route("/apis/nope/v1/things"), None);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("&labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&watch=1&x=%zz");
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a,b)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("a%4"), "a%4");
    }

    #[test]
    fn discovery_lists_subresources() {
        let core = resource_list("", "v1").expect("core");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"pods/eviction"));
        assert!(names.contains(&"pods/proxy"));
        assert!(resource_list("apps", "v2").is_none());
    }
}
