//! The workspaces service's GraphQL API (`POST /workspaces/graphql`),
//! served with async-graphql over the same ledger as the REST services.
//!
//! ```graphql
//! type Query    { workspace(id: ID!): Workspace }
//! type Mutation {
//!   provisionWorkspace(customerId: ID!, billingAccount: String!): Workspace!
//!   deprovisionWorkspace(workspaceId: ID!): Boolean!
//! }
//! type Workspace { id: ID!  customerId: ID!  billingAccount: String  usage: Usage }
//! type Usage     { seats: Int! }
//! ```
//!
//! Mutations need an `Idempotency-Key` header, as every demo API does, and
//! are recorded as `workspaces provision` / `deprovision` in the ledger.
//! Refusals are GraphQL errors inside an HTTP 200, with `extensions.code`:
//!
//! | when | `extensions.code` | `data` |
//! |------|-------------------|--------|
//! | provision when `n % 7 == 6` | `QUOTA_EXCEEDED` | `null` |
//! | a mutation without `Idempotency-Key` | `IDEMPOTENCY_KEY_REQUIRED` | `null` |
//! | `workspace(id)` of a workspace never provisioned | `NOT_FOUND` | `{"workspace": null}` |
//! | `usage` of a workspace whose `n` is odd (metering offline) | `USAGE_UNAVAILABLE` | partial: `usage: null` |

use async_graphql::{
    Context, EmptySubscription, Error, ErrorExtensions, ID, Object, Schema, SimpleObject,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::{Ledger, handle, key, number, respond, rest_outcome};

/// The schema type served on `/workspaces/graphql`.
pub type WorkspacesSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Builds the schema over `ledger`.
pub fn schema(ledger: Ledger) -> WorkspacesSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .data(ledger)
        .limit_depth(8)
        .limit_complexity(64)
        .finish()
}

/// The SDL of the schema (for docs and clients).
pub fn sdl() -> String {
    schema(Ledger::default()).sdl()
}

/// The request's `Idempotency-Key`, put into the execution's data.
struct CallKey(Option<String>);

fn coded(message: &str, code: &'static str) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// A workspace as the API shows it.
pub struct Workspace {
    id: String,
    customer_id: String,
    billing_account: Option<String>,
}

#[derive(SimpleObject)]
struct Usage {
    seats: i32,
}

#[Object]
impl Workspace {
    async fn id(&self) -> ID {
        ID(self.id.clone())
    }

    async fn customer_id(&self) -> ID {
        ID(self.customer_id.clone())
    }

    async fn billing_account(&self) -> Option<&str> {
        self.billing_account.as_deref()
    }

    /// Seats in use; the metering system is offline for odd `n`.
    async fn usage(&self) -> async_graphql::Result<Option<Usage>> {
        if number(&self.customer_id) % 2 == 1 {
            return Err(coded(
                "metering is offline, usage unavailable",
                "USAGE_UNAVAILABLE",
            ));
        }
        Ok(Some(Usage { seats: 5 }))
    }
}

/// Queries.
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// A provisioned workspace (`ws-<customer id>`).
    async fn workspace(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<Workspace>> {
        let ledger = ctx.data::<Ledger>()?;
        let customer = id.0.strip_prefix("ws-").unwrap_or_default();
        let live = ledger.effects("workspaces", "provision", customer)
            > ledger.effects("workspaces", "deprovision", &id.0);
        if customer.is_empty() || !live {
            return Err(coded("no such workspace", "NOT_FOUND"));
        }
        Ok(Some(Workspace {
            id: id.0.clone(),
            customer_id: customer.to_owned(),
            billing_account: None,
        }))
    }
}

/// Mutations.
pub struct MutationRoot;

fn call(ctx: &Context<'_>, op: &str, subject: &str) -> async_graphql::Result<(u16, Value)> {
    let ledger = ctx.data::<Ledger>()?;
    let key = ctx.data::<CallKey>()?.0.clone();
    let (s, o) = (subject.to_owned(), op.to_owned());
    let (status, body, _) = handle(
        ledger,
        "workspaces",
        op,
        key,
        subject.to_owned(),
        move |_| {
            let (status, v) = rest_outcome("workspaces", &o, &s);
            (status, v.to_string())
        },
        "application/json",
    );
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    match status {
        400 => Err(coded(
            "Idempotency-Key header required",
            "IDEMPOTENCY_KEY_REQUIRED",
        )),
        409 => Err(coded(
            body["error"].as_str().unwrap_or("conflict"),
            "QUOTA_EXCEEDED",
        )),
        _ => Ok((status, body)),
    }
}

#[Object]
impl MutationRoot {
    /// Provisions the workspace of a customer (`n % 7 == 6`: quota exceeded).
    async fn provision_workspace(
        &self,
        ctx: &Context<'_>,
        customer_id: ID,
        billing_account: String,
    ) -> async_graphql::Result<Workspace> {
        let (_, body) = call(ctx, "provision", &customer_id.0)?;
        Ok(Workspace {
            id: body["workspace_id"].as_str().unwrap_or_default().to_owned(),
            customer_id: customer_id.0,
            billing_account: Some(billing_account),
        })
    }

    /// Removes a workspace (the compensation of `provisionWorkspace`).
    async fn deprovision_workspace(
        &self,
        ctx: &Context<'_>,
        workspace_id: ID,
    ) -> async_graphql::Result<bool> {
        call(ctx, "deprovision", &workspace_id.0)?;
        Ok(true)
    }
}

/// `POST /workspaces/graphql`: a GraphQL-over-HTTP JSON request.
pub(crate) async fn serve(
    State(ledger): State<Ledger>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<async_graphql::Request>(&body) else {
        return respond((
            400,
            json!({"errors": [{"message": "body is not a GraphQL request"}]}).to_string(),
            "application/json".into(),
        ));
    };
    let schema = schema(ledger);
    let response = schema.execute(request.data(CallKey(key(&headers)))).await;
    let body = serde_json::to_string(&response).unwrap_or_else(|_| "{}".into());
    respond((200, body, "application/graphql-response+json".into()))
}
