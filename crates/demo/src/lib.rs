//! Demo backend services for the worked sagas, served on loopback by tests
//! and by `sagaflow dev`.
//!
//! Every REST/JSON service answers `POST /{service}/{operation}`; the SOAP
//! 1.1 billing service answers `POST /billing/soap` (`OpenAccount`,
//! `CloseAccount`); the workspaces service also speaks GraphQL on
//! `POST /workspaces/graphql` (see [`graphql`]; its adapter uses that one).
//! Each behaves like a careful real API:
//!
//! * a request without an `Idempotency-Key` header is refused (400);
//! * a repeated key is answered with the first answer and has no new effect;
//! * every request is recorded, and every effect is kept in a ledger per
//!   (service, operation, subject), so tests can check "exactly once".
//!
//! The subject of a request is the first of `order_id`, `booking_id`,
//! `customer_id`, `reservation_id`, `payment_id`, `account_id` in the JSON
//! body (for SOAP: the `CustomerId` or `AccountId` element). Outcomes are
//! deterministic from the number `n` after the subject's last `-`
//! (`order-17` → 17; no number → 0):
//!
//! | service / operation    | outcome                                      |
//! |------------------------|----------------------------------------------|
//! | inventory reserve      | `n % 9 == 8`: 409 out of stock               |
//! | fraud screen           | `n % 5 == 0`: verdict `reject`, else `accept`|
//! | payment charge         | `n % 13 == 12`: 402 card declined            |
//! | hotels reserve         | `n % 6 == 5`: 409 hotel full                 |
//! | workspaces provision   | `n % 7 == 6`: 409 workspace quota exceeded   |
//! | billing OpenAccount    | `n % 4 == 3`: SOAP `Server` fault on the first attempt for that customer, success on the next |
//! | anything else          | success                                      |
//!
//! Successful reservations answer `reservation_id = r-{subject}`, charges
//! `payment_id = p-{subject}`, shipments `tracking_number = t-{subject}`,
//! CRM accounts `crm_id = crm-{subject}`, workspaces
//! `workspace_id = ws-{subject}`, billing accounts `AccountId = b-{subject}`.

pub mod adapters;
pub mod graphql;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// The fields that name the subject of a request, in order of preference.
pub const SUBJECT_FIELDS: [&str; 6] = [
    "order_id",
    "booking_id",
    "customer_id",
    "reservation_id",
    "payment_id",
    "account_id",
];

/// One request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub service: String,
    pub operation: String,
    pub idempotency_key: Option<String>,
    pub subject: String,
    /// True when it was answered from the idempotency store.
    pub replayed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    answers: HashMap<(String, String), (u16, String, String)>,
    effects: HashMap<(String, String, String), u32>,
    requests: Vec<Request>,
    soap_attempts: HashMap<String, u32>,
    soap_actions: Vec<(String, Option<String>)>,
}

/// The shared state of all demo services: idempotency store and ledgers.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Inner>>);

