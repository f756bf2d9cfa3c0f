//! The Confluent REST API over real HTTP on 127.0.0.1.

use reqwest::{Client, StatusCode};
use sagaflow_registry::{CONTENT_TYPE, FileLog, MemoryLog, Registry, SchemaLog, ServeHandle};
use serde_json::{Value, json};

const V1: &str = r#"{"type":"record","name":"OrderPlaced","namespace":"t","fields":[{"name":"order_id","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"OrderPlaced","namespace":"t","fields":[{"name":"order_id","type":"string"},{"name":"note","type":["null","string"],"default":null}]}"#;
const V3_BAD: &str = r#"{"type":"record","name":"OrderPlaced","namespace":"t","fields":[{"name":"order_id","type":"string"},{"name":"total_cents","type":"long"}]}"#;

async fn serve(log: impl SchemaLog) -> ServeHandle {
    let registry = Registry::open(log).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    registry.serve(listener).unwrap()
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(handle: &ServeHandle) -> Self {
        assert!(handle.local_addr().ip().is_loopback());
        Self {
            client: Client::new(),
            base: handle.url(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.client.get(url),
            "POST" => self.client.post(url),
            "PUT" => self.client.put(url),
            "DELETE" => self.client.delete(url),
            other => panic!("method {other}"),
        };
        if let Some(body) = body {
            request = request
                .header("content-type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert_eq!(
            response.headers()["content-type"],
            CONTENT_TYPE,
            "{method} {path}"
        );
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

fn schema(text: &str) -> Option<Value> {
    Some(json!({"schema": text}))
}

#[tokio::test]
async fn register_fetch_list_and_lookup() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);

    let (status, body) = api
        .call("POST", "/subjects/orders-value/versions", schema(V1))
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"id": 1})));
    // Idempotent, also across subjects and with schemaType given.
    let again = Some(json!({"schema": V1, "schemaType": "AVRO"}));
    assert_eq!(
        api.call("POST", "/subjects/orders-value/versions", again.clone())
            .await
            .1,
        json!({"id": 1})
    );
    assert_eq!(
        api.call("POST", "/subjects/t.OrderPlaced/versions", again)
            .await
            .1,
        json!({"id": 1})
    );
    assert_eq!(
        api.call("POST", "/subjects/orders-value/versions", schema(V2))
            .await
            .1,
        json!({"id": 2})
    );

    assert_eq!(
        api.call("GET", "/schemas/ids/2?deleted=true", None).await.1,
        json!({"schema": V2})
    );
    assert_eq!(
        api.call("GET", "/subjects", None).await.1,
        json!(["orders-value", "t.OrderPlaced"])
    );
    assert_eq!(
        api.call("GET", "/subjects/orders-value/versions", None)
            .await
            .1,
        json!([1, 2])
    );
    assert_eq!(
        api.call("GET", "/subjects/orders-value/versions/latest", None)
            .await
            .1,
        json!({"subject": "orders-value", "version": 2, "id": 2, "schema": V2})
    );
    assert_eq!(
        api.call("GET", "/subjects/orders-value/versions/1", None)
            .await
            .1,
        json!({"subject": "orders-value", "version": 1, "id": 1, "schema": V1})
    );
    assert_eq!(
        api.call("POST", "/subjects/orders-value", schema(V1))
            .await
            .1,
        json!({"subject": "orders-value", "version": 1, "id": 1, "schema": V1})
    );
    // Subjects with a slash arrive percent-encoded.
    assert_eq!(
        api.call("POST", "/subjects/a%2Fb/versions", schema(V1))
            .await
            .1,
        json!({"id": 1})
    );
    assert_eq!(
        api.call("GET", "/subjects/a%2Fb/versions", None).await.1,
        json!([1])
    );
}

