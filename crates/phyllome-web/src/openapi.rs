//! The OpenAPI 3.1 document. Its paths and schemas come from the handlers'
//! `#[utoipa::path]` attributes and their types (see `api::routes`);
//! this module adds what every route shares, from the same rules the
//! pipeline applies ([`crate::http`]): the security scheme, the CSRF flag
//! (`x-phyllome-csrf`), and the refusals any route can answer with.

use crate::http::{needs_csrf, WEBSOCKETS};
use axum::http::Method;
use serde_json::{json, Value};

/// Finishes the generated document (see the module documentation).
pub fn finish(api: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serializes");
    doc["openapi"] = "3.1.0".into();
    doc["info"] = json!({
        "title": "Phyllome",
        "version": phyllome_engine::VERSION,
        "description": "The REST API of `phyllome serve`: the same operations as the phyllome CLI. \
                        Authenticate with the session cookie from POST /api/v1/login (and send its CSRF token \
                        in X-CSRF-Token on every change), or with an API token: `Authorization: Bearer TOKEN`."
    });
    doc["components"]["securitySchemes"] = json!({
        "session": { "type": "apiKey", "in": "cookie", "name": "phyllome_session" },
        "token": { "type": "http", "scheme": "bearer" }
    });
    doc["security"] = json!([{ "session": [] }, { "token": [] }]);
    let error = |d: &str| {
        json!({ "description": d,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } } })
    };
    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else { continue };
            let public = path == "/api/v1/login";
            let websocket = WEBSOCKETS.contains(&path.as_str());
            op["x-phyllome-csrf"] = needs_csrf(&m, path).into();
            // Path names: what `http::Name` takes (no control characters, at most 1024 bytes).
            if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                for p in params.iter_mut().filter(|p| p["in"] == "path") {
                    p["schema"] = json!({ "type": "string", "minLength": 1, "maxLength": 1024,
                                          "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$" });
                }
            }
            let body = op.get("requestBody").is_some();
            let responses = op["responses"].as_object_mut().expect("every operation has responses");
            let mut add = |code: &str, d: &str| {
                responses.entry(code.to_string()).or_insert_with(|| error(d));
            };
            add("400", "the request is not valid (the same checks as the CLI)");
            if !public {
                add("401", "no valid session or API token");
            }
            add(
                "403",
                "cross-origin request, a Host that is not a loopback name over plain HTTP, or a missing CSRF token",
            );
            if path.contains('{') {
                add("404", "no such VM, OS or token");
            }
            if m != Method::GET {
                add("409", "the VM's state does not allow this (e.g. delete while running)");
            }
            if body {
                add("413", "the request body is too large");
                add("415", "the body is not application/json");
            }
            if websocket {
                add("426", "not a WebSocket (version 13) request");
            }
            add("500", "the operation failed");
            add("503", "libvirtd cannot be reached, or too many logins at once");
        }
    }
    doc
}
