//! The admin API's token calls: issue, list, revoke (one or by filter), rotate, and
//! client credentials.

use super::*;

/// Issues an access token. The answer holds it, once.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = IssueRequest,
    responses(
        (status = 201, description = "Issued: `token` is shown this once", body = Issued),
        (status = 400, body = ApiError), (status = 404, description = "No such service", body = ApiError),
    ))]
pub(super) async fn issue_token(admin: Admin, State(gw): State<Gw>, body: JsonBody) -> Response {
    let Ok(req) = body.object::<IssueRequest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"service\": …, \"principal\": …, \"ttl\": \"15m\", \"methods\": […], \"paths\": […]}",
        );
    };
    match gw.tokens.issue(&req, &admin.token_id).await {
        Ok((token, record)) => {
            let info = token_info(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            (StatusCode::CREATED, Json(Issued { token, info })).into_response()
        }
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "could not store a new token");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: nothing was changed; see the gateway log and retry",
            )
        }
        Err(IssueError::UnknownService(_)) => error(
            StatusCode::NOT_FOUND,
            &IssueError::UnknownService(req.service).to_string(),
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only tokens not used (nor issued) within this long, like `30d`.
    unused: Option<String>,
}

/// Issues a client credential, which gets tokens by itself. The answer holds it, once.
#[utoipa::path(post, path = "/v1/credentials", tag = "tokens", request_body = CredentialRequest,
    responses(
        (status = 201, description = "Issued: `token` is shown this once", body = Issued),
        (status = 400, body = ApiError),
    ))]
pub(super) async fn issue_credential(
    admin: Admin,
    State(gw): State<Gw>,
    body: JsonBody,
) -> Response {
    let Ok(req) = body.object::<CredentialRequest>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"principal\": …, \"services\": […], \"cidrs\": […], \"max_age\": \"90d\"}",
        );
    };
    match gw.tokens.issue_credential(&req, &admin.token_id).await {
        Ok((token, record)) => {
            let info = token_info(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            (StatusCode::CREATED, Json(Issued { token, info })).into_response()
        }
        Err(IssueError::Store(e)) => {
            tracing::error!(error = %e, "could not store a new credential");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: nothing was changed; see the gateway log and retry",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Lists the tokens, never their secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(ListParams),
    responses((status = 200, body = Vec<TokenInfo>), (status = 400, body = ApiError)))]
pub(super) async fn list_tokens(
    _: Admin,
    State(gw): State<Gw>,
    Params(p): Params<ListParams>,
) -> Response {
    let now = gw.now();
    let unused_since = match p.unused.as_deref().map(keyway_core::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(now - keyway_core::clock::duration_ms(d)),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("unused: {e}")),
    };
    let records = match gw.store.tokens().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not list tokens");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: see the gateway log and retry",
            );
        }
    };
    let tokens: Vec<TokenInfo> = records
        .iter()
        .filter_map(|r| {
            let info = live_info(&gw, r, now);
            let last = info.1.unwrap_or(r.created_at);
            unused_since
                .is_none_or(|since| last < since)
                .then_some(info.0)
        })
        .collect();
    Json(tokens).into_response()
}

/// A token as listed, with the index's fresher last use and revocation; and the last
/// use in milliseconds.
pub(super) fn live_info(
    gw: &Control,
    r: &TokenRecord,
    now: UnixMillis,
) -> (TokenInfo, Option<UnixMillis>) {
    let live = gw.tokens.token(&r.id);
    let last = live.as_ref().and_then(|e| e.last_used()).or(r.last_used_at);
    let revoked = live.as_ref().and_then(|e| e.revoked_at()).or(r.revoked_at);
    (token_info(r, revoked, last, now), last)
}

/// Which tokens to revoke: every one given must match; at least one is.
#[derive(Deserialize, ToSchema)]
pub(super) struct RevokeMatching {
    principal: Option<String>,
    service: Option<String>,
    /// RFC 3339, like `2026-11-28T10:00:00Z`.
    issued_before: Option<String>,
}

/// Revokes the access tokens, client credentials and sessions that match (admin
/// and enrollment tokens never do); their live streams end.
#[utoipa::path(post, path = "/v1/tokens/revoke", tag = "tokens", request_body = RevokeMatching,
    responses((status = 200, description = "The tokens revoked", body = Vec<TokenInfo>), (status = 400, body = ApiError)))]
