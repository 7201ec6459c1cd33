//! The API's one route table. The router dispatches only what is listed
//! here and the OpenAPI document is generated from it, so a route cannot
//! exist without being documented (and so without being enumerated by the
//! security tests, which read the document).

use serde_json::{json, Map, Value};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Login,
    Logout,
    Session,
    OpenApi,
    Events,
    ListVms,
    CreateVm,
    GetVm,
    DeleteVm,
    StartVm,
    StopVm,
    KillVm,
    PauseVm,
    ResumeVm,
    Console,
    ListOs,
    GetOs,
    ListMedia,
    HostCheck,
    Devices,
}

/// What a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    /// `text/event-stream`.
    EventStream,
    /// A WebSocket upgrade.
    WebSocket,
}

#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    /// With `{param}` segments.
    pub path: &'static str,
    pub op: Op,
    pub id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    /// Reachable without a session or token (only the login).
    pub public: bool,
    pub kind: Kind,
    /// Schema of the JSON request body, if any.
    pub body: Option<&'static str>,
    /// Schema of the success response.
    pub response: &'static str,
}

impl Route {
    /// Whether a cookie-authenticated request must carry the session's CSRF
    /// token: every state-changing method, and the console (keyboard input).
    pub fn csrf(&self) -> bool {
        !self.public && (self.method != "GET" || self.kind == Kind::WebSocket)
    }
}

const fn r(method: &'static str, path: &'static str, op: Op, id: &'static str, tag: &'static str) -> Route {
    Route { method, path, op, id, tag, summary: "", public: false, kind: Kind::Json, body: None, response: "Any" }
}

impl Route {
    /// What it does, its request body's schema (if any) and its response's.
    const fn doc(self, summary: &'static str, body: Option<&'static str>, response: &'static str) -> Route {
        Route { summary, body, response, ..self }
    }

    const fn kind(self, kind: Kind) -> Route {
        Route { kind, ..self }
    }

    const fn public(self) -> Route {
        Route { public: true, ..self }
    }
}

pub const PREFIX: &str = "/api/v1";

pub static ROUTES: &[Route] = &[
    r("POST", "/api/v1/login", Op::Login, "login", "session")
        .doc("Log in: sets the session cookie and returns the CSRF token", Some("Login"), "Session")
        .public(),
    r("POST", "/api/v1/logout", Op::Logout, "logout", "session").doc("End this session", None, "Ok"),
    r("GET", "/api/v1/session", Op::Session, "getSession", "session").doc(
        "Who is logged in, and the CSRF token to send in X-CSRF-Token",
        None,
        "Session",
    ),
    r("GET", "/api/v1/openapi.json", Op::OpenApi, "getOpenApi", "meta").doc("This document", None, "Any"),
    r("GET", "/api/v1/events", Op::Events, "events", "vms")
        .doc(
            "Server-sent events: `vms` with the whole VM list whenever a VM changes (libvirt lifecycle events)",
            None,
            "VmList",
        )
        .kind(Kind::EventStream),
    r("GET", "/api/v1/vms", Op::ListVms, "listVms", "vms").doc("List VMs with their state", None, "VmList"),
    r("POST", "/api/v1/vms", Op::CreateVm, "createVm", "vms").doc(
        "Create a VM (disk encrypted by default), optionally starting it",
        Some("CreateVm"),
        "Created",
    ),
    r("GET", "/api/v1/vms/{name}", Op::GetVm, "getVm", "vms").doc("Details of one VM", None, "VmDetails"),
    r("DELETE", "/api/v1/vms/{name}", Op::DeleteVm, "deleteVm", "vms").doc(
        "Delete a stopped VM with its disk and secrets (keep_disk=true keeps the disk)",
        None,
        "Deleted",
    ),
    r("POST", "/api/v1/vms/{name}/start", Op::StartVm, "startVm", "vms").doc(
        "Start a VM (a passphrase-locked disk needs `passphrase`)",
        Some("Start"),
        "Action",
    ),
    r("POST", "/api/v1/vms/{name}/stop", Op::StopVm, "stopVm", "vms").doc(
        "Shut a VM down gracefully (ACPI, then the guest agent); `force` powers off at the timeout",
        Some("Stop"),
        "Action",
    ),
    r("POST", "/api/v1/vms/{name}/kill", Op::KillVm, "killVm", "vms").doc("Power a VM off at once", None, "Action"),
    r("POST", "/api/v1/vms/{name}/pause", Op::PauseVm, "pauseVm", "vms").doc("Pause a running VM", None, "Action"),
    r("POST", "/api/v1/vms/{name}/resume", Op::ResumeVm, "resumeVm", "vms").doc("Resume a paused VM", None, "Action"),
    r("GET", "/api/v1/vms/{name}/console", Op::Console, "console", "vms")
        .doc(
            "WebSocket to the VM's VNC display (RFB over binary frames). Browsers send the CSRF token \
             as the subprotocol `phyllome-csrf.TOKEN` next to `binary`",
            None,
            "Any",
        )
        .kind(Kind::WebSocket),
    r("GET", "/api/v1/os", Op::ListOs, "listOs", "catalog").doc("The guest OS catalog", None, "OsList"),
    r("GET", "/api/v1/os/{id}", Op::GetOs, "getOs", "catalog").doc(
        "One guest OS model: its devices and why",
        None,
        "Any",
    ),
    r("GET", "/api/v1/media", Op::ListMedia, "listMedia", "host").doc(
        "Files in the host's ISO folder (installer ISOs, kernels, initrds) that create may use",
        None,
        "MediaList",
    ),
    r("GET", "/api/v1/host/check", Op::HostCheck, "hostCheck", "host").doc(
        "Is this host ready to run guests well (the `phyllome check` report)",
        None,
        "Any",
    ),
    r("GET", "/api/v1/devices", Op::Devices, "listDevices", "host").doc(
        "PCI and USB devices and whether each can be passed through (`phyllome devices`)",
        None,
        "Any",
    ),
];

