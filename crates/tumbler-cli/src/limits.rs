//! `tumbler serve`'s bounds on what clients may ask for, one flag each (DESIGN.md §2,
//! "Limits"; the defaults are [`ServerLimits::default`]'s).

use std::time::Duration;

use tumbler_server::ServerLimits;

/// The flags; each left out keeps its default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LimitArgs {
    /// Largest request body, in bytes (65536 by default).
    #[arg(long, value_parser = positive)]
    max_body_bytes: Option<usize>,
    /// Longest long-poll a request may ask for with `wait_ms` (`10m` by default).
    #[arg(long, value_parser = tumbler_bench::parse_positive_duration)]
    max_wait: Option<Duration>,
    /// Longest TTL of a hold or a session (`1440m`, 24 hours, by default).
    #[arg(long, value_parser = tumbler_bench::parse_positive_duration)]
    max_ttl: Option<Duration>,
    /// Keys one acquire may name (64 by default).
    #[arg(long, value_parser = positive)]
    max_keys_per_request: Option<usize>,
    /// Holds one session may have (10000 by default; `none`: unbounded).
    #[arg(long, value_parser = bound)]
    max_holds_per_session: Option<Bound>,
    /// Requests that may wait on one key (10000 by default; `none`: unbounded).
    #[arg(long, value_parser = bound)]
    max_waiters_per_key: Option<Bound>,
    /// Keys with holds or waiters in one namespace (1000000 by default; `none`: unbounded).
    #[arg(long, value_parser = bound)]
    max_keys_per_namespace: Option<Bound>,
    /// Sessions open at once (100000 by default; `none`: unbounded).
    #[arg(long, value_parser = bound)]
    max_sessions: Option<Bound>,
    /// Event streams open at once (1024 by default).
    #[arg(long, value_parser = positive)]
    max_event_streams: Option<usize>,
    /// Largest page of a listing (1000 by default).
    #[arg(long, value_parser = positive)]
    max_page: Option<usize>,
}

/// A bound that may be lifted: `none`, or a positive number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound(Option<usize>);

impl LimitArgs {
    /// The defaults with the flags given applied.
    pub fn limits(&self) -> ServerLimits {
        let mut limits = ServerLimits::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(n) = self.max_body_bytes {
            limits.max_body_bytes = n;
        }
        if let Some(d) = self.max_wait {
            limits.max_wait_ms = ms(d);
        }
        if let Some(d) = self.max_ttl {
            limits.max_ttl_ms = ms(d);
        }
        if let Some(n) = self.max_keys_per_request {
            limits.max_keys_per_request = n;
        }
        if let Some(Bound(n)) = self.max_holds_per_session {
            limits.max_holds_per_session = n;
        }
        if let Some(Bound(n)) = self.max_waiters_per_key {
            limits.max_waiters_per_key = n;
        }
        if let Some(Bound(n)) = self.max_keys_per_namespace {
            limits.max_keys_per_namespace = n;
        }
        if let Some(Bound(n)) = self.max_sessions {
            limits.max_sessions = n;
        }
        if let Some(n) = self.max_event_streams {
            limits.max_event_streams = n;
        }
        if let Some(n) = self.max_page {
            limits.max_page = n;
        }
        limits
    }
}

/// A number above zero: a bound of zero would refuse everything.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (a bound of 0 would refuse everything)".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?} is not a number: {e}")),
    }
}

/// `none`, or a number above zero.
fn bound(text: &str) -> Result<Bound, String> {
    match text {
        "none" => Ok(Bound(None)),
        _ => positive(text).map(|n| Bound(Some(n))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerLimits, clap::Error> {
        Cli::try_parse_from(std::iter::once("tumbler").chain(args.iter().copied())).map(|cli| cli.limits.limits())
    }

    #[test]
    fn no_flag_keeps_every_default() {
        assert_eq!(parse(&[]).expect("no flags"), ServerLimits::default());
    }

    #[test]
    fn every_flag_sets_its_bound() {
        let limits = parse(&[
            "--max-body-bytes=1024",
            "--max-wait=30s",
            "--max-ttl=2m",
            "--max-keys-per-request=8",
            "--max-holds-per-session=none",
            "--max-waiters-per-key=5",
            "--max-keys-per-namespace=100",
            "--max-sessions=none",
            "--max-event-streams=3",
            "--max-page=50",
        ])
        .expect("valid flags");
        assert_eq!(
            limits,
            ServerLimits {
                max_body_bytes: 1024,
                max_wait_ms: 30_000,
                max_ttl_ms: 120_000,
                max_keys_per_request: 8,
                max_holds_per_session: None,
                max_waiters_per_key: Some(5),
                max_keys_per_namespace: Some(100),
                max_sessions: None,
                max_event_streams: 3,
                max_page: 50,
            }
        );
    }

    #[test]
    fn zero_negative_and_words_are_refused_with_the_flag_named() {
        for bad in [
            "--max-body-bytes=0",
            "--max-page=-1",
            "--max-sessions=0",
            "--max-sessions=many",
            "--max-keys-per-request=none",
            "--max-wait=0s",
            "--max-ttl=10",
        ] {
            let err = parse(&[bad]).expect_err(bad).to_string();
            let flag = bad.split('=').next().expect("a flag");
            assert!(err.contains(flag), "{bad}: {err}");
        }
    }
}
