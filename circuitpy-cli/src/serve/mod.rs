//! `circuitpy serve`: the dashboard. Server-rendered pages that refresh themselves, a JSON
//! API, and a Prometheus `/metrics` with one state gauge per breaker.
//!
//! Control (force open, force closed, reset) needs the token given at start, sent with each
//! request: in the form (pages) or as `Authorization: Bearer` (API). Nothing grants control
//! by itself, no cookie and no session, so a page on another site cannot make a browser
//! act (cross-site request forgery): it would have to know the token. Requests that a
//! browser marks cross-site (`Sec-Fetch-Site`) or whose `Origin` is another host are
//! refused all the same, and every page forbids framing.

mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State as Shared};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use circuitpy::admin::{Action, Audit, BreakerInfo, Listing};
use circuitpy::{Overrides, State};
use clap::ValueEnum;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use crate::storage::Connected;
use crate::{Failure, StateFilter, glob_matches, is_glob, output};

/// The shortest token accepted: a control plane's secret is not a word.
const MIN_TOKEN_CHARS: usize = 16;
/// Rows on one page of the list.
const PAGE_ROWS: usize = 100;
/// The most breakers one API answer carries.
const MAX_LIMIT: usize = 10_000;

/// How `serve` was started.
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) token: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) refresh: Duration,
}

/// What every request shares.
struct App {
    connected: Connected,
    /// Where the breakers are, for the page's header (no password).
    place: String,
    prefix: String,
    /// `None`: no control at all.
    token: Option<String>,
    refresh: Duration,
    /// The last listing and when it was read: however many browsers poll, the storage is
    /// listed at most once per half refresh interval.
    snapshot: Mutex<Option<(Instant, Arc<Listing>)>>,
}

impl App {
    fn control(&self) -> bool {
        self.token.is_some()
    }

    async fn listing(self: &Arc<Self>) -> Result<Arc<Listing>, Failure> {
        let mut snapshot = self.snapshot.lock().await;
        if let Some((at, listing)) = snapshot.as_ref()
            && at.elapsed() < self.refresh / 2
        {
            return Ok(listing.clone());
        }
        let app = self.clone();
        let listing = blocking(move || Ok(app.connected.admin().list(&app.prefix)?)).await?;
        let listing = Arc::new(listing);
        *snapshot = Some((Instant::now(), listing.clone()));
        Ok(listing)
    }

    async fn inspect(self: &Arc<Self>, key: String) -> Result<Option<BreakerInfo>, Failure> {
        let app = self.clone();
        blocking(move || Ok(app.connected.admin().inspect(&app.prefix, &key)?)).await
    }

    async fn act(
        self: &Arc<Self>,
        key: String,
        action: Action,
        actor: Option<String>,
        reason: Option<String>,
    ) -> Result<Option<BreakerInfo>, Failure> {
        let app = self.clone();
        let info = blocking(move || {
            let mut audit = Audit::NONE;
            if let Some(actor) = actor.as_deref() {
                audit = Audit::by(actor);
            }
            if let Some(reason) = reason.as_deref() {
                audit = audit.because(reason);
            }
            audit.check()?;
            Ok(app
                .connected
                .admin()
                .act(&app.prefix, &key, action, audit)?)
        })
        .await?;
        // The next listing shows the change.
        *self.snapshot.lock().await = None;
        Ok(info)
    }

    /// Whether `given` is the token (in time independent of where they differ).
    fn authorised(&self, given: Option<&str>) -> bool {
        match (&self.token, given) {
            (Some(token), Some(given)) => token.as_bytes().ct_eq(given.as_bytes()).into(),
            _ => false,
        }
    }
}

/// The storage's admin is blocking: it runs on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Failure(format!("the storage's worker failed: {error}")))?
}