/// Why a path did not match.
#[derive(Debug, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    /// The path exists with other methods.
    Method(Vec<&'static str>),
}

/// Decodes `%XX` escapes; None for bad escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut p = pattern.split('/');
    let mut q = path.split('/');
    loop {
        match (p.next(), q.next()) {
            (None, None) => return Some(params),
            (Some(a), Some(b)) if a.starts_with('{') => {
                if b.is_empty() {
                    return None;
                }
                params.push(percent_decode(b)?);
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for `method` and `path`, with its decoded path parameters.
pub fn find(method: &str, path: &str) -> Result<(&'static Route, Vec<String>), NoRoute> {
    let mut methods = Vec::new();
    for route in ROUTES {
        if let Some(params) = match_path(route.path, path) {
            if route.method == method {
                return Ok((route, params));
            }
            methods.push(route.method);
        }
    }
    if methods.is_empty() {
        Err(NoRoute::NotFound)
    } else {
        Err(NoRoute::Method(methods))
    }
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let opt = |t: &str| json!({ "type": [t, "null"] });
    json!({
        "Any": {},
        "Ok": { "type": "object", "properties": { "ok": s("boolean") } },
        "Error": { "type": "object", "required": ["error"], "properties": { "error": s("string") } },
        "Login": { "type": "object", "required": ["username", "password"],
                   "properties": { "username": s("string"), "password": s("string") } },
        "Session": { "type": "object", "properties": { "user": s("string"), "csrf": s("string"),
                     "idle_timeout_secs": s("integer") } },
        "VmRow": { "type": "object", "properties": {
            "name": s("string"), "os": opt("string"),
            "state": { "type": "string", "enum": ["running", "paused", "shut off", "other"] },
            "vcpus": s("integer"), "memory_mib": s("integer"), "encrypted": s("boolean"), "disk_gib": opt("number") } },
        "VmList": { "type": "array", "items": schema("VmRow") },
        "VmDetails": { "allOf": [schema("VmRow"), { "type": "object", "properties": {
            "uuid": s("string"), "encryption": opt("string"), "created_by": opt("string"),
            "console": s("boolean"), "disks": { "type": "array", "items": { "type": "object" } } } }] },
        "CreateVm": { "type": "object", "required": ["name", "os"], "properties": {
            "name": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$" },
            "os": { "type": "string", "description": "an id from GET /api/v1/os" },
            "memory": { "type": "string", "example": "4G" }, "cpus": s("integer"),
            "disk_size": { "type": "string", "example": "64G" },
            "iso": { "type": "string", "description": "a file name from GET /api/v1/media" },
            "drivers": { "type": "string", "description": "Windows driver ISO: a file name from GET /api/v1/media" },
            "kernel": { "type": "string", "description": "direct kernel boot: a file name from GET /api/v1/media" },
            "initrd": { "type": "string", "description": "a file name from GET /api/v1/media" },
            "cmdline": s("string"),
            "network": { "type": "string", "description": "none, user, default or a libvirt network", "default": "default" },
            "disk_bus": { "type": "string", "enum": ["virtio", "sata"] },
            "secure_boot": s("boolean"),
            "encryption": { "type": "string", "enum": ["secret", "prompt", "none"], "default": "secret" },
            "passphrase": { "type": "string", "description": "with encryption=prompt" },
            "start": s("boolean") } },
        "Created": { "type": "object", "properties": { "name": s("string"), "os": s("string"),
            "vcpus": s("integer"), "memory_mib": s("integer"), "disk_gib": s("integer"),
            "encryption": s("string"), "started": s("boolean"),
            "warnings": { "type": "array", "items": s("string") } } },
        "Start": { "type": "object", "properties": { "passphrase": s("string") } },
        "Stop": { "type": "object", "properties": {
            "timeout_secs": { "type": "integer", "default": 60, "maximum": 600 }, "force": s("boolean") } },
        "Action": { "type": "object", "properties": { "name": s("string"), "result": s("string"),
            "state": s("string") } },
        "Deleted": { "type": "object", "properties": { "name": s("string"),
            "volumes": { "type": "array", "items": s("string") }, "secrets": s("integer"), "kept_disk": s("boolean") } },
        "OsList": { "type": "array", "items": { "type": "object", "properties": {
            "id": s("string"), "name": s("string"), "family": s("string"), "description": s("string") } } },
        "MediaList": { "type": "object", "properties": { "dir": s("string"), "files": { "type": "array",
            "items": { "type": "object", "properties": { "name": s("string"), "size": s("integer"),
            "kind": { "type": "string", "enum": ["iso", "kernel", "initrd", "other"] } } } } } }
    })
}

/// The OpenAPI 3.1 document of every route in [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = Map::new();
        op.insert("operationId".into(), route.id.into());
        op.insert("summary".into(), route.summary.into());
        op.insert("tags".into(), json!([route.tag]));
        if route.public {
            op.insert("security".into(), json!([]));
        }
        op.insert("x-phyllome-csrf".into(), route.csrf().into());
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
            .chain(
                (route.op == Op::DeleteVm)
                    .then(|| json!({ "name": "keep_disk", "in": "query", "schema": { "type": "boolean" } })),
            )
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), params.into());
        }
        if let Some(body) = route.body {
            let required = !matches!(body, "Start" | "Stop");
            op.insert(
                "requestBody".into(),
                json!({ "required": required, "content": { "application/json": { "schema": schema(body) } } }),
            );
        }
        let ok = match route.kind {
            Kind::Json => {
                json!({ "description": "OK", "content": { "application/json": { "schema": schema(route.response) } } })
            }
            Kind::EventStream => json!({ "description": "an event stream",
                "content": { "text/event-stream": { "schema": { "type": "string" } } } }),
            Kind::WebSocket => json!({ "description": "switching to the WebSocket protocol" }),
        };
        let code = match (route.kind, route.op) {
            (Kind::WebSocket, _) => "101",
            (_, Op::CreateVm) => "201",
            _ => "200",
        };
        let err =
            |d: &str| json!({ "description": d, "content": { "application/json": { "schema": schema("Error") } } });
        let mut responses = Map::new();
        responses.insert(code.into(), ok);
        responses.insert("400".into(), err("the request is not valid (the same checks as the CLI)"));
        if !route.public {
            responses.insert("401".into(), err("no valid session or API token"));
        }
        responses.insert("403".into(), err("cross-origin request, or missing CSRF token"));
        if route.path.contains('{') {
            responses.insert("404".into(), err("no such VM or OS"));
        }
        if route.public {
            responses.insert("429".into(), err("too many failed logins: retry after Retry-After seconds"));
        }
        if route.method != "GET" {
            responses.insert("409".into(), err("the VM's state does not allow this (e.g. delete while running)"));
        }
        op.insert("responses".into(), responses.into());
        let entry = paths.entry(route.path.to_string()).or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = op.into();
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Phyllome", "version": phyllome_engine::VERSION,
                  "description": "VMs, the guest OS catalog, the host check and devices of one Phyllome host. \
                                  The CLI and this API call the same core." },
        "servers": [{ "url": "/" }],
        "security": [{ "session": [] }, { "token": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": { "type": "apiKey", "in": "cookie", "name": "phyllome_session",
                             "description": "from POST /api/v1/login; state-changing requests also need X-CSRF-Token (`__Host-phyllome_session` under TLS)" },
                "token": { "type": "http", "scheme": "bearer", "description": "from `phyllome user token NAME`" }
            },
            "schemas": schemas()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_with_decoded_params() {
        let (r, p) = find("GET", "/api/v1/vms/a%20b").unwrap();
        assert_eq!((r.op, p), (Op::GetVm, vec!["a b".to_string()]));
        assert_eq!(find("POST", "/api/v1/vms/x/start").unwrap().0.op, Op::StartVm);
        assert_eq!(find("GET", "/api/v1/vms/").unwrap_err(), NoRoute::NotFound);
        assert_eq!(find("PUT", "/api/v1/vms").unwrap_err(), NoRoute::Method(vec!["GET", "POST"]));
        assert_eq!(find("GET", "/api/v1/nope").unwrap_err(), NoRoute::NotFound);
        assert_eq!(find("GET", "/api/v1/vms/%zz").unwrap_err(), NoRoute::NotFound);
    }

    #[test]
    fn only_login_is_public_and_every_change_needs_csrf() {
        for route in ROUTES {
            assert_eq!(route.public, route.op == Op::Login, "{}", route.path);
            if route.method != "GET" && !route.public {
                assert!(route.csrf(), "{} {}", route.method, route.path);
            }
        }
    }

    #[test]
    fn openapi_lists_every_route_once() {
        let doc = openapi();
        let mut n = 0;
        for (_, item) in doc["paths"].as_object().unwrap() {
            n += item.as_object().unwrap().len();
        }
        assert_eq!(n, ROUTES.len());
        let ids: std::collections::HashSet<_> = ROUTES.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), ROUTES.len(), "operation ids must be unique");
        for r in ROUTES {
            if let Some(b) = r.body {
                assert!(doc["components"]["schemas"].get(b).is_some(), "{b}");
            }
            assert!(doc["components"]["schemas"].get(r.response).is_some(), "{}", r.response);
        }
    }
}
