//! Server configuration: one [`Config`] read from `PM_*` environment variables, each also
//! settable as a command-line flag (`--database-url`, `--bind`, `--log`,
//! `--shutdown-timeout-secs`); a flag wins over its variable.
//!
//! Values are validated while parsing, so a `Config` that exists is usable; every validation
//! error names the environment variable to fix.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// Default for `PM_DATABASE_URL`: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://pm.db";
/// Default for `PM_BIND`: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default for `PM_LOG`: our own logs at `info`, sqlx's per-query logs silenced.
pub const DEFAULT_LOG: &str = "info,sqlx=warn";
/// Default for `PM_SHUTDOWN_TIMEOUT_SECS`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: &str = "10";

/// Everything the server needs to start. Parsed by clap (see the `pm-server` binary); the
/// arguments are `global`, so they are accepted before or after the subcommand.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Database to use: `sqlite://path.db` (created if missing) or `postgres://user:pass@host/db`.
    #[arg(long, value_name = "URL", env = "PM_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true,
          value_parser = parse_database_url, hide_env_values = true)]
    pub database_url: String,

    /// Address to listen on, `host:port`.
    #[arg(long, value_name = "ADDR", env = "PM_BIND", default_value = DEFAULT_BIND, global = true, value_parser = parse_bind)]
    pub bind: SocketAddr,

    /// Log filter in `tracing_subscriber::EnvFilter` syntax, e.g. `info,pm_server=debug`.
    #[arg(long, value_name = "FILTER", env = "PM_LOG", default_value = DEFAULT_LOG, global = true, value_parser = parse_log)]
    pub log: String,

    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM before closing connections.
    #[arg(long = "shutdown-timeout-secs", value_name = "SECS", env = "PM_SHUTDOWN_TIMEOUT_SECS",
          default_value = DEFAULT_SHUTDOWN_TIMEOUT_SECS, global = true, value_parser = parse_shutdown_timeout)]
    pub shutdown_timeout: Duration,
}

impl Config {
    /// The database URL with any password replaced by `***`, for logs and messages.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }

    /// The log filter, ready to install. Cannot fail: [`Config::log`] was validated on parse.
    pub fn env_filter(&self) -> EnvFilter {
        EnvFilter::try_new(&self.log).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG))
    }
}

// Hand-written so the database password never reaches a log line through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url_redacted())
            .field("bind", &self.bind)
            .field("log", &self.log)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

fn parse_database_url(s: &str) -> Result<String, String> {
    let ok = ["sqlite:", "postgres:", "postgresql:"].iter().any(|p| s.starts_with(p));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("PM_DATABASE_URL (--database-url) must start with sqlite: or postgres:, \
             e.g. sqlite://pm.db"
            .to_owned())
    }
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| {
        format!("PM_BIND (--bind) must be an IP address and port such as 127.0.0.1:8080 or [::]:8080 ({e})")
    })
}

fn parse_log(s: &str) -> Result<String, String> {
    match EnvFilter::try_new(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(e) => {
            Err(format!("PM_LOG (--log) is not a valid log filter such as `info,sqlx=warn` ({e})"))
        }
    }
}

fn parse_shutdown_timeout(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("PM_SHUTDOWN_TIMEOUT_SECS (--shutdown-timeout-secs) must be a whole number of seconds ({e})"))
}

/// Replaces the password in `scheme://user:password@host/...` with `***`; other URLs unchanged.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The userinfo ends at the last `@` before the path; a password may itself contain `@`
    // only percent-encoded, but be lenient and take the last one.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some((user, _password)) = userinfo.split_once(':') else {
        return url.to_owned();
    };
    format!("{scheme}://{user}:***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://pm:s3cr@t@db:5432/pm"), "postgres://pm:***@db:5432/pm");
        assert_eq!(redact_url("postgres://pm@db/pm"), "postgres://pm@db/pm");
        assert_eq!(redact_url("sqlite://pm.db"), "sqlite://pm.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn errors_name_the_variable() {
        assert!(parse_bind("localhost").unwrap_err().contains("PM_BIND"));
        assert!(parse_log("info,[").unwrap_err().contains("PM_LOG"));
        assert!(parse_shutdown_timeout("-1").unwrap_err().contains("PM_SHUTDOWN_TIMEOUT_SECS"));
        assert!(parse_database_url("mysql://x").unwrap_err().contains("PM_DATABASE_URL"));
    }

    #[test]
    fn parses_valid_values() {
        assert_eq!(parse_bind("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse::<SocketAddr>().unwrap());
        assert_eq!(parse_shutdown_timeout("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_log(DEFAULT_LOG).unwrap(), DEFAULT_LOG);
    }
}