impl Ledger {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// How many effects (successful first answers) a (service, operation,
    /// subject) had.
    pub fn effects(&self, service: &str, operation: &str, subject: &str) -> u32 {
        self.with(|i| {
            i.effects
                .get(&(service.into(), operation.into(), subject.into()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.with(|i| i.requests.clone())
    }

    /// The operation (the body's first element) and the `SOAPAction`
    /// header of every SOAP request that named one, in order.
    pub fn soap_actions(&self) -> Vec<(String, Option<String>)> {
        self.with(|i| i.soap_actions.clone())
    }
}

/// Running demo services.
#[derive(Debug)]
pub struct DemoServices {
    addr: SocketAddr,
    ledger: Ledger,
    task: tokio::task::JoinHandle<()>,
}

impl DemoServices {
    /// Serves every demo service on `127.0.0.1:0`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address")).await
    }

    /// Serves every demo service on `addr` (`sagaflow demo-services`).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let ledger = Ledger::default();
        let app = router(ledger.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, ledger, task })
    }

    /// `http://127.0.0.1:port`; a service's base URL is `{url}/{service}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl Drop for DemoServices {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The router of all demo services over one ledger.
pub fn router(ledger: Ledger) -> Router {
    Router::new()
        // For health checks (compose): answers 200 `ok`, records nothing.
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/billing/soap", post(soap).get(wsdl))
        .route("/workspaces/graphql", post(graphql::serve))
        .route("/{service}/{op}", post(rest))
        .with_state(ledger)
}

/// The number after the last `-` of an id (0 when there is none).
pub fn number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// Replays a stored answer, or computes, records and stores a new one.
fn handle(
    ledger: &Ledger,
    service: &str,
    op: &str,
    key: Option<String>,
    subject: String,
    decide: impl FnOnce(&mut Inner) -> (u16, String),
    content_type: &str,
) -> (u16, String, String) {
    ledger.with(|i| {
        let Some(k) = key.clone() else {
            i.requests.push(Request {
                service: service.into(),
                operation: op.into(),
                idempotency_key: None,
                subject,
                replayed: false,
            });
            return (
                400,
                json!({"error": "Idempotency-Key header required"}).to_string(),
                "application/json".into(),
            );
        };
        let store = (service.to_owned(), k);
        if let Some(a) = i.answers.get(&store).cloned() {
            i.requests.push(Request {
                service: service.into(),
                operation: op.into(),
                idempotency_key: key,
                subject,
                replayed: true,
            });
            return a;
        }
        let (status, body) = decide(i);
        i.requests.push(Request {
            service: service.into(),
            operation: op.into(),
            idempotency_key: key,
            subject: subject.clone(),
            replayed: false,
        });
        let answer = (status, body, content_type.to_owned());
        // Only decided answers are remembered; a server fault may be retried.
        if status < 500 {
            i.answers.insert(store, answer.clone());
        }
        if (200..300).contains(&status) {
            *i.effects
                .entry((service.into(), op.into(), subject))
                .or_default() += 1;
        }
        answer
    })
}

fn respond((status, body, content_type): (u16, String, String)) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The REST answer for a first request (status, JSON body).
pub fn rest_outcome(service: &str, op: &str, subject: &str) -> (u16, Value) {
    let n = number(subject);
    match (service, op) {
        ("inventory", "reserve") if n % 9 == 8 => (409, json!({"error": "out of stock"})),
        ("hotels", "reserve") if n % 6 == 5 => (409, json!({"error": "hotel full"})),
        ("workspaces", "provision") if n % 7 == 6 => {
            (409, json!({"error": "workspace quota exceeded"}))
        }
        ("payment", "charge") if n % 13 == 12 => (402, json!({"error": "card declined"})),
        ("flights" | "hotels" | "cars", "reserve") => {
            let price = match service {
                "flights" => 42_000,
                "hotels" => 63_000,
                _ => 17_500,
            };
            (
                201,
                json!({"reservation_id": format!("r-{subject}"), "price": price}),
            )
        }
        (_, "reserve") => (201, json!({"reservation_id": format!("r-{subject}")})),
        ("fraud", "screen") => {
            let verdict = if n.is_multiple_of(5) {
                "reject"
            } else {
                "accept"
            };
            (200, json!({"verdict": verdict}))
        }
        ("payment", "charge") => (201, json!({"payment_id": format!("p-{subject}")})),
        ("shipping", "schedule") => (201, json!({"tracking_number": format!("t-{subject}")})),
        ("crm", "create-account") => (201, json!({"crm_id": format!("crm-{subject}")})),
        ("workspaces", "provision") => (201, json!({"workspace_id": format!("ws-{subject}")})),
        _ => (200, json!({"ok": true})),
    }
}

async fn rest(
    State(ledger): State<Ledger>,
    Path((service, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return respond((
            400,
            json!({"error": "body is not JSON"}).to_string(),
            "application/json".into(),
        ));
    };
    let subject = SUBJECT_FIELDS
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned();
    let s = subject.clone();
    let (svc, o) = (service.clone(), op.clone());
    respond(handle(
        &ledger,
        &service,
        &op,
        key(&headers),
        subject,
        move |_| {
            let (status, v) = rest_outcome(&svc, &o, &s);
            (status, v.to_string())
        },
        "application/json",
    ))
}

fn envelope(inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
    )
}

fn fault(code: &str, text: &str) -> String {
    envelope(&format!(
        "<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{text}</faultstring></soap:Fault>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The billing service's WSDL (`crates/demo/src/billing.wsdl`).
pub const BILLING_WSDL: &str = include_str!("billing.wsdl");

/// `GET /billing/soap?wsdl`: the WSDL, with the address the request came to.
async fn wsdl(headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    if !query.is_some_and(|q| q.eq_ignore_ascii_case("wsdl")) {
        return respond((
            400,
            "GET /billing/soap?wsdl for the WSDL; calls are POSTs".into(),
            "text/plain".into(),
        ));
    }
    // Only a plain host[:port] is reflected into the document.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    respond((
        200,
        BILLING_WSDL.replace("{address}", &format!("http://{host}")),
        "text/xml; charset=utf-8".into(),
    ))
}

async fn soap(State(ledger): State<Ledger>, headers: HeaderMap, body: Bytes) -> Response {
    const XML: &str = "text/xml; charset=utf-8";
    let text = String::from_utf8_lossy(&body);
    let parsed = roxmltree::Document::parse(&text).ok().and_then(|doc| {
        let op = doc
            .descendants()
            .find(|n| n.tag_name().name() == "Body")?
            .children()
            .find(roxmltree::Node::is_element)?;
        let field = |name: &str| {
            op.descendants()
                .find(|n| n.tag_name().name() == name)
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        let subject = field("CustomerId").or_else(|| field("AccountId"))?;
        Some((op.tag_name().name().to_owned(), subject))
    });
    let Some((op, subject)) = parsed else {
        return respond((
            500,
            fault("Client", "not a SOAP 1.1 OpenAccount/CloseAccount request"),
            XML.into(),
        ));
    };
    let action = headers
        .get("soapaction")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    ledger.with(|i| i.soap_actions.push((op.clone(), action)));
    let s = subject.clone();
    let o = op.clone();
    respond(handle(
        &ledger,
        "billing",
        &op,
        key(&headers),
        subject,
        move |i| match o.as_str() {
            "OpenAccount" => {
                let attempts = i.soap_attempts.entry(s.clone()).or_default();
                *attempts += 1;
                if number(&s) % 4 == 3 && *attempts == 1 {
                    (500, fault("Server", "billing database busy, try again"))
                } else {
                    (
                        200,
                        envelope(&format!(
                            "<OpenAccountResponse><AccountId>b-{}</AccountId></OpenAccountResponse>",
                            escape(&s)
                        )),
                    )
                }
            }
            "CloseAccount" => (
                200,
                envelope("<CloseAccountResponse><Closed>true</Closed></CloseAccountResponse>"),
            ),
            other => (
                500,
                fault("Client", &format!("unknown operation {}", escape(other))),
            ),
        },
        XML,
    ))
}

/// Sample events (JSON matching schemas/examples, ready for
/// `sagaflow_codec::json::json_to_avro`) for the worked sagas; `at` is the
/// event time in epoch milliseconds.
pub mod samples {
    use serde_json::{Value, json};

    /// `OrderPlaced` (orders.events) for one line of `total_cents`.
    pub fn order_placed(order_id: &str, customer_id: &str, total_cents: i64, at: i64) -> Value {
        json!({
            "order_id": order_id, "customer_id": customer_id,
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": total_cents}],
            "total_cents": total_cents, "currency": "EUR",
            "shipping_address": {"line1": "1 Main St", "line2": null, "postal_code": "10115", "city": "Berlin", "country": "DE"},
            "placed_at": at,
        })
    }

    /// `BookingRequested` (travel.events): flight, hotel and car.
    pub fn booking_requested(booking_id: &str, customer_id: &str, at: i64) -> Value {
        json!({
            "booking_id": booking_id, "customer_id": customer_id,
            "flight": {"from_airport": "AMS", "to_airport": "LIS", "departure_date": 20_800,
                       "return_date": 20_807, "passengers": 2, "cabin": "ECONOMY"},
            "hotel": {"city": "Lisbon", "check_in": 20_800, "check_out": 20_807, "rooms": 1},
            "car": {"pickup_location": "LIS", "pickup_at": at + 86_400_000,
                    "dropoff_at": at + 7 * 86_400_000, "category": "CDMR"},
            "budget_cents": 250_000, "currency": "EUR", "requested_at": at,
        })
    }

    /// `CustomerSignedUp` (customers.events).
    pub fn customer_signed_up(customer_id: &str, email: &str, at: i64) -> Value {
        json!({
            "customer_id": customer_id, "email": email, "name": "Demo Customer",
            "plan": "PRO", "locale": "en-GB", "signed_up_at": at,
        })
    }

    /// `EmailVerified` (customers.events).
    pub fn email_verified(customer_id: &str, email: &str, at: i64) -> Value {
        json!({"customer_id": customer_id, "email": email, "verified_at": at})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, key: Option<&str>, body: String, ct: &str) -> (u16, String) {
        let mut r = reqwest::Client::new()
            .post(url)
            .header("content-type", ct)
            .body(body);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn healthz_answers_ok_and_records_nothing() {
        let d = DemoServices::start().await.unwrap();
        let r = reqwest::get(format!("{}/healthz", d.url())).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        assert!(d.ledger().requests().is_empty());
    }

    #[tokio::test]
    async fn rest_requires_a_key_and_replays_the_first_answer_without_new_effect() {
        let d = DemoServices::start().await.unwrap();
        let url = format!("{}/hotels/reserve", d.url());
        let body = json!({"booking_id": "b-1"}).to_string();
        let (s, _) = post(&url, None, body.clone(), "application/json").await;
        assert_eq!(s, 400);
        let first = post(&url, Some("k1"), body.clone(), "application/json").await;
        assert_eq!(first.0, 201);
        assert!(first.1.contains("r-b-1"), "{}", first.1);
        assert_eq!(
            post(&url, Some("k1"), body, "application/json").await,
            first
        );
        assert_eq!(d.ledger().effects("hotels", "reserve", "b-1"), 1);
        let full = json!({"booking_id": "b-5"}).to_string();
        assert_eq!(
            post(&url, Some("k2"), full, "application/json").await.0,
            409
        );
        assert_eq!(d.ledger().effects("hotels", "reserve", "b-5"), 0);
        assert_eq!(d.ledger().requests().len(), 4);
    }

    #[tokio::test]
    async fn billing_serves_its_wsdl_with_its_own_address() {
        let d = DemoServices::start().await.unwrap();
        let resp = reqwest::get(format!("{}/billing/soap?wsdl", d.url()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(&format!("location=\"{}/billing/soap\"", d.url())),
            "{text}"
        );
        roxmltree::Document::parse(&text).unwrap();
        let resp = reqwest::get(format!("{}/billing/soap", d.url()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn graphql_refusals_are_errors_inside_a_200() {
        let d = DemoServices::start().await.unwrap();
        let url = format!("{}/workspaces/graphql", d.url());
        let gql = |id: &str| {
            json!({"query": "mutation($c: ID!) { provisionWorkspace(customerId: $c, billingAccount: \"b\") { id } }",
                   "variables": {"c": id}})
            .to_string()
        };
        let (s, body) = post(&url, Some("k1"), gql("cust-6"), "application/json").await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"], Value::Null, "{body}");
        assert_eq!(
            v["errors"][0]["extensions"]["code"], "QUOTA_EXCEEDED",
            "{body}"
        );
        let (_, body) = post(&url, None, gql("cust-1"), "application/json").await;
        assert!(body.contains("IDEMPOTENCY_KEY_REQUIRED"), "{body}");
        let first = post(&url, Some("k2"), gql("cust-1"), "application/json").await;
        assert!(first.1.contains("ws-cust-1"), "{}", first.1);
        assert_eq!(
            post(&url, Some("k2"), gql("cust-1"), "application/json").await,
            first
        );
        assert_eq!(d.ledger().effects("workspaces", "provision", "cust-1"), 1);
        assert_eq!(d.ledger().effects("workspaces", "provision", "cust-6"), 0);
        let (s, _) = post(&url, Some("k3"), "nope".into(), "application/json").await;
        assert_eq!(s, 400);
        assert!(graphql::sdl().contains("provisionWorkspace"));
    }

    fn open(customer: &str) -> String {
        envelope(&format!(
            "<OpenAccount xmlns=\"urn:billing\"><CustomerId>{customer}</CustomerId></OpenAccount>"
        ))
    }

    #[tokio::test]
    async fn soap_billing_faults_once_for_some_customers_then_opens_once() {
        let d = DemoServices::start().await.unwrap();
        let url = format!("{}/billing/soap", d.url());
        let xml = "text/xml; charset=utf-8";
        let (s, body) = post(&url, Some("k"), open("cust-3"), xml).await;
        assert_eq!(s, 500);
        assert!(body.contains("soap:Server"), "{body}");
        let (s, body) = post(&url, Some("k"), open("cust-3"), xml).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("<AccountId>b-cust-3</AccountId>"), "{body}");
        assert_eq!(post(&url, Some("k"), open("cust-3"), xml).await.1, body);
        assert_eq!(d.ledger().effects("billing", "OpenAccount", "cust-3"), 1);
        let (s, _) = post(&url, Some("k2"), open("cust-4"), xml).await;
        assert_eq!(s, 200);
        let (s, body) = post(&url, Some("k3"), "<nope".into(), xml).await;
        assert_eq!(s, 500);
        assert!(body.contains("soap:Client"), "{body}");
        // Requests naming an operation, with their SOAPAction (none here).
        assert_eq!(
            d.ledger().soap_actions(),
            vec![("OpenAccount".to_owned(), None); 4]
        );
    }
}
