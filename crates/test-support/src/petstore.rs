//! A small Swagger Petstore: the part of the OpenAPI 3.0 document the CLI
//! tests ship (`crates/cli/tests/data/petstore-openapi3.yaml`) that the
//! scaffolding tests call, served under `/api/v3` on a [`FakeBackend`], so
//! every request is recorded (method, path, headers, body) for the test to
//! check.
//!
//! * `POST /api/v3/pet` adds a pet when the body has a string `name` and a
//!   `photoUrls` array (else 422 `validation exception`), gives it the next
//!   id (from 1) and status `available`, and answers it (200). A repeated
//!   `Idempotency-Key` gets the first answer and adds nothing, as a careful
//!   real API does.
//! * `GET /api/v3/pet/{petId}` wants the `api_key` header [`API_KEY`]
//!   (else 401) and answers the pet (200) or 404 `Pet not found`.
//! * `DELETE /api/v3/pet/{petId}` wants the same `api_key` and removes the
//!   pet: 200 whether it was there or not, as the public petstore does, so
//!   a repeated delete succeeds; 400 `Invalid pet value` for an id that is
//!   not a number. The 200 carries the text `Pet deleted`, as the public
//!   server sends it, although the document declares no content (the
//!   scaffolded operation discards the body: docs/adapters.md).
//!
//! Anything else is a 404 (recorded too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use crate::backend::{FakeBackend, Reply, Seen};

/// The API key the petstore accepts (the one the public demo documents).
pub const API_KEY: &str = "special-key";

#[derive(Default)]
struct Pets {
    /// By id - 1; `None` once deleted.
    pets: Vec<Option<Value>>,
    /// Idempotency-Key of an add -> the pet it added.
    added: HashMap<String, Value>,
}

type Shared = Arc<Mutex<Pets>>;

fn with<T>(pets: &Shared, f: impl FnOnce(&mut Pets) -> T) -> T {
    f(&mut pets.lock().unwrap_or_else(PoisonError::into_inner))
}

/// A running petstore; it stops when dropped.
pub struct Petstore {
    backend: FakeBackend,
    pets: Shared,
}

impl Petstore {
    /// Serves the petstore on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let pets = Shared::default();
        let (add, get, delete) = (Arc::clone(&pets), Arc::clone(&pets), Arc::clone(&pets));
        let backend = FakeBackend::builder()
            .route("POST", "/api/v3/pet", move |_, req| add_pet(&add, req))
            .route("GET", "/api/v3/pet/{petId}", move |_, req| {
                if req.header("api_key").as_deref() != Some(API_KEY) {
                    return Reply::text(401, "api_key required");
                }
                match with(&get, |p| pet(p, req.param("petId")).cloned()) {
                    Some(pet) => Reply::json(200, pet),
                    None => Reply::text(404, "Pet not found"),
                }
            })
            .route("DELETE", "/api/v3/pet/{petId}", move |_, req| {
                if req.header("api_key").as_deref() != Some(API_KEY) {
                    return Reply::text(401, "api_key required");
                }
                let Ok(id) = req.param("petId").parse::<usize>() else {
                    return Reply::text(400, "Invalid pet value");
                };
                with(&delete, |p| {
                    if let Some(pet) = id.checked_sub(1).and_then(|i| p.pets.get_mut(i)) {
                        pet.take();
                    }
                });
                // As the public petstore answers, though the document
                // declares no content.
                Reply::text(200, "Pet deleted")
            })
            .start()
            .await;
        Self { backend, pets }
    }

    /// `http://127.0.0.1:<port>`; the API is under `/api/v3`.
    pub fn url(&self) -> String {
        self.backend.url()
    }

    /// The base URL of the API: `http://127.0.0.1:<port>/api/v3`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.url())
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.backend.seen()
    }

    /// The pets it has now (deleted ones left out), by id.
    pub fn pets(&self) -> Vec<Value> {
        with(&self.pets, |p| p.pets.iter().flatten().cloned().collect())
    }
}

fn index(id: &str) -> Option<usize> {
    id.parse::<usize>().ok()?.checked_sub(1)
}

fn pet<'a>(p: &'a Pets, id: &str) -> Option<&'a Value> {
    p.pets.get(index(id)?)?.as_ref()
}

fn add_pet(pets: &Shared, req: &Seen) -> Reply {
    let Ok(mut pet) = serde_json::from_slice::<Value>(&req.body) else {
        return Reply::text(400, "body is not JSON");
    };
    if pet.get("name").and_then(Value::as_str).is_none() || !pet["photoUrls"].is_array() {
        return Reply::text(422, "validation exception");
    }
    let key = req.header("idempotency-key");
    with(pets, |p| {
        if let Some(first) = key.as_ref().and_then(|k| p.added.get(k)) {
            return Reply::json(200, first.clone());
        }
        pet["id"] = json!(p.pets.len() + 1);
        pet["status"] = json!("available");
        p.pets.push(Some(pet.clone()));
        if let Some(k) = key {
            p.added.insert(k, pet.clone());
        }
        Reply::json(200, pet)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adds_finds_and_deletes_pets_as_declared() {
        let store = Petstore::start().await;
        crate::install_crypto_provider();
        let http = reqwest::Client::new();
        let api = store.api_url();
        let add = |key: &'static str, body: Value| {
            http.post(format!("{api}/pet"))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
        };
        let r = add("k1", json!({"name": "Rex", "photoUrls": []}))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let rex: Value = r.json().await.unwrap();
        assert_eq!(rex["id"], 1);
        assert_eq!(rex["status"], "available");
        // The same key again: the first answer, no second pet.
        let again: Value = add("k1", json!({"name": "Rex", "photoUrls": []}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again, rex);
        let r = add("k2", json!({"name": "Nameless"})).await.unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(store.pets(), vec![rex.clone()]);

        let get = |id: &str, key: Option<&str>| {
            let mut r = http.get(format!("{api}/pet/{id}"));
            if let Some(k) = key {
                r = r.header("api_key", k);
            }
            r.send()
        };
        assert_eq!(get("1", None).await.unwrap().status(), 401);
        let found = get("1", Some(API_KEY)).await.unwrap();
        assert_eq!(found.status(), 200);
        assert_eq!(found.json::<Value>().await.unwrap(), rex);
        assert_eq!(get("7", Some(API_KEY)).await.unwrap().status(), 404);

        let delete = |id: &str| {
            http.delete(format!("{api}/pet/{id}"))
                .header("api_key", API_KEY)
                .send()
        };
        let deleted = delete("1").await.unwrap();
        assert_eq!(deleted.status(), 200);
        assert_eq!(deleted.text().await.unwrap(), "Pet deleted");
        assert_eq!(delete("1").await.unwrap().status(), 200, "again");
        assert_eq!(delete("x").await.unwrap().status(), 400);
        assert_eq!(get("1", Some(API_KEY)).await.unwrap().status(), 404);
        assert!(store.pets().is_empty());
        assert_eq!(store.seen().len(), 10);
        assert_eq!(store.seen()[0].json()["name"], "Rex");
    }
}
