//! The dashboard's HTML. Every value is escaped by `maud`; the one script is a file of its
//! own (`dashboard.js`), so the pages' policy forbids inline script.

use axum::http::StatusCode;
use circuitpy::State;
use circuitpy::admin::{BreakerInfo, rfc3339};
use maud::{DOCTYPE, Markup, html};

use super::{App, Filter, ListView};
use crate::output::{relative, summary, trail};

/// What every page's header says.
pub(crate) struct Frame<'a> {
    place: &'a str,
    prefix: &'a str,
    control: bool,
    refresh_ms: u128,
}

impl<'a> Frame<'a> {
    pub(super) fn of(app: &'a App) -> Self {
        Frame {
            place: &app.place,
            prefix: &app.prefix,
            control: app.control(),
            refresh_ms: app.refresh.as_millis(),
        }
    }
}

/// `text` for a URL's path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn class(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half-open",
        State::ForcedOpen => "forced-open",
        _ => "forced-closed",
    }
}

fn badge(state: State) -> Markup {
    html! { span class={ "badge " (class(state)) } { (state.name()) } }
}

fn document(frame: &Frame<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · circuitpy" }
                link rel="stylesheet" href="/static/dashboard.css";
                script src="/static/dashboard.js" defer {}
                noscript { meta http-equiv="refresh" content=((frame.refresh_ms / 1000).max(1)); }
            }
            body {
                header {
                    a.home href="/" { "circuitpy" }
                    span.place { (frame.place) " · prefix " code { (frame.prefix) } }
                    span.mode { @if frame.control { "control (token)" } @else { "read-only" } }
                    span #updated {}
                }
                (body)
            }
        }
    }
}

pub(crate) fn list(frame: &Frame<'_>, filter: &Filter, region: Markup) -> Markup {
    let selected = filter.state.as_deref().unwrap_or("");
    let options = [
        ("", "every state"),
        ("open", "open"),
        ("half-open", "half-open"),
        ("closed", "closed"),
        ("forced", "forced"),
        ("open,half-open,forced-open", "rejecting"),
    ];
    let body = html! {
        main {
            form.filters method="get" action="/" {
                label { "State "
                    select name="state" {
                        @for (value, name) in options {
                            option value=(value) selected[value == selected] { (name) }
                        }
                    }
                }
                label { "Key " input type="search" name="q" placeholder="part of a key, or a glob: pay*" value=(filter.q.as_deref().unwrap_or("")); }
                button type="submit" { "Filter" }
            }
            div #live data-src={ "/live?" (filter.query(filter.page)) } data-interval=(frame.refresh_ms) {
                (region)
            }
        }
    };
    document(frame, "breakers", body)
}

/// The part of the list page that refreshes itself.
pub(crate) fn list_region(view: &ListView<'_>, filter: &Filter) -> Markup {
    html! {
        p.counts {
            (view.total) " breakers: "
            @for (state, count) in view.counts {
                span class={ "count " (class(state)) } { (count) " " (state.name()) }
                " "
            }
            @if view.invalid > 0 {
                span.count.invalid { (view.invalid) " keys hold no breaker" }
            }
        }
        @if view.rows.is_empty() {
            p.empty { "No breaker matches. A breaker with nothing stored (closed, nothing counted) is not listed." }
        } @else {
            table.breakers {
                thead { tr { th { "Key" } th { "State" } th { "Failures" } th { "Opened" } th { "Next trial" } th { "Detail" } } }
                tbody {
                    @for info in view.rows {
                        tr data-key=(info.key) data-state=(class(info.state)) {
                            td.key { a href={ "/breakers/" (encode(&info.key)) } { (info.key) } }
                            td { (badge(info.state)) }
                            td.num { (info.window.map_or(info.failures, |window| window.failures)) }
                            td { @if let Some(at) = info.opened_at { (relative(at, info.now)) } }
                            td { @if let Some(at) = info.next_trial_at { (relative(at, info.now)) } }
                            td { (summary(info)) }
                        }
                    }
                }
            }
        }
        @if view.pages > 1 {
            nav.pages {
                @if view.page > 1 {
                    a href={ "/?" (filter.query(Some(view.page - 1))) } { "← previous" }
                }
                span { "page " (view.page) " of " (view.pages) " (" (view.matching) " matching)" }
                @if view.page < view.pages {
                    a href={ "/?" (filter.query(Some(view.page + 1))) } { "next →" }
                }
            }
        }
    }
}

