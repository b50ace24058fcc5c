//! `/v1/accounts/{account}/entities`: the latest state of every catalog entity the log
//! has seen (assets, categories, content panels…), for mirroring the catalog (seed 001).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::events::EventOut;
use crate::store::{EntityState, PageSize};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntitiesQuery {
    /// The entity type: `asset`, `category`, `contentPanel` (see `GET /v1/catalog`).
    #[serde(rename = "type")]
    pub entity_type: Option<String>,
    /// Only ids after this one (for paging: the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000); fewer when their events' documents
    /// reach `--max-page-bytes` first, and then `next` is still given.
    pub limit: Option<u32>,
}

/// An entity's latest state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityOut {
    #[serde(rename = "type")]
    pub entity_type: String,
    pub id: String,
    /// Its latest event deleted it.
    pub deleted: bool,
    /// The log position of that event: a mirror that keeps, per entity, the event with
    /// the highest sequence ends at this state.
    pub sequence: i64,
    /// The event that set this state.
    pub event: EventOut,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntityPage {
    pub entities: Vec<EntityOut>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
}

impl EntityOut {
    fn new(state: EntityState) -> Result<EntityOut, ApiError> {
        Ok(EntityOut {
            entity_type: state.entity_type,
            id: state.id,
            deleted: state.deleted,
            sequence: state.event.seq,
            event: EventOut::new(state.event)?,
        })
    }
}

/// Refuses a type the catalog does not keep entities of.
fn check_type(state: &AppState, entity_type: &str) -> Result<(), ApiError> {
    let known = state.catalog.entity_types();
    if known.contains(&entity_type) {
        return Ok(());
    }
    Err(ApiError::Unprocessable {
        code: "unknown_entity_type",
        message: format!(
            "{entity_type:?} is not an entity type of the catalog (one of: {})",
            known.join(", ")
        ),
        index: None,
        field: Some("type".into()),
    })
}

/// The entities of one type, by id, with the event that set each one's state.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/entities", tag = "entities",
    params(("account" = String, Path), EntitiesQuery),
    responses(
        (status = 200, body = EntityPage),
        (status = 422, description = "missing or unknown type", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(account): Path<String>,
    Query(params): Query<EntitiesQuery>,
) -> Result<Json<EntityPage>, ApiError> {
    caller.check_account(&account)?;
    let Some(entity_type) = params.entity_type else {
        return Err(ApiError::Unprocessable {
            code: "missing_entity_type",
            message: format!(
                "give the entity type: ?type= one of {}",
                state.catalog.entity_types().join(", ")
            ),
            index: None,
            field: Some("type".into()),
        });
    };
    check_type(&state, &entity_type)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let after = params.after.unwrap_or_default();
    let page = PageSize {
        rows: limit,
        bytes: state.limits.max_page_bytes,
    };
    let states = state
        .store
        .db()
        .list_entities(&account, &entity_type, &after, page)
        .await?;
    let bytes = states.iter().map(|s| s.event.body.bytes().len()).sum();
    let next = page
        .is_full(states.len(), bytes)
        .then(|| states.last().map(|s| s.id.clone()))
        .flatten();
    let entities = states
        .into_iter()
        .map(EntityOut::new)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(EntityPage { entities, next }))
}

/// One entity's latest state.
#[utoipa::path(
    get, path = "/v1/accounts/{account}/entities/{type}/{id}", tag = "entities",
    params(("account" = String, Path), ("type" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = EntityOut),
        (status = 404, description = "no event of this entity in the log", body = ErrorBody),
        (status = 422, description = "unknown type", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((account, entity_type, id)): Path<(String, String, String)>,
) -> Result<Json<EntityOut>, ApiError> {
    caller.check_account(&account)?;
    check_type(&state, &entity_type)?;
    let found = state
        .store
        .db()
        .get_entity(&account, &entity_type, &id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no {entity_type} {id:?} in account {account:?}"))
        })?;
    Ok(Json(EntityOut::new(found)?))
}

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/accounts/{account}/entities", axum::routing::get(list))
        .route(
            "/v1/accounts/{account}/entities/{type}/{id}",
            axum::routing::get(get),
        )
}