/// Checks the settings, binds, prints where it listens and serves until Ctrl-C.
pub(crate) fn run(
    connected: Connected,
    place: String,
    prefix: String,
    settings: Settings,
) -> Result<(), Failure> {
    let Settings {
        listen,
        token,
        read_only,
        refresh,
    } = settings;
    if let Some(token) = &token
        && token.chars().count() < MIN_TOKEN_CHARS
    {
        return Err(Failure(format!(
            "the token is at least {MIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 16`)"
        )));
    }
    if token.is_none() && !read_only && !listen.ip().is_loopback() {
        return Err(Failure(format!(
            "refusing to serve control on {listen}, which is not a loopback address, without a \
             token: give --token (or CIRCUITPY_TOKEN), or --read-only"
        )));
    }
    let token = if read_only { None } else { token };
    let app = Arc::new(App {
        connected,
        place,
        prefix,
        token,
        refresh,
        snapshot: Mutex::new(None),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| Failure(format!("cannot start the server's runtime: {error}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| Failure(format!("cannot listen on {listen}: {error}")))?;
        let address = listener.local_addr()?;
        let control = if app.control() {
            "control with the token"
        } else {
            "read-only"
        };
        // One line a script can read the address from (when started on port 0).
        println!("circuitpy dashboard on http://{address}/ ({control})");
        axum::serve(listener, router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(Failure::from)
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(list_page))
        .route("/live", get(list_live))
        .route("/breakers/{key}", get(breaker_page).post(breaker_form))
        .route("/live/breakers/{key}", get(breaker_live))
        .route("/api/breakers", get(api_list))
        .route("/api/breakers/{key}", get(api_inspect))
        .route("/api/breakers/{key}/{action}", post(api_act))
        .route("/metrics", get(metrics))
        .route("/static/dashboard.js", get(script))
        .route("/static/dashboard.css", get(style))
        .layer(axum::middleware::map_response(secure))
        .with_state(app)
}

/// Headers every answer carries: no framing, no inline script, nothing cached.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether a state-changing request comes from this dashboard's own pages or from a
/// program (no `Origin`, no `Sec-Fetch-Site`), not from another site in a browser.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match text(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = origin.split_once("://").map(|(_, host)| host);
            host.is_some() && host == text(header::HOST)
        }
    }
}

/// The list's filter, from the query string.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Filter {
    /// States, comma-separated (`open,half-open`, `forced`).
    #[serde(default)]
    state: Option<String>,
    /// A glob (`*`, `?`) or a part of the key.
    #[serde(default, alias = "match")]
    q: Option<String>,
    /// The page (from 1) of the list page.
    #[serde(default)]
    page: Option<usize>,
    /// The API's window.
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

impl Filter {
    fn states(&self) -> Result<Vec<StateFilter>, Failure> {
        let Some(states) = self.state.as_deref().filter(|text| !text.is_empty()) else {
            return Ok(Vec::new());
        };
        states
            .split(',')
            .map(|name| {
                StateFilter::from_str(name.trim(), true).map_err(|_| {
                    Failure(format!(
                        "unknown state {name:?}: closed, open, half-open, forced, forced-open \
                         or forced-closed"
                    ))
                })
            })
            .collect()
    }

    fn pattern(&self) -> Option<&str> {
        self.q.as_deref().filter(|text| !text.is_empty())
    }

    /// The breakers of `listing` that pass, in key order.
    fn apply<'a>(&self, listing: &'a Listing) -> Result<Vec<&'a BreakerInfo>, Failure> {
        let states = self.states()?;
        let pattern = self.pattern();
        Ok(listing
            .breakers
            .iter()
            .filter(|breaker| {
                (states.is_empty() || states.iter().any(|filter| filter.matches(breaker.state)))
                    && pattern.is_none_or(|pattern| {
                        if is_glob(pattern) {
                            glob_matches(pattern, &breaker.key)
                        } else {
                            breaker.key.contains(pattern)
                        }
                    })
            })
            .collect())
    }

    /// The query string that gives this filter (and `page`).
    fn query(&self, page: Option<usize>) -> String {
        let mut parts = Vec::new();
        if let Some(state) = self.state.as_deref().filter(|text| !text.is_empty()) {
            parts.push(format!("state={}", page::encode(state)));
        }
        if let Some(pattern) = self.pattern() {
            parts.push(format!("q={}", page::encode(pattern)));
        }
        if let Some(page) = page.filter(|&page| page > 1) {
            parts.push(format!("page={page}"));
        }
        parts.join("&")
    }
}