/// A breaker's page; `outcome` is what the last action did or why it was refused.
pub(crate) fn breaker(
    frame: &Frame<'_>,
    key: &str,
    info: Option<&BreakerInfo>,
    outcome: Option<Result<&str, &str>>,
) -> Markup {
    let body = html! {
        main {
            p { a href="/" { "← every breaker" } }
            h1 { (key) }
            @match outcome {
                Some(Ok(done)) => p.outcome.ok { (done) }
                Some(Err(refused)) => p.outcome.refused role="alert" { (refused) }
                None => {}
            }
            div #live data-src={ "/live/breakers/" (encode(key)) } data-interval=(frame.refresh_ms) {
                (breaker_region(key, info))
            }
            @if frame.control {
                form #control .control method="post" action={ "/breakers/" (encode(key)) } {
                    label { "Reason " input name="reason" placeholder="why (kept with the breaker)"; }
                    label { "Actor " input name="actor" placeholder="who (kept with the breaker)"; }
                    label { "Token " input type="password" name="token" autocomplete="off"; }
                    div.buttons {
                        button.danger type="submit" name="action" value="open" { "Force open" }
                        button type="submit" name="action" value="close" { "Force closed" }
                        button type="submit" name="action" value="reset" { "Reset" }
                    }
                }
                h2 { "Runtime overrides" }
                @let current = info.and_then(|info| info.overrides).unwrap_or_default();
                form #overrides .control method="post" action={ "/breakers/" (encode(key)) } {
                    label { "Threshold " input name="threshold" inputmode="numeric" placeholder="the handler's" value=[current.failure_threshold]; }
                    label { "Recovery " input name="recovery" placeholder="e.g. 30s" value=[current.recovery_timeout.map(|timeout| format!("{}ms", timeout.as_millis()))]; }
                    label { "Trials " input name="trials" inputmode="numeric" placeholder="the handler's" value=[current.half_open_trials]; }
                    label { "Token " input type="password" name="token" autocomplete="off"; }
                    div.buttons {
                        button type="submit" name="action" value="override" { "Set (empty fields: the handler's)" }
                    }
                }
            } @else {
                p.readonly { "Read-only: start `circuitpy serve` with --token to force breakers from here." }
            }
        }
    };
    document(frame, key, body)
}

/// The part of a breaker's page that refreshes itself.
pub(crate) fn breaker_region(key: &str, info: Option<&BreakerInfo>) -> Markup {
    let Some(info) = info else {
        return html! {
            dl.breaker data-state="closed" {
                dt { "state" } dd { (badge(State::Closed)) " (nothing stored for " (key) ")" }
            }
        };
    };
    let when = |at| html! { (rfc3339(at)) " (" (relative(at, info.now)) ")" };
    html! {
        dl.breaker data-state=(class(info.state)) {
            dt { "state" } dd { (badge(info.state)) " " (summary(info)) }
            dt { "failures" } dd { (info.failures) }
            @if let Some(window) = info.window {
                dt { "window" } dd { (window.calls) " calls, " (window.failures) " failed" }
            }
            @if info.reporters > 0 {
                dt { "reported by" } dd { (info.reporters) " processes (towards the quorum)" }
            }
            @if let Some(at) = info.opened_at { dt { "opened at" } dd { (when(at)) } }
            @if let Some(at) = info.next_trial_at { dt { "next trial at" } dd { (when(at)) } }
            @if info.failed_rounds > 0 {
                dt { "failed rounds" } dd { (info.failed_rounds) " in a row (the backoff's step)" }
            }
            @if let Some(round) = info.round {
                dt { "trial round" } dd { (round) ": " (info.permits_out) " out, " (info.trials_passed) " passed" }
            }
            @if let Some(forced) = &info.forced {
                dt { "forced" } dd {
                    @if let Some(at) = forced.at { (when(at)) }
                    (trail(forced))
                }
            }
            @if let Some(overridden) = &info.overrides {
                dt { "overrides" } dd { (crate::output::overrides(overridden)) }
            }
            @if let Some(left) = info.expires_in {
                dt { "expires in" } dd { (crate::output::span(left)) }
            }
            dt { "storage clock" } dd { (rfc3339(info.now)) }
        }
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status) " · circuitpy" }
                link rel="stylesheet" href="/static/dashboard.css";
            }
            body {
                main {
                    h1 { (status) }
                    p.outcome.refused role="alert" { (message) }
                    p { a href="/" { "← every breaker" } }
                }
            }
        }
    }
}
