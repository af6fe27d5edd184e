//! A stateful fake Kubernetes API server behind a real `kube::Client` (a `tower` service, no
//! sockets), faithful where the controller's correctness depends on it, and counting writes:
//!
//! - JSON merge patches follow RFC 7386 (`json_patch::merge`): absent fields are kept, `null`
//!   removes;
//! - server-side apply (`application/apply-patch+yaml`, `fieldManager=`): the applied object is
//!   merged over what is stored, and fields the same manager applied before but leaves out now
//!   are removed; lists are atomic (replaced whole), fields other managers set are kept;
//! - a `PATCH` or `PUT` of a resource with a `status` subresource leaves the status alone, and
//!   one of `/status` changes only the status; `metadata.generation` moves when `spec` changes,
//!   `resourceVersion` on every change (a no-op keeps it), and a `PUT` with a stale
//!   `resourceVersion` gets 409 Conflict;
//! - a created Service gets a ClusterIP (unless headless);
//! - lists filter by `labelSelector` (`k=v,...`) and `fieldSelector` (`metadata.name=x`);
//!   a watch (`watch=true&resourceVersion=N`) answers the changes after `N` (`ADDED`,
//!   `MODIFIED`, `DELETED`, one JSON object a line) as soon as there are any, then ends, as
//!   a real watch may at any time (the client watches again from the last version it saw);
//!   with no change within `timeoutSeconds` it ends empty.
//!
//! Every `POST`, `PUT`, `PATCH` and `DELETE` is recorded ([`FakeApi::writes`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// A recorded write: method and path.
pub type Write = (String, String);

/// One change, as a watch reports it.
struct Change {
    resource_version: u64,
    collection: String,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// Every change, in order.
    changes: Vec<Change>,
    /// (collection path, name) → object.
    objects: BTreeMap<(String, String), Value>,
    /// (collection path, name, field manager) → what it applied last.
    applied: BTreeMap<(String, String, String), Value>,
    writes: Vec<Write>,
    /// Every request but watches: method and path.
    requests: Vec<Write>,
    resource_version: u64,
    next_ip: u32,
}

/// The fake API server; clones share state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
}

/// `/api/v1/namespaces/NS/PLURAL` or `/apis/G/V/namespaces/NS/PLURAL`, then an optional
/// name and subresource.
struct Target {
    collection: String,
    plural: String,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let mut parts = rest.split('/');
    let ns = parts.next()?;
    let plural = parts.next()?.to_owned();
    let name = parts.next().map(str::to_owned);
    let status = parts.next() == Some("status");
    Some(Target {
        collection: format!("{prefix}/namespaces/{ns}/{plural}"),
        plural,
        name,
        status,
    })
}

fn query(req: &Request<Body>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect()
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = hex {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": code}),
    )
}

/// Kinds with a `status` subresource.
fn has_status_subresource(plural: &str) -> bool {
    plural == "consortiumnodes"
}

/// Removes from `obj` what `old` (an earlier apply) set and `new` (this apply) leaves out.
fn prune(obj: &mut Value, old: &Value, new: &Value) {
    let (Some(obj), Some(old)) = (obj.as_object_mut(), old.as_object()) else {
        return;
    };
    for (k, old_v) in old {
        match new.get(k) {
            None => {
                obj.remove(k);
            }
            Some(new_v) => {
                if let Some(o) = obj.get_mut(k) {
                    prune(o, old_v, new_v);
                }
            }
        }
    }
}

/// Sets `obj.status` to `status`; `null` leaves no `status` key.
fn set_status(obj: &mut Value, status: Value) {
    if let Some(map) = obj.as_object_mut() {
        if status.is_null() {
            map.remove("status");
        } else {
            map.insert("status".into(), status);
        }
    }
}

/// Merges `patch` over `base` with atomic lists (RFC 7386 replaces arrays whole too).
fn merge(base: &mut Value, patch: &Value) {
    json_patch::merge(base, patch);
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|kv| match kv.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            None => false,
        })
}