/// An error as the pages show it, and as the API answers it.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn storage(failure: Failure) -> Self {
        Refusal::new(StatusCode::BAD_GATEWAY, failure.0)
    }

    fn page(self) -> Response {
        (self.status, page::error(self.status, &self.message)).into_response()
    }

    fn json(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"circuitpy\""),
            );
        }
        response
    }
}

impl From<Failure> for Refusal {
    /// A bad filter: the caller's mistake.
    fn from(failure: Failure) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, failure.0)
    }
}

/// What the list page shows: the counts by state over every breaker, and one page of the
/// filtered ones.
pub(crate) struct ListView<'a> {
    pub(crate) counts: [(State, usize); 5],
    pub(crate) total: usize,
    pub(crate) matching: usize,
    pub(crate) rows: &'a [&'a BreakerInfo],
    pub(crate) page: usize,
    pub(crate) pages: usize,
    pub(crate) invalid: usize,
}

fn list_view<'a>(listing: &'a Listing, rows: &'a [&'a BreakerInfo], page: usize) -> ListView<'a> {
    let mut counts = [
        (State::Closed, 0),
        (State::Open, 0),
        (State::HalfOpen, 0),
        (State::ForcedOpen, 0),
        (State::ForcedClosed, 0),
    ];
    for breaker in &listing.breakers {
        if let Some(count) = counts.iter_mut().find(|(state, _)| *state == breaker.state) {
            count.1 += 1;
        }
    }
    let pages = rows.len().div_ceil(PAGE_ROWS).max(1);
    let page = page.clamp(1, pages);
    let start = (page - 1) * PAGE_ROWS;
    let end = (start + PAGE_ROWS).min(rows.len());
    ListView {
        counts,
        total: listing.breakers.len(),
        matching: rows.len(),
        rows: &rows[start..end],
        page,
        pages,
        invalid: listing.invalid.len(),
    }
}

async fn list_page(Shared(app): Shared<Arc<App>>, Query(filter): Query<Filter>) -> Response {
    match list_region(&app, &filter).await {
        Ok(region) => page::list(&page::Frame::of(&app), &filter, region).into_response(),
        Err(refusal) => refusal.page(),
    }
}

async fn list_live(Shared(app): Shared<Arc<App>>, Query(filter): Query<Filter>) -> Response {
    match list_region(&app, &filter).await {
        Ok(region) => region.into_response(),
        Err(refusal) => refusal.page(),
    }
}

async fn list_region(app: &Arc<App>, filter: &Filter) -> Result<maud::Markup, Refusal> {
    let listing = app.listing().await.map_err(Refusal::storage)?;
    let rows = filter.apply(&listing)?;
    let view = list_view(&listing, &rows, filter.page.unwrap_or(1));
    Ok(page::list_region(&view, filter))
}

/// What a breaker's page says an action did (after the redirect that follows it).
#[derive(Debug, Deserialize)]
struct Outcome {
    #[serde(default)]
    done: Option<String>,
}

async fn breaker_page(
    Shared(app): Shared<Arc<App>>,
    Path(key): Path<String>,
    Query(outcome): Query<Outcome>,
) -> Response {
    // Only the outcomes an action has: a link cannot make the page say anything else.
    let done = outcome
        .done
        .as_deref()
        .and_then(|done| OUTCOMES.into_iter().find(|known| *known == done));
    match app.inspect(key.clone()).await {
        Ok(info) => {
            page::breaker(&page::Frame::of(&app), &key, info.as_ref(), done.map(Ok)).into_response()
        }
        Err(failure) => Refusal::storage(failure).page(),
    }
}

async fn breaker_live(Shared(app): Shared<Arc<App>>, Path(key): Path<String>) -> Response {
    match app.inspect(key.clone()).await {
        Ok(info) => page::breaker_region(&key, info.as_ref()).into_response(),
        Err(failure) => Refusal::storage(failure).page(),
    }
}

/// The control form of a breaker's page.
#[derive(Debug, Deserialize)]
struct ControlForm {
    action: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    actor: String,
    /// For `override`: each setting, empty when not overridden.
    #[serde(default)]
    threshold: String,
    #[serde(default)]
    recovery: String,
    #[serde(default)]
    trials: String,
}