#[tokio::test]
async fn confluent_error_bodies() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);
    let expect = |(status, body): (StatusCode, Value), want_status: u16, code: u64| {
        assert_eq!(status.as_u16(), want_status, "{body}");
        assert_eq!(body["error_code"], json!(code), "{body}");
        assert!(body["message"].is_string(), "{body}");
    };
    expect(
        api.call("GET", "/subjects/nope/versions", None).await,
        404,
        40401,
    );
    expect(api.call("GET", "/schemas/ids/99", None).await, 404, 40403);
    expect(
        api.call("POST", "/subjects/s/versions", schema("{not avro"))
            .await,
        422,
        42201,
    );
    expect(
        api.call(
            "POST",
            "/subjects/s/versions",
            Some(json!({"schema": "{}", "schemaType": "PROTOBUF"})),
        )
        .await,
        422,
        42201,
    );
    api.call("POST", "/subjects/s/versions", schema(V1)).await;
    expect(
        api.call("GET", "/subjects/s/versions/7", None).await,
        404,
        40402,
    );
    expect(
        api.call("GET", "/subjects/s/versions/zero", None).await,
        422,
        42202,
    );
    expect(
        api.call("POST", "/subjects/s", schema(V2)).await,
        404,
        40403,
    );
    expect(
        api.call("POST", "/subjects/s/versions", schema(V3_BAD))
            .await,
        409,
        409,
    );
    expect(
        api.call(
            "PUT",
            "/config",
            Some(json!({"compatibility": "SOMETIMES"})),
        )
        .await,
        422,
        42203,
    );
    expect(api.call("GET", "/config/s", None).await, 404, 40408);
    expect(api.call("GET", "/no/such/route", None).await, 404, 404);
}

#[tokio::test]
async fn compatibility_endpoint_reports_reasons() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);
    api.call("POST", "/subjects/s/versions", schema(V1)).await;
    let (status, body) = api
        .call(
            "POST",
            "/compatibility/subjects/s/versions/latest",
            schema(V2),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"is_compatible": true, "messages": []})
        )
    );
    let (_, body) = api
        .call(
            "POST",
            "/compatibility/subjects/s/versions/1",
            schema(V3_BAD),
        )
        .await;
    assert_eq!(body["is_compatible"], json!(false));
    let message = body["messages"][0].as_str().unwrap();
    assert!(
        message.contains("`total_cents`") && message.contains("version 1"),
        "{message}"
    );
    let (_, body) = api
        .call("POST", "/compatibility/subjects/s/versions", schema(V3_BAD))
        .await;
    assert_eq!(body["is_compatible"], json!(false));
    let (status, body) = api
        .call(
            "POST",
            "/compatibility/subjects/new/versions/latest",
            schema(V1),
        )
        .await;
    assert_eq!((status.as_u16(), &body["error_code"]), (404, &json!(40401)));
}