impl FakeApi {
    /// An empty server.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client whose requests this server answers.
    pub fn client(&self, namespace: &str) -> kube::Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(svc, namespace)
    }

    /// Puts `obj` into `collection` as if created earlier (not counted as a write).
    pub fn seed(&self, collection: &str, obj: Value) {
        let mut s = self.state.lock().expect("lock");
        let name = obj["metadata"]["name"].as_str().expect("name").to_owned();
        let obj = s.finalize_new(collection, obj);
        s.put((collection.to_owned(), name), obj, "ADDED");
        drop(s);
        self.changed.notify_waiters();
    }

    /// The object `name` in `collection`.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("lock");
        s.objects
            .get(&(collection.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every object in `collection`, by name.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let s = self.state.lock().expect("lock");
        s.objects
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Removes `name` from `collection`, as another client would (not counted).
    pub fn delete(&self, collection: &str, name: &str) {
        let mut s = self.state.lock().expect("lock");
        s.remove(&(collection.to_owned(), name.to_owned()));
        drop(s);
        self.changed.notify_waiters();
    }

    /// Every request so far but watches.
    pub fn requests(&self) -> Vec<Write> {
        self.state.lock().expect("lock").requests.clone()
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().expect("lock").writes.clone()
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let q = query(&req);
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let Some(t) = parse(&path) else {
            return status(404, "NotFound", &format!("no route {path}"));
        };
        if method == "GET" && t.name.is_none() && q.get("watch").is_some_and(|w| w == "true") {
            return self.watch(&t, &q).await;
        }
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        let mut s = self.state.lock().expect("lock");
        s.requests.push((method.clone(), path.clone()));
        if method != "GET" {
            s.writes.push((method.clone(), path.clone()));
        }
        let response = s.answer(&method, &t, &q, &content_type, body);
        drop(s);
        if method != "GET" {
            self.changed.notify_waiters();
        }
        response
    }

    /// Answers a watch: the matching changes after `resourceVersion`, once there are any.
    async fn watch(&self, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q.get("timeoutSeconds").and_then(|v| v.parse().ok()).map_or(
            std::time::Duration::from_secs(290),
            std::time::Duration::from_secs,
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lines: Vec<u8> = {
                let s = self.state.lock().expect("lock");
                s.changes
                    .iter()
                    .filter(|c| c.resource_version > since && c.collection == t.collection)
                    .filter(|c| selected(&c.object, q))
                    .flat_map(|c| {
                        let mut line =
                            serde_json::to_vec(&json!({"type": c.type_, "object": c.object}))
                                .expect("json");
                        line.push(b'\n');
                        line
                    })
                    .collect()
            };
            if !lines.is_empty() {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(lines))
                    .expect("response");
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(Vec::new()))
                    .expect("response");
            }
        }
    }
}

/// Whether `obj` passes the request's `labelSelector` and `fieldSelector`.
fn selected(obj: &Value, q: &BTreeMap<String, String>) -> bool {
    labels_match(obj, q.get("labelSelector").map_or("", |s| s))
        && match q.get("fieldSelector") {
            Some(f) => f
                .strip_prefix("metadata.name=")
                .is_some_and(|n| obj["metadata"]["name"] == n),
            None => true,
        }
}