impl ControlForm {
    /// The overrides the form's fields give (all empty: clear them).
    fn overrides(&self) -> Result<Overrides, String> {
        let number = |name: &str, text: &str| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| format!("{name} takes a whole number, not {text:?}"))
        };
        let mut overrides = Overrides::NONE;
        if !self.threshold.trim().is_empty() {
            overrides = overrides.failure_threshold(number("threshold", &self.threshold)?);
        }
        if !self.recovery.trim().is_empty() {
            overrides = overrides.recovery_timeout(crate::parse_duration(self.recovery.trim())?);
        }
        if !self.trials.trim().is_empty() {
            overrides = overrides.half_open_trials(number("trials", &self.trials)?);
        }
        Ok(overrides)
    }
}

fn action_named(name: &str) -> Option<Action> {
    match name {
        "open" => Some(Action::ForceOpen),
        "close" => Some(Action::ForceClosed),
        "reset" => Some(Action::Reset),
        _ => None,
    }
}

/// What a breaker's page can say an action did.
const OUTCOMES: [&str; 5] = [
    "forced open",
    "forced closed",
    "reset",
    "overrides set",
    "overrides cleared",
];

fn done(action: Action) -> &'static str {
    match action {
        Action::ForceOpen => OUTCOMES[0],
        Action::ForceClosed => OUTCOMES[1],
        Action::Override(overrides) if overrides.is_none() => OUTCOMES[4],
        Action::Override(_) => OUTCOMES[3],
        _ => OUTCOMES[2],
    }
}

/// Why a state-changing request may not go ahead, if it may not.
fn refuse_control(app: &App, headers: &HeaderMap, token: Option<&str>) -> Option<Refusal> {
    if !app.control() {
        return Some(Refusal::new(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: it was started without a token or with --read-only",
        ));
    }
    if !same_origin(headers) {
        return Some(Refusal::new(
            StatusCode::FORBIDDEN,
            "refused: the request comes from another site",
        ));
    }
    if !app.authorised(token.filter(|token| !token.is_empty())) {
        return Some(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "refused: a wrong or missing token",
        ));
    }
    None
}

fn non_empty(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

async fn breaker_form(
    Shared(app): Shared<Arc<App>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    let action = match form.action.as_str() {
        "override" => match form.overrides() {
            Ok(overrides) => Action::Override(overrides),
            Err(message) => return Refusal::new(StatusCode::BAD_REQUEST, message).page(),
        },
        name => match action_named(name) {
            Some(action) => action,
            None => return Refusal::new(StatusCode::BAD_REQUEST, "unknown action").page(),
        },
    };
    if let Some(refusal) = refuse_control(&app, &headers, Some(&form.token)) {
        // The breaker's page again, with the refusal where the outcome shows.
        let info = app.inspect(key.clone()).await.ok().flatten();
        let frame = page::Frame::of(&app);
        let status = refusal.status;
        return (
            status,
            page::breaker(&frame, &key, info.as_ref(), Some(Err(&refusal.message))),
        )
            .into_response();
    }
    let actor = non_empty(form.actor).or_else(|| Some("dashboard".into()));
    match app
        .act(key.clone(), action, actor, non_empty(form.reason))
        .await
    {
        Ok(_) => Redirect::to(&format!(
            "/breakers/{}?done={}",
            page::encode(&key),
            page::encode(done(action))
        ))
        .into_response(),
        Err(failure) => Refusal::new(StatusCode::BAD_REQUEST, failure.0).page(),
    }
}

async fn api_list(Shared(app): Shared<Arc<App>>, Query(filter): Query<Filter>) -> Response {
    let listing = match app.listing().await {
        Ok(listing) => listing,
        Err(failure) => return Refusal::storage(failure).json(),
    };
    let rows = match filter.apply(&listing) {
        Ok(rows) => rows,
        Err(failure) => return Refusal::from(failure).json(),
    };
    let offset = filter.offset.unwrap_or(0).min(rows.len());
    let limit = filter.limit.unwrap_or(1000).clamp(1, MAX_LIMIT);
    let end = (offset + limit).min(rows.len());
    let body = serde_json::json!({
        "prefix": app.prefix,
        "total": rows.len(),
        "offset": offset,
        "next_offset": (end < rows.len()).then_some(end),
        "breakers": rows[offset..end].iter().map(|info| output::breaker(info)).collect::<Vec<_>>(),
        "invalid": listing.invalid.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    axum::Json(body).into_response()
}

async fn api_inspect(Shared(app): Shared<Arc<App>>, Path(key): Path<String>) -> Response {
    match app.inspect(key.clone()).await {
        Ok(Some(info)) => axum::Json(output::breaker(&info)).into_response(),
        Ok(None) => Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no breaker is stored under {key:?} (a breaker with nothing stored reads closed)"
            ),
        )
        .json(),
        Err(failure) => Refusal::storage(failure).json(),
    }
}

/// The API's optional body for an action.
#[derive(Debug, Default, Deserialize)]
struct ActBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    /// For `overrides`: each setting, absent when not overridden (all absent: clear).
    #[serde(default)]
    failure_threshold: Option<u32>,
    #[serde(default)]
    recovery_timeout_ms: Option<u64>,
    #[serde(default)]
    half_open_trials: Option<u32>,
    #[serde(default)]
    backoff_factor: Option<f64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
}