pub(super) async fn revoke_matching(
    admin: Admin,
    State(gw): State<Gw>,
    body: JsonBody,
) -> Response {
    let Ok(b) = body.object::<RevokeMatching>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"principal\": …, \"service\": …, \"issued_before\": \"2026-11-28T10:00:00Z\"}",
        );
    };
    let issued_before = match b
        .issued_before
        .as_deref()
        .map(keyway_core::clock::parse_time)
    {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "issued_before is not an RFC 3339 time like 2026-11-28T10:00:00Z",
            )
        }
    };
    let filter = crate::tokens::RevokeFilter {
        principal: b.principal,
        service: b.service,
        issued_before,
    };
    if filter.principal.is_none() && filter.service.is_none() && filter.issued_before.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "name at least one of principal, service, issued_before",
        );
    }
    match gw.tokens.revoke_where(&filter, &admin.token_id).await {
        Ok(records) => {
            let now = gw.now();
            let infos: Vec<TokenInfo> = records.iter().map(|r| live_info(&gw, r, now).0).collect();
            Json(infos).into_response()
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable: the tokens are revoked in the running gateway, but the store failed to record it (they would come back after a restart); see the gateway log and run again",
        ),
    }
}

/// How long the old token keeps working beside its successor.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Rotate {
    /// Like `5m` (the default), or `0`.
    overlap: Option<String>,
}

/// A successor token, and when its predecessor stops.
#[derive(Serialize, ToSchema)]
pub(super) struct Rotated {
    /// Shown this once.
    token: String,
    predecessor_expires_at: String,
    info: TokenInfo,
}

/// Issues a successor to a token; the old one lives `overlap` more.
#[utoipa::path(post, path = "/v1/tokens/{id}/rotate", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    request_body(content = Option<Rotate>, description = "Optional"),
    responses(
        (status = 201, body = Rotated), (status = 400, body = ApiError),
        (status = 404, description = "No token with that id", body = ApiError),
    ))]
pub(super) async fn rotate_token(
    admin: Admin,
    State(gw): State<Gw>,
    Segments(id): Segments<String>,
    body: JsonBody,
) -> Response {
    let overlap = match body.or_default::<Rotate>().map(|b| b.overlap) {
        Ok(None) => Duration::from_secs(300),
        Ok(Some(o)) if o.trim() == "0" || o.trim() == "0s" => Duration::ZERO,
        Ok(Some(o)) => match keyway_core::units::parse_duration(&o) {
            Ok(d) => d,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("overlap: {e}")),
        },
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be JSON: {\"overlap\": \"5m\"}",
            )
        }
    };
    match gw.tokens.rotate(&id, overlap, &admin.token_id).await {
        Ok((token, record, until)) => {
            let info = token_info(&record, None, None, gw.now());
            let token = secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();
            let body = Rotated {
                token,
                predecessor_expires_at: format_ms(until),
                info,
            };
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(RotateError::Unknown) => error(StatusCode::NOT_FOUND, "no token with that id"),
        Err(RotateError::Store(e)) => {
            tracing::error!(error = %e, "could not rotate a token");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable: nothing was changed; see the gateway log and retry",
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Whether revoking the admin token that makes the call is meant.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeOne {
    /// The token to revoke is the one this call is made with (a leaked one, say):
    /// the caller loses the API until it has another admin token, or `keyway admin
    /// reset` writes one.
    #[serde(default)]
    own_token: bool,
}

/// Revokes a token; its live streams end. The admin token the call is made with
/// only when the body says `own_token`: otherwise a client could lock itself out.
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens",
    params(("id" = String, Path, description = "The token's id")),
    request_body(content = Option<RevokeOne>, description = "Optional"),
    responses(
        (status = 200, body = TokenInfo), (status = 400, body = ApiError),
        (status = 404, description = "No token with that id", body = ApiError),
        (status = 409, description = "The admin token making the call, without `own_token`", body = ApiError),
    ))]
pub(super) async fn revoke_token(
    admin: Admin,
    State(gw): State<Gw>,
    Segments(id): Segments<String>,
    body: JsonBody,
) -> Response {
    let Ok(asked) = body.or_default::<RevokeOne>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be JSON: {\"own_token\": true} or nothing",
        );
    };
    if id == admin.token_id && !asked.own_token {
        return error(
            StatusCode::CONFLICT,
            "that is the admin token this call is made with: send {\"own_token\": true} \
             (keyway token revoke --own-token) to revoke it anyway, then use another admin token \
             or stop the gateway and run `keyway admin reset`",
        );
    }
    match gw.tokens.revoke(&id, &admin.token_id, None).await {
        Ok(Some(record)) => Json(live_info(&gw, &record, gw.now()).0).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no token with that id"),
        // Logged by `revoke`, which also cut the token's use in this process.
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token is revoked in the running gateway, but the store (store_unavailable) failed to record it \
             (it would come back after a restart); see the gateway log and revoke again",
        ),
    }
}
