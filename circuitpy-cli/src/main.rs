//! `circuitpy`: list, inspect, force and watch the breakers a fleet shares.
//!
//! ```text
//! circuitpy --url redis://host:6379 list --state open,half-open
//! circuitpy --url postgres://app@db/app --table breakers show payments --json
//! circuitpy --url sqlite:///var/lib/app/breakers.db open payments --reason "provider outage"
//! circuitpy --url redis://host check payments || page-someone
//! circuitpy --url 'postgres://app@db/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem' list
//! ```
//!
//! PostgreSQL over TLS follows libpq: `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`; whenever TLS is used the certificate and host name are
//! verified) and `sslrootcert` in the URL, or the `PGSSLROOTCERT` variable, name the CA.
//!
//! Exit status: 0 on success (for `check`, closed or forced closed), 2 when `check` finds
//! the breaker open, half-open or forced open, 1 on any error, printed as one line on stderr
//! with any password in the URL removed.

mod output;
mod serve;
mod storage;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use circuitpy::admin::{Action, Audit, BreakerInfo, Listing};
use circuitpy::{Overrides, State};
use clap::{Parser, Subcommand, ValueEnum};

use crate::storage::Connected;

/// Operate circuitpy breakers stored in Redis, PostgreSQL or SQLite.
#[derive(Debug, Parser)]
#[command(name = "circuitpy", version, about)]
struct Cli {
    /// The storage: redis://…, rediss://…, postgres://… (TLS: ?sslmode=require, and
    /// &sslrootcert=CA.pem or PGSSLROOTCERT for a private CA), or sqlite://PATH.
    #[arg(long, env = "CIRCUITPY_URL", hide_env_values = true)]
    url: String,
    /// The handlers' KEY_PREFIX.
    #[arg(long, default_value = "circuitpy")]
    prefix: String,
    /// The breakers' table (PostgreSQL and SQLite).
    #[arg(long)]
    table: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every breaker with state under the prefix.
    List {
        /// Only breakers in these states (comma-separated or repeated).
        #[arg(long, value_enum, value_delimiter = ',')]
        state: Vec<StateFilter>,
        /// Only keys matching this glob (`*`, `?`).
        #[arg(long = "match", value_name = "GLOB")]
        pattern: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One breaker in full.
    Show {
        key: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Force a breaker open: every call is rejected until `reset`.
    Open(Steer),
    /// Force a breaker closed: every call runs, nothing is counted, until `reset`.
    Close(Steer),
    /// Back to closed, counts and the forcing's trail cleared.
    Reset(Steer),
    /// Override a breaker's settings at runtime, for every process: `threshold=10`,
    /// `recovery=30s`, `trials=2`, `backoff=2:5m` or `backoff=off` (any of them; the others
    /// keep the handler's consts).
    Set {
        key: String,
        /// `threshold=N`, `recovery=DURATION` (`500ms`, `30s`, `2m`), `trials=N`,
        /// `backoff=FACTOR:MAX` (`2:5m`) or `backoff=off`.
        #[arg(required = true, value_parser = parse_setting)]
        settings: Vec<Setting>,
    },
    /// Clear a breaker's runtime overrides: back to the handler's consts.
    Unset { key: String },
    /// Exit 0 when the breaker lets calls through (closed, forced closed), 2 when not.
    Check { key: String },
    /// A live table, redrawn in place.
    Watch {
        /// Time between redraws: `500ms`, `1s`, `2m`.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many redraws (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Only breakers in these states.
        #[arg(long, value_enum, value_delimiter = ',')]
        state: Vec<StateFilter>,
    },
    /// The dashboard: pages that refresh themselves, a JSON API and Prometheus `/metrics`.
    Serve {
        /// Where to listen (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The token every state-changing request needs (at least 16 characters). Without
        /// one the dashboard is read-only, and refuses a non-loopback address unless
        /// --read-only is given.
        #[arg(long, env = "CIRCUITPY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// No control at all, even with a token.
        #[arg(long)]
        read_only: bool,
        /// How often the pages refresh themselves.
        #[arg(long, default_value = "2s", value_parser = parse_interval)]
        refresh: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct Steer {
    /// A breaker key, or a glob (`*`, `?`) over the listed keys (then `--yes` is needed).
    key: String,
    /// Why (kept with the breaker).
    #[arg(long)]
    reason: Option<String>,
    /// Who (kept with the breaker); `$USER` by default.
    #[arg(long)]
    actor: Option<String>,
    /// Act on every key a glob matches.
    #[arg(long)]
    yes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StateFilter {
    Closed,
    Open,
    HalfOpen,
    /// Forced open or forced closed.
    Forced,
    ForcedOpen,
    ForcedClosed,
}

impl StateFilter {
    fn matches(self, state: State) -> bool {
        match self {
            StateFilter::Closed => state == State::Closed,
            StateFilter::Open => state == State::Open,
            StateFilter::HalfOpen => state == State::HalfOpen,
            StateFilter::Forced => matches!(state, State::ForcedOpen | State::ForcedClosed),
            StateFilter::ForcedOpen => state == State::ForcedOpen,
            StateFilter::ForcedClosed => state == State::ForcedClosed,
        }
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) {
        return Err("the interval is at least 100ms".into());
    }
    Ok(interval)
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 500ms, 1s or 2m, not {text:?}"))?;
    let interval = match unit {
        "ms" => Duration::from_millis(number),
        "s" | "" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    Ok(interval)
}

/// One `name=value` of `set`.
#[derive(Clone, Debug)]
enum Setting {
    Threshold(u32),
    Recovery(Duration),
    Trials(u32),
    Backoff(circuitpy::Backoff),
}

fn parse_setting(text: &str) -> Result<Setting, String> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        format!("expected name=value (threshold=10, recovery=30s, trials=2), not {text:?}")
    })?;
    let number = |value: &str| {
        value
            .parse::<u32>()
            .map_err(|_| format!("{name} takes a whole number, not {value:?}"))
    };
    match name {
        "threshold" => number(value).map(Setting::Threshold),
        "recovery" => parse_duration(value).map(Setting::Recovery),
        "trials" => number(value).map(Setting::Trials),
        "backoff" if value == "off" => Ok(Setting::Backoff(circuitpy::Backoff::OFF)),
        "backoff" => {
            let (factor, max) = value
                .split_once(':')
                .ok_or_else(|| format!("backoff takes FACTOR:MAX (2:5m) or off, not {value:?}"))?;
            let factor: f64 = factor
                .parse()
                .map_err(|_| format!("a backoff's factor is a number, not {factor:?}"))?;
            Ok(Setting::Backoff(circuitpy::Backoff::exponential(
                factor,
                parse_duration(max)?,
            )))
        }
        _ => Err(format!(
            "unknown setting {name:?}: threshold, recovery, trials or backoff"
        )),
    }
}

/// Whether `key` matches `glob` (`*` any run, `?` one character).
fn glob_matches(glob: &str, key: &str) -> bool {
    let (glob, key): (Vec<char>, Vec<char>) = (glob.chars().collect(), key.chars().collect());
    let (mut g, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == key[k]) {
            g += 1;
            k += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, k));
            g += 1;
        } else if let Some((star_g, star_k)) = star {
            g = star_g + 1;
            k = star_k + 1;
            star = Some((star_g, star_k + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

fn is_glob(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// A failure of the command: one line for stderr.
#[derive(Debug)]
struct Failure(String);

impl<E: std::error::Error> From<E> for Failure {
    /// The error and its causes, each once: a client's own text is often only "error
    /// connecting to server", with the reason in its source.
    fn from(error: E) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text = format!("{text}: {cause_text}");
            }
            source = cause.source();
        }
        Failure(text)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Usage errors exit 1, not clap's 2: `check` keeps 2 for "not closed".
            return if error.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let url = cli.url.clone();
    match run(cli) {
        Ok(code) => code,
        Err(Failure(message)) => {
            let line = storage::redact(&message, &url).replace('\n', "; ");
            eprintln!("circuitpy: {line}");
            ExitCode::from(1)
        }
    }
}

fn filtered(listing: Listing, states: &[StateFilter], pattern: Option<&str>) -> Listing {
    let mut listing = listing;
    listing.breakers.retain(|breaker| {
        (states.is_empty() || states.iter().any(|filter| filter.matches(breaker.state)))
            && pattern.is_none_or(|glob| glob_matches(glob, &breaker.key))
    });
    listing
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let connected = Connected::open(&cli.url, cli.table.as_deref())?;
    let admin = connected.admin();
    let prefix = cli.prefix.as_str();
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match cli.command {
        Command::List {
            state,
            pattern,
            json,
        } => {
            let listing = filtered(admin.list(prefix)?, &state, pattern.as_deref());
            if json {
                println!("{}", output::listing_json(prefix, &listing));
            } else {
                print!("{}", output::table(&listing.breakers, colour));
            }
            invalid_keys(&listing)
        }
        Command::Show { key, json } => {
            let Some(info) = admin.inspect(prefix, &key)? else {
                return Err(Failure(format!(
                    "unknown key {key:?}: no breaker is stored under prefix {prefix:?} \
                     (a breaker with nothing stored reads closed)"
                )));
            };
            if json {
                println!("{}", output::breaker_json(&info));
            } else {
                print!("{}", output::details(&info, colour));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Open(steer) => act(admin, prefix, Action::ForceOpen, steer),
        Command::Close(steer) => act(admin, prefix, Action::ForceClosed, steer),
        Command::Reset(steer) => act(admin, prefix, Action::Reset, steer),
        Command::Set { key, settings } => {
            let mut overrides = Overrides::NONE;
            for setting in settings {
                overrides = match setting {
                    Setting::Threshold(n) => overrides.failure_threshold(n),
                    Setting::Recovery(timeout) => overrides.recovery_timeout(timeout),
                    Setting::Trials(n) => overrides.half_open_trials(n),
                    Setting::Backoff(backoff) => overrides.backoff(backoff),
                };
            }
            let info = admin.act(prefix, &key, Action::Override(overrides), Audit::NONE)?;
            let shown = info
                .as_ref()
                .and_then(|info| info.overrides)
                .map(|overrides| output::overrides(&overrides))
                .unwrap_or_default();
            println!("{key}: overridden {shown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Unset { key } => {
            admin.act(prefix, &key, Action::Override(Overrides::NONE), Audit::NONE)?;
            println!("{key}: back to the handler's settings");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { key } => {
            let state = admin
                .inspect(prefix, &key)?
                .map_or(State::Closed, |info| info.state);
            println!("{key} {}", state.name());
            Ok(match state {
                State::Closed | State::ForcedClosed => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            })
        }
        Command::Watch {
            interval,
            count,
            state,
        } => {
            let mut drawn = 0u64;
            loop {
                let listing = filtered(admin.list(prefix)?, &state, None);
                let mut screen = String::new();
                if colour {
                    // Home and clear: the table redraws in place.
                    screen.push_str("\x1b[H\x1b[2J");
                }
                screen.push_str(&format!(
                    "{} breakers under {prefix:?} at {} (every {interval:?}; Ctrl-C stops)\n\n",
                    listing.breakers.len(),
                    circuitpy::admin::rfc3339(std::time::SystemTime::now()),
                ));
                screen.push_str(&output::table(&listing.breakers, colour));
                for invalid in &listing.invalid {
                    screen.push_str(&format!("! {invalid}\n"));
                }
                print!("{screen}");
                drawn += 1;
                if count.is_some_and(|count| drawn >= count) {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(interval);
            }
        }
        Command::Serve {
            listen,
            token,
            read_only,
            refresh,
        } => {
            let place = format!(
                "{} {}",
                connected.kind(),
                storage::redact(&cli.url, &cli.url)
            );
            let settings = serve::Settings {
                listen,
                token,
                read_only,
                refresh,
            };
            serve::run(connected, place, cli.prefix, settings)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Keys under the prefix that hold something else: reported on stderr, and the exit
/// status says so.
fn invalid_keys(listing: &Listing) -> Result<ExitCode, Failure> {
    match listing.invalid.len() {
        0 => Ok(ExitCode::SUCCESS),
        1 => Err(Failure(listing.invalid[0].to_string())),
        n => Err(Failure(format!(
            "{n} keys hold data that is not a breaker, the first: {}",
            listing.invalid[0]
        ))),
    }
}

fn act(
    admin: &dyn circuitpy::admin::Admin,
    prefix: &str,
    action: Action,
    steer: Steer,
) -> Result<ExitCode, Failure> {
    let actor = steer
        .actor
        .or_else(|| std::env::var("USER").ok())
        .filter(|actor| !actor.is_empty());
    let mut audit = Audit::NONE;
    if let Some(actor) = actor.as_deref() {
        audit = Audit::by(actor);
    }
    if let Some(reason) = steer.reason.as_deref() {
        audit = audit.because(reason);
    }
    audit.check()?;
    let keys: Vec<String> = if is_glob(&steer.key) {
        let listing = admin.list(prefix)?;
        let keys: Vec<String> = listing
            .breakers
            .into_iter()
            .filter(|breaker| glob_matches(&steer.key, &breaker.key))
            .map(|breaker| breaker.key)
            .collect();
        if keys.is_empty() {
            return Err(Failure(format!("no breaker matches {:?}", steer.key)));
        }
        if !steer.yes {
            return Err(Failure(format!(
                "{:?} matches {} breakers ({}); add --yes to act on all of them",
                steer.key,
                keys.len(),
                keys.join(", ")
            )));
        }
        keys
    } else {
        vec![steer.key]
    };
    for key in keys {
        let info: Option<BreakerInfo> = admin.act(prefix, &key, action, audit)?;
        let done = match action {
            Action::ForceOpen => "forced open",
            Action::ForceClosed => "forced closed",
            _ => "reset",
        };
        let by = match (action, info.as_ref().and_then(|info| info.forced.as_ref())) {
            (Action::Reset, _) | (_, None) => String::new(),
            (_, Some(forced)) => output::trail(forced),
        };
        println!("{key}: {done}{by}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob_matches("pay*", "payments"));
        assert!(glob_matches("*:eu", "payments:eu"));
        assert!(glob_matches("p?y*s", "payments"));
        assert!(!glob_matches("pay*", "search"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a*b", "acbd"));
    }

    #[test]
    fn intervals_parse_with_their_unit() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("3"), Ok(Duration::from_secs(3)));
        assert!(parse_interval("1h").is_err());
        assert!(parse_interval("10ms").is_err());
    }

    #[test]
    fn settings_parse_by_name() {
        assert!(matches!(
            parse_setting("threshold=10"),
            Ok(Setting::Threshold(10))
        ));
        assert!(matches!(
            parse_setting("recovery=2m"),
            Ok(Setting::Recovery(d)) if d == Duration::from_secs(120)
        ));
        assert!(parse_setting("threshold=ten").is_err());
        assert!(
            parse_setting("speed=1")
                .unwrap_err()
                .contains("unknown setting")
        );
        assert!(parse_setting("threshold").is_err());
        assert!(matches!(
            parse_setting("backoff=2:5m"),
            Ok(Setting::Backoff(b)) if b.factor == 2.0 && b.max == Duration::from_secs(300)
        ));
        assert!(matches!(parse_setting("backoff=off"), Ok(Setting::Backoff(b)) if b.is_off()));
        assert!(parse_setting("backoff=2").is_err());
    }

    #[test]
    fn the_arguments_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