#[tokio::test]
async fn config_levels_global_and_per_subject() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);
    assert_eq!(
        api.call("GET", "/config", None).await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    api.call("POST", "/subjects/s/versions", schema(V1)).await;
    let (_, body) = api
        .call("PUT", "/config/s", Some(json!({"compatibility": "NONE"})))
        .await;
    assert_eq!(body, json!({"compatibility": "NONE"}));
    assert_eq!(
        api.call("GET", "/config/s", None).await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        api.call("POST", "/subjects/s/versions", schema(V3_BAD))
            .await
            .1,
        json!({"id": 2})
    );
    // FULL globally: a new required field is rejected on another subject.
    assert_eq!(
        api.call("PUT", "/config", Some(json!({"compatibility": "full"})))
            .await
            .1,
        json!({"compatibility": "FULL"})
    );
    assert_eq!(
        api.call("GET", "/config/t?defaultToGlobal=true", None)
            .await
            .1,
        json!({"compatibilityLevel": "FULL"})
    );
    api.call("POST", "/subjects/t/versions", schema(V1)).await;
    assert_eq!(
        api.call("POST", "/subjects/t/versions", schema(V3_BAD))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.call("DELETE", "/config/s", None).await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        api.call("GET", "/config/s", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn soft_and_permanent_delete() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);
    api.call("POST", "/subjects/s/versions", schema(V1)).await;
    api.call("POST", "/subjects/s/versions", schema(V2)).await;
    assert_eq!(
        api.call("DELETE", "/subjects/s?permanent=true", None)
            .await
            .1["error_code"],
        json!(40405)
    );
    assert_eq!(
        api.call("DELETE", "/subjects/s", None).await.1,
        json!([1, 2])
    );
    assert_eq!(api.call("GET", "/subjects", None).await.1, json!([]));
    assert_eq!(
        api.call("GET", "/subjects?deleted=true", None).await.1,
        json!(["s"])
    );
    // Ids stay resolvable for old messages.
    assert_eq!(
        api.call("GET", "/schemas/ids/1?deleted=true", None).await.1,
        json!({"schema": V1})
    );
    assert_eq!(
        api.call("DELETE", "/subjects/s?permanent=true", None)
            .await
            .1,
        json!([1, 2])
    );
    assert_eq!(
        api.call("GET", "/subjects?deleted=true", None).await.1,
        json!([])
    );
}

#[tokio::test]
async fn restart_keeps_subjects_ids_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let handle = serve(FileLog::open(dir.path()).unwrap()).await;
    let api = Api::new(&handle);
    api.call("POST", "/subjects/s/versions", schema(V1)).await;
    api.call("POST", "/subjects/s/versions", schema(V2)).await;
    api.call("PUT", "/config", Some(json!({"compatibility": "FORWARD"})))
        .await;
    handle.shutdown().await.unwrap();

    let handle = serve(FileLog::open(dir.path()).unwrap()).await;
    let api = Api::new(&handle);
    assert_eq!(
        api.call("GET", "/subjects/s/versions", None).await.1,
        json!([1, 2])
    );
    assert_eq!(
        api.call("GET", "/schemas/ids/2", None).await.1,
        json!({"schema": V2})
    );
    assert_eq!(
        api.call("GET", "/config", None).await.1,
        json!({"compatibilityLevel": "FORWARD"})
    );
    assert_eq!(
        api.call("POST", "/subjects/other/versions", schema(V2))
            .await
            .1,
        json!({"id": 2})
    );
    let (_, fresh) = api
        .call("POST", "/subjects/x/versions", schema(r#""string""#))
        .await;
    assert_eq!(fresh, json!({"id": 3}));
}

/// The calls Confluent clients make besides register/fetch:
/// `get_subjects_by_schema_id`, `get_schema_versions` and `get_mode`.
#[tokio::test]
async fn schema_id_lookups_and_mode_for_confluent_clients() {
    let handle = serve(MemoryLog::new()).await;
    let api = Api::new(&handle);
    // The same schema under two subjects (a record-name subject and the
    // topic-name subject a Confluent serializer creates by default).
    let (_, first) = api
        .call("POST", "/subjects/t.OrderPlaced/versions", schema(V1))
        .await;
    let id = first["id"].as_u64().unwrap();
    api.call("POST", "/subjects/orders.events-value/versions", schema(V1))
        .await;
    let (_, other) = api
        .call("POST", "/subjects/orders.events-value/versions", schema(V2))
        .await;

    let (status, body) = api
        .call("GET", &format!("/schemas/ids/{id}/subjects"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!(["orders.events-value", "t.OrderPlaced"]));
    let (status, body) = api
        .call("GET", &format!("/schemas/ids/{id}/versions"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([
            {"subject": "orders.events-value", "version": 1},
            {"subject": "t.OrderPlaced", "version": 1}
        ])
    );
    let other = other["id"].as_u64().unwrap();
    let (_, body) = api
        .call("GET", &format!("/schemas/ids/{other}/versions"), None)
        .await;
    assert_eq!(
        body,
        json!([{"subject": "orders.events-value", "version": 2}])
    );

    // Soft-deleted versions show only with `deleted=true`.
    api.call("DELETE", "/subjects/t.OrderPlaced", None).await;
    let (_, body) = api
        .call("GET", &format!("/schemas/ids/{id}/subjects"), None)
        .await;
    assert_eq!(body, json!(["orders.events-value"]));
    let (_, body) = api
        .call(
            "GET",
            &format!("/schemas/ids/{id}/subjects?deleted=true"),
            None,
        )
        .await;
    assert_eq!(body, json!(["orders.events-value", "t.OrderPlaced"]));

    // Unknown ids are Confluent's 40403, on both.
    for path in [
        "/schemas/ids/999/subjects",
        "/schemas/ids/999/versions",
        "/schemas/ids/x/versions",
    ] {
        let (status, body) = api.call("GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error_code"], 40403, "{path}");
    }

    for path in [
        "/mode",
        "/mode/orders.events-value",
        "/mode/never-registered",
    ] {
        let (status, body) = api.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, json!({"mode": "READWRITE"}), "{path}");
    }
    handle.shutdown().await.unwrap();
}