async fn api_act(
    Shared(app): Shared<Arc<App>>,
    Path((key, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let named = action_named(&action);
    if named.is_none() && action != "overrides" {
        return Refusal::new(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: open, close, reset or overrides"),
        )
        .json();
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let Some(refusal) = refuse_control(&app, &headers, token) {
        return refusal.json();
    }
    let body: ActBody = if body.is_empty() {
        ActBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(error) => {
                return Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the body is JSON {{\"reason\": …, \"actor\": …}} (and for overrides \
                         \"failure_threshold\", \"recovery_timeout_ms\", \"half_open_trials\"): {error}"
                    ),
                )
                .json();
            }
        }
    };
    let action = named.unwrap_or_else(|| {
        let mut overrides = Overrides::NONE;
        if let Some(threshold) = body.failure_threshold {
            overrides = overrides.failure_threshold(threshold);
        }
        if let Some(ms) = body.recovery_timeout_ms {
            overrides = overrides.recovery_timeout(Duration::from_millis(ms));
        }
        if let Some(trials) = body.half_open_trials {
            overrides = overrides.half_open_trials(trials);
        }
        if let Some(factor) = body.backoff_factor {
            let max = Duration::from_millis(body.backoff_max_ms.unwrap_or(0));
            overrides = overrides.backoff(circuitpy::Backoff::exponential(factor, max));
        }
        Action::Override(overrides)
    });
    let actor = body
        .actor
        .and_then(non_empty)
        .or_else(|| Some("api".into()));
    match app
        .act(key.clone(), action, actor, body.reason.and_then(non_empty))
        .await
    {
        Ok(Some(info)) => axum::Json(output::breaker(&info)).into_response(),
        Ok(None) => {
            axum::Json(serde_json::json!({ "key": key, "state": "closed" })).into_response()
        }
        Err(failure) => Refusal::new(StatusCode::BAD_REQUEST, failure.0).json(),
    }
}

/// The Prometheus text format: per breaker, the state gauge (one series per state, 1 for
/// the current one, as the library's own `circuitbreaker_state`) and its failure count.
async fn metrics(Shared(app): Shared<Arc<App>>) -> Response {
    let listing = match app.listing().await {
        Ok(listing) => listing,
        Err(failure) => {
            return (StatusCode::BAD_GATEWAY, format!("# {}\n", failure.0)).into_response();
        }
    };
    let text = output::prometheus(&listing);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        include_str!("dashboard.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        include_str!("dashboard.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_from_the_dashboard_itself_or_programs_pass() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null"),
        ])));
    }

    #[test]
    fn filters_take_states_and_globs_or_parts_of_keys() {
        let filter = Filter {
            state: Some("open,forced".into()),
            q: Some("pay*".into()),
            ..Filter::default()
        };
        assert_eq!(
            filter.states().unwrap(),
            [StateFilter::Open, StateFilter::Forced]
        );
        assert_eq!(filter.query(Some(3)), "state=open%2Cforced&q=pay%2A&page=3");
        let bad = Filter {
            state: Some("ajar".into()),
            ..Filter::default()
        };
        assert!(bad.states().unwrap_err().0.contains("ajar"));
    }
}