impl State {
    /// Stores `obj` (its resource version already set) and records the change.
    fn put(&mut self, key: (String, String), obj: Value, type_: &'static str) {
        let resource_version = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.resource_version);
        self.changes.push(Change {
            resource_version,
            collection: key.0.clone(),
            type_,
            object: obj.clone(),
        });
        self.objects.insert(key, obj);
    }

    /// Deletes `key` and records the change.
    fn remove(&mut self, key: &(String, String)) {
        if let Some(mut obj) = self.objects.remove(key) {
            let rv = self.bump();
            obj["metadata"]["resourceVersion"] = json!(rv);
            self.changes.push(Change {
                resource_version: self.resource_version,
                collection: key.0.clone(),
                type_: "DELETED",
                object: obj,
            });
        }
        self.applied
            .retain(|(c, n, _), _| !(*c == key.0 && *n == key.1));
    }

    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn finalize_new(&mut self, collection: &str, mut obj: Value) -> Value {
        let rv = self.bump();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv);
        meta["uid"] = json!(format!("uid-{rv}"));
        meta["generation"] = json!(1);
        if meta["creationTimestamp"].is_null() {
            // one second apart, in creation order
            let secs = 1_767_225_600 + self.resource_version;
            let t = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).expect("small"))
                .expect("a time");
            meta["creationTimestamp"] = json!(t.to_string());
        }
        if collection.ends_with("/services") && obj["spec"]["clusterIP"].is_null() {
            self.next_ip += 1;
            obj["spec"]["clusterIP"] = json!(format!("10.96.0.{}", self.next_ip));
        }
        obj
    }

    /// Stores `new` over `old`: generation moves with the spec, the resource version with
    /// any change.
    fn store(&mut self, key: (String, String), old: &Value, mut new: Value) -> Value {
        new["metadata"]["uid"] = old["metadata"]["uid"].clone();
        new["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        new["metadata"]["generation"] = old["metadata"]["generation"].clone();
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == *old {
            return new;
        }
        if new["spec"] != old["spec"] {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        new["metadata"]["resourceVersion"] = json!(self.bump());
        self.put(key, new.clone(), "MODIFIED");
        new
    }

    fn answer(
        &mut self,
        method: &str,
        t: &Target,
        q: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Response<Body> {
        let Some(name) = t.name.clone() else {
            return match method {
                "GET" => {
                    let items: Vec<Value> = self
                        .objects
                        .iter()
                        .filter(|((c, _), _)| *c == t.collection)
                        .map(|(_, v)| v.clone())
                        .filter(|v| selected(v, q))
                        .collect();
                    let rv = self.resource_version.to_string();
                    respond(
                        200,
                        &json!({"apiVersion": "v1", "kind": "List",
                                "metadata": {"resourceVersion": rv}, "items": items}),
                    )
                }
                "POST" => {
                    let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
                        return status(422, "Invalid", "metadata.name is required");
                    };
                    let key = (t.collection.clone(), name);
                    if self.objects.contains_key(&key) {
                        return status(409, "AlreadyExists", "already exists");
                    }
                    let obj = self.finalize_new(&t.collection, body);
                    self.put(key, obj.clone(), "ADDED");
                    respond(201, &obj)
                }
                _ => status(405, "MethodNotAllowed", method),
            };
        };
        let key = (t.collection.clone(), name.clone());
        let current = self.objects.get(&key).cloned();
        match (method, current) {
            ("GET", Some(obj)) => respond(200, &obj),
            ("DELETE", Some(_)) => {
                self.remove(&key);
                respond(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            ("PUT", Some(old)) => {
                let want = &body["metadata"]["resourceVersion"];
                if !want.is_null() && *want != old["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut new = body;
                if has_status_subresource(&t.plural) {
                    set_status(&mut new, old["status"].clone());
                }
                let stored = self.store(key, &old, new);
                respond(200, &stored)
            }
            ("PATCH", current) if content_type.starts_with("application/apply-patch") => {
                let manager = q.get("fieldManager").cloned().unwrap_or_default();
                let akey = (key.0.clone(), key.1.clone(), manager);
                let Some(old) = current else {
                    let obj = self.finalize_new(&t.collection, body.clone());
                    self.put(key, obj.clone(), "ADDED");
                    self.applied.insert(akey, body);
                    return respond(201, &obj);
                };
                let mut new = old.clone();
                if let Some(before) = self.applied.get(&akey) {
                    prune(&mut new, before, &body);
                }
                merge(&mut new, &body);
                if has_status_subresource(&t.plural) {
                    let status = new["status"].clone();
                    new = old.clone();
                    if t.status {
                        set_status(&mut new, status);
                    }
                }
                self.applied.insert(akey, body);
                let stored = self.store(key, &old, new);
                respond(200, &stored)
            }
            ("PATCH", Some(old)) if content_type.starts_with("application/merge-patch+json") => {
                let mut new = old.clone();
                merge(&mut new, &body);
                if has_status_subresource(&t.plural) {
                    let (mut base, status) = if t.status {
                        (old.clone(), new["status"].clone())
                    } else {
                        (new, old["status"].clone())
                    };
                    set_status(&mut base, status);
                    new = base;
                }
                let stored = self.store(key, &old, new);
                respond(200, &stored)
            }
            ("PATCH", Some(_)) => status(415, "UnsupportedMediaType", content_type),
            (_, None) => status(404, "NotFound", &format!("{} {name:?} not found", t.plural)),
            _ => status(405, "MethodNotAllowed", method),
        }
    }
}
