//! What the front door adds to a server's OpenAPI document.

use serde_json::{json, Value};

/// Documents the front door's answers: `408 request_timeout` on every
/// operation that takes a body, and the connection limit in the
/// description (`503 too_many_connections`, answered before routing);
/// and the `Retry-After` header of every `429` and `503` (CONTRACT.md:
/// they carry it).
pub fn annotate(doc: &mut Value) {
    if let Some(info) = doc.get_mut("info").and_then(Value::as_object_mut) {
        let said = info
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let d = format!(
            "{said} Any request may be answered 503 too_many_connections (max_connections); a request body that does not arrive within body_timeout_secs is answered 408 request_timeout."
        );
        info.insert(
            "description".into(),
            Value::String(d.trim_start().to_owned()),
        );
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|p| p.values_mut())
    {
        if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
            for status in ["429", "503"] {
                if let Some(answer) = r.get_mut(status).and_then(Value::as_object_mut) {
                    answer.entry("headers").or_insert_with(|| {
                        json!({"Retry-After": {"description": "Seconds to wait before trying again, when the refusal is temporary",
                                               "schema": {"type": "integer", "minimum": 0}}})
                    });
                }
            }
        }
        if op.get("requestBody").is_none() {
            continue;
        }
        if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
            r.entry("408").or_insert_with(|| {
                json!({"description": "The body did not arrive in time (request_timeout)",
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_with_a_body_get_408_and_others_do_not() {
        let mut doc = json!({"info": {"description": "D."}, "paths": {
            "/a": {"post": {"requestBody": {}, "responses": {"200": {}}}},
            "/b": {"get": {"responses": {"200": {}}}}}});
        annotate(&mut doc);
        assert!(doc.pointer("/paths/~1a/post/responses/408").is_some());
        assert!(doc.pointer("/paths/~1b/get/responses/408").is_none());
        assert!(doc["info"]["description"]
            .as_str()
            .unwrap()
            .contains("too_many_connections"));
    }

    #[test]
    fn answers_429_and_503_declare_retry_after() {
        let mut doc = json!({"paths": {
            "/a": {"get": {"responses": {"404": {}, "429": {}, "503": {}}}}}});
        annotate(&mut doc);
        let r = &doc["paths"]["/a"]["get"]["responses"];
        assert!(r["503"]["headers"]["Retry-After"].is_object());
        assert!(r["429"]["headers"]["Retry-After"].is_object());
        assert!(r["404"].get("headers").is_none());
    }
}
