//! `GET /openapi.json`: the OpenAPI document of the HTTP routes, kept in the
//! repository as `docs/openapi.json` and built into the binary, so what is
//! served is exactly the file that is reviewed (and fuzzed against the running
//! server by `.ci/live-checks.sh`). It never generates or edits the document.

use crate::wire::http::Response;

/// The document as committed; `tests` below checks it is JSON.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// The reply to `GET /openapi.json`.
pub fn openapi() -> Response {
    Response::text(200, "application/json", OPENAPI_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_document_is_openapi_json_naming_itself() {
        let r = openapi();
        assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
        let doc: serde_json::Value = serde_json::from_slice(&r.body).expect("docs/openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        assert!(doc["paths"]["/openapi.json"]["get"].is_object());
    }
}
