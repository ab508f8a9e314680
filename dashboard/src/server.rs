//! Routes, sessions, CSRF and response headers.
//!
//! Every page is a GET that changes nothing. The only POSTs are `/login` and
//! `/logout`, and both require an `Origin` header naming this server (the
//! session cookie is `SameSite=Strict` besides). Pages carry a Content
//! Security Policy that allows no script and no external resource at all.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::Utc;
use kube::Client;
use serde::Deserialize;
use tracing::{info, warn};

use crate::Error;
use crate::auth::{Authorizer, Identity, Sessions, review_token};
use crate::data::SnapshotCache;
use crate::html::{Frame, escape, page, time};
use crate::views::{Context, View};

/// The session cookie's name (browser and this server only).
pub const SESSION_COOKIE: &str = "policybind_session";
/// Largest request body accepted (a login form with a long OIDC token fits).
pub const MAX_BODY_BYTES: usize = 32 * 1024;
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the dashboard runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// PolicyBind's namespace, where the audit keyring is published.
    pub system_namespace: String,
    /// How old the shared snapshot may get before a page reloads it.
    pub refresh: Duration,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Live sessions kept at most (the oldest goes first).
    pub max_sessions: usize,
    /// Mark the cookie `Secure` (set when a TLS proxy serves the dashboard).
    pub secure_cookie: bool,
}

/// What the handlers share.
pub struct State {
    client: Client,
    options: Options,
    sessions: Sessions,
    authorizer: Authorizer,
    snapshots: SnapshotCache,
}

impl State {
    pub fn new(client: Client, options: Options) -> Arc<Self> {
        Arc::new(State {
            sessions: Sessions::new(options.session_ttl, options.max_sessions),
            authorizer: Authorizer::new(client.clone()),
            snapshots: SnapshotCache::new(
                client.clone(),
                options.system_namespace.clone(),
                options.refresh,
            ),
            client,
            options,
        })
    }
}

type Shared = Arc<State>;

/// Every route.
pub fn router(state: Shared) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(|| async { Redirect::to("/decisions") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout));
    for view in View::ALL {
        router = router.route(
            view.path(),
            get(move |state: Extract<Shared>, headers: HeaderMap| show(state, headers, view)),
        );
    }
    router
        .fallback(|| async {
            html(
                StatusCode::NOT_FOUND,
                message_page("Not found", "No such page."),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serve on `listen` until `shutdown` completes.
pub async fn serve(
    listen: SocketAddr,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            address: listen.to_string(),
            source,
        })?;
    info!(%listen, "dashboard listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // `same-origin`, not `no-referrer`: with `no-referrer` Chromium sends
        // `Origin: null` on the login form, which the CSRF check must refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn message_page(title: &str, text: &str) -> String {
    page(
        &Frame {
            title,
            path: "",
            user: None,
            footer: "",
        },
        &format!(
            "<div class=\"login card\"><h1>{}</h1><p>{}</p><p><a href=\"/login\">Sign in</a></p></div>",
            escape(title),
            escape(text)
        ),
    )
}

/// The login form, with an error line when a login failed.
fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"bad\" id=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        &Frame {
            title: "Sign in",
            path: "/login",
            user: None,
            footer: "Read-only. Your token is checked with the API server (TokenReview) and not kept.",
        },
        &format!(
            "<div class=\"login card\"><h1>Sign in</h1>{error}\
             <form method=\"post\" action=\"/login\">\
             <p><label for=\"token\">Kubernetes bearer token</label></p>\
             <textarea id=\"token\" name=\"token\" autocomplete=\"off\" spellcheck=\"false\" required></textarea>\
             <p><button type=\"submit\">Sign in</button></p></form>\
             <p class=\"note\">For example <code>kubectl create token &lt;service-account&gt; -n &lt;namespace&gt;</code>, \
             or your OIDC ID token. You see the namespaces where you may list what each page shows.</p></div>"
        ),
    )
}

/// The session id the request's cookie carries.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The viewer, or the response that sends them away: a redirect to the
/// login page without credentials, 401 for a refused bearer token.
async fn identify(state: &State, headers: &HeaderMap) -> Result<Identity, Response> {
    if let Some(token) = bearer(headers) {
        return match review_token(&state.client, token).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(html(
                StatusCode::UNAUTHORIZED,
                message_page("Not signed in", "The API server did not accept this token."),
            )),
            Err(error) => {
                warn!(%error, "TokenReview failed");
                Err(unavailable())
            }
        };
    }
    match session_id(headers).and_then(|id| state.sessions.get(&id)) {
        Some(identity) => Ok(identity),
        None => Err(Redirect::to("/login").into_response()),
    }
}

fn unavailable() -> Response {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        message_page(
            "Cannot check credentials",
            "The API server could not be asked (TokenReview). Try again shortly.",
        ),
    )
}

/// A POST must come from a page of this server: its `Origin` names the host
/// the browser sent the request to.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

fn cross_site() -> Response {
    html(
        StatusCode::FORBIDDEN,
        message_page(
            "Refused",
            "This form must be sent from the dashboard's own page.",
        ),
    )
}

async fn login_page(Extract(state): Extract<Shared>, headers: HeaderMap) -> Response {
    if session_id(&headers).is_some_and(|id| state.sessions.get(&id).is_some()) {
        return Redirect::to("/decisions").into_response();
    }
    html(StatusCode::OK, login_form(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    Extract(state): Extract<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let token = form.token.trim();
    if token.is_empty() {
        return html(StatusCode::BAD_REQUEST, login_form(Some("Paste a token.")));
    }
    let identity = match review_token(&state.client, token).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            info!("login refused: the API server did not authenticate the token");
            return html(
                StatusCode::UNAUTHORIZED,
                login_form(Some("The API server did not accept this token.")),
            );
        }
        Err(error) => {
            warn!(%error, "TokenReview failed");
            return unavailable();
        }
    };
    info!(user = %identity.username, "signed in");
    let id = match state.sessions.create(identity) {
        Ok(id) => id,
        Err(error) => {
            warn!(%error, "no session");
            return unavailable();
        }
    };
    let secure = if state.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        state.options.session_ttl.as_secs()
    );
    let mut response = Redirect::to("/decisions").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(Extract(state): Extract<Shared>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.remove(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "policybind_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

async fn show(Extract(state): Extract<Shared>, headers: HeaderMap, view: View) -> Response {
    let identity = match identify(&state, &headers).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let snapshot = state.snapshots.get().await;
    let candidates = snapshot.namespaces_of(view.shown());
    let visible = state
        .authorizer
        .visibility(&identity, view.shown(), &candidates)
        .await;
    let body = view.render(&Context {
        snapshot: &snapshot,
        visible: &visible,
        identity: &identity,
        now: Utc::now(),
    });
    let footer = format!(
        "Read-only view of the cluster as of {} (refreshed at most every {} s).",
        time(snapshot.taken_at),
        state.options.refresh.as_secs()
    );
    html(
        StatusCode::OK,
        page(
            &Frame {
                title: view.title(),
                path: view.path(),
                user: Some(&identity.username),
                footer: &footer,
            },
            &body,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn posts_must_come_from_this_servers_own_pages() {
        assert!(same_origin(&headers(&[
            (header::ORIGIN, "http://127.0.0.1:8080"),
            (header::HOST, "127.0.0.1:8080"),
        ])));
        assert!(!same_origin(&headers(&[
            (header::ORIGIN, "http://evil.example"),
            (header::HOST, "127.0.0.1:8080"),
        ])));
        assert!(!same_origin(&headers(&[
            (header::ORIGIN, "null"),
            (header::HOST, "h")
        ])));
        assert!(!same_origin(&headers(&[(header::HOST, "127.0.0.1:8080")])));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let map = headers(&[(header::COOKIE, "a=1; policybind_session=abc; b=2")]);
        assert_eq!(session_id(&map).as_deref(), Some("abc"));
        assert_eq!(session_id(&headers(&[(header::COOKIE, "a=1")])), None);
    }
}
