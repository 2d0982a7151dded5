//! Server configuration: one [`Config`] read from `PM_*` environment variables, each also
//! settable as a command-line flag (`--database-url`, `--bind`, `--log`,
//! `--shutdown-timeout-secs`, `--jwt-secret`, `--access-ttl-secs`, `--refresh-ttl-secs`,
//! `--registration`, `--realtime-broker`, `--redis-url`, ...); a flag wins over its variable.
//!
//! Values are validated while parsing, so a `Config` that exists is usable; every validation
//! error names the environment variable to fix.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::auth::{AuthSettings, Registration};

/// Default for `PM_DATABASE_URL`: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://pm.db";
/// Default for `PM_DATABASE_POOL_SIZE` (see [`crate::db::DEFAULT_POOL_SIZE`]).
pub const DEFAULT_DATABASE_POOL_SIZE: &str = "16";
/// Default for `PM_BIND`: loopback only, so a fresh install is not reachable from the network.
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default for `PM_LOG`: our own logs at `info`, sqlx's per-query logs silenced.
pub const DEFAULT_LOG: &str = "info,sqlx=warn";
/// Default for `PM_SHUTDOWN_TIMEOUT_SECS`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: &str = "10";
/// Default for `PM_ACCESS_TTL_SECS`: 15 minutes.
pub const DEFAULT_ACCESS_TTL_SECS: &str = "900";
/// Default for `PM_REFRESH_TTL_SECS`: 30 days.
pub const DEFAULT_REFRESH_TTL_SECS: &str = "2592000";
/// Default for `PM_REGISTRATION`.
pub const DEFAULT_REGISTRATION: &str = "open";
/// Default for `PM_WS_WRITE_BATCH`.
pub const DEFAULT_WS_WRITE_BATCH: &str = "64";
/// Largest `PM_WS_WRITE_BATCH`: beyond this one connection's burst only delays the others.
pub const MAX_WS_WRITE_BATCH: usize = 4096;

/// Everything the server needs to start. Parsed by clap (see the `pm-server` binary); the
/// arguments are `global`, so they are accepted before or after the subcommand.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Database to use: `sqlite://path.db` (created if missing) or `postgres://user:pass@host/db`.
    #[arg(long, value_name = "URL", env = "PM_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true,
          value_parser = parse_database_url, hide_env_values = true)]
    pub database_url: String,

    /// Most PostgreSQL connections this process opens for queries: one pool shared by every
    /// crate's tables. The instance also holds `LISTEN` connections of its own (see
    /// `pm_server::db::LISTEN_CONNECTIONS`); ignored for SQLite.
    #[arg(long = "database-pool-size", value_name = "N", env = "PM_DATABASE_POOL_SIZE",
          default_value = DEFAULT_DATABASE_POOL_SIZE, global = true, value_parser = parse_database_pool_size)]
    pub database_pool_size: u32,

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

    /// Secret signing access tokens (at least 32 bytes). When unset, one is generated once and
    /// kept with the database: `<sqlite file>.jwt-secret`, or the PostgreSQL table
    /// `server_secrets`.
    #[arg(long, value_name = "SECRET", env = "PM_JWT_SECRET", global = true,
          value_parser = parse_jwt_secret, hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Lifetime of access tokens, in seconds.
    #[arg(long = "access-ttl-secs", value_name = "SECS", env = "PM_ACCESS_TTL_SECS",
          default_value = DEFAULT_ACCESS_TTL_SECS, global = true, value_parser = parse_access_ttl)]
    pub access_ttl: Duration,

    /// Lifetime of refresh tokens, in seconds (each refresh issues a new one).
    #[arg(long = "refresh-ttl-secs", value_name = "SECS", env = "PM_REFRESH_TTL_SECS",
          default_value = DEFAULT_REFRESH_TTL_SECS, global = true, value_parser = parse_refresh_ttl)]
    pub refresh_ttl: Duration,

    /// Who may register: `open` (anyone) or `invite` (with a token from
    /// `POST /api/v1/auth/invites`).
    #[arg(long, value_name = "MODE", env = "PM_REGISTRATION", default_value = DEFAULT_REGISTRATION,
          global = true, value_parser = parse_registration)]
    pub registration: Registration,

    /// Directory for attachment bytes. Default: `<sqlite file>.blobs` next to a SQLite database,
    /// `./pm-blobs` for PostgreSQL.
    #[arg(long, value_name = "DIR", env = "PM_BLOB_DIR", global = true)]
    pub blob_dir: Option<std::path::PathBuf>,

    /// Requests per minute per credential (token or API key); 0 disables the limit.
    #[arg(
        long,
        value_name = "N",
        env = "PM_RATE_LIMIT_PER_MINUTE",
        default_value = "1200",
        global = true
    )]
    pub rate_limit_per_minute: u32,

    /// Requests per minute per client IP; 0 disables the limit.
    #[arg(
        long,
        value_name = "N",
        env = "PM_RATE_LIMIT_IP_PER_MINUTE",
        default_value = "3000",
        global = true
    )]
    pub rate_limit_ip_per_minute: u32,

    /// Origins allowed to call the API from a browser, comma-separated (`*` for any); empty
    /// (the default) sends no CORS headers.
    #[arg(
        long,
        value_name = "ORIGINS",
        env = "PM_CORS_ORIGINS",
        default_value = "",
        global = true
    )]
    pub cors_origins: String,

    /// Reverse proxies (comma-separated IPs or CIDRs, e.g. `127.0.0.1,10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client for per-IP rate limits and login throttling. Empty
    /// (the default): the TCP peer is the client.
    #[arg(long, value_name = "CIDRS", env = "PM_TRUSTED_PROXIES", default_value = "",
          global = true, value_parser = parse_trusted_proxies)]
    pub trusted_proxies: String,

    /// Broker sharing realtime presence/typing/cursors between instances: `memory` (a single
    /// instance), `postgres` (`LISTEN/NOTIFY` on the database) or `redis` (needs
    /// `PM_REDIS_URL`). Default: `postgres` on a PostgreSQL database, `memory` otherwise.
    #[arg(long = "realtime-broker", value_name = "KIND", env = "PM_REALTIME_BROKER", global = true,
          value_parser = parse_broker)]
    pub realtime_broker: Option<crate::realtime::BrokerKind>,

    /// Redis for `PM_REALTIME_BROKER=redis`, e.g. `redis://127.0.0.1:6379`.
    #[arg(
        long = "redis-url",
        value_name = "URL",
        env = "PM_REDIS_URL",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// Keys sealing integration tokens and webhook secrets at rest: comma-separated
    /// `key_id:base64` entries of 32-byte keys (`openssl rand -base64 32`), the first current,
    /// the others kept to open older secrets; a bare base64 key is named `k1`. When unset,
    /// integrations that hold secrets cannot be created.
    #[arg(long = "encryption-key", value_name = "KEYS", env = "PM_ENCRYPTION_KEY", global = true,
          value_parser = parse_encryption_key, hide_env_values = true)]
    pub encryption_key: Option<String>,

    /// Networks outbound webhooks may reach although they are not public (CIDRs or addresses,
    /// comma-separated), e.g. `10.1.0.0/16`. Loopback, private and link-local targets are
    /// refused otherwise.
    #[arg(long = "webhook-allow", value_name = "CIDRS", env = "PM_WEBHOOK_ALLOW", default_value = "",
          global = true, value_parser = parse_webhook_allow)]
    pub webhook_allow: String,

    /// SMTP server for workflow e-mail: `smtp://127.0.0.1:25` (plain, a local relay),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS) or `smtps://user:pass@host:465`
    /// (implicit TLS). No e-mail is sent without it: the e-mail action fails with a clear error.
    #[arg(long = "smtp-url", value_name = "URL", env = "PM_SMTP_URL", global = true)]
    pub smtp_url: Option<String>,
    /// Sender of workflow e-mail.
    #[arg(
        long = "smtp-from",
        value_name = "ADDRESS",
        env = "PM_SMTP_FROM",
        global = true,
        default_value = "pm <pm@localhost>"
    )]
    pub smtp_from: String,

    /// The VAPID private key for Web Push: base64url of the 32-byte P-256 scalar (as
    /// `web-push generate-vapid-keys` prints it). When unset, one is generated once and kept with
    /// the database: `<sqlite file>.vapid-key`, or the `server_secrets` table on PostgreSQL.
    /// Browsers' subscriptions are bound to it: changing it invalidates them.
    #[arg(long = "vapid-private-key", value_name = "KEY", env = "PM_VAPID_PRIVATE_KEY",
          global = true, value_parser = parse_vapid_key, hide_env_values = true)]
    pub vapid_private_key: Option<String>,
    /// The VAPID contact (`sub` claim) push services may use to reach the operator: a
    /// `mailto:` or `https:` URI.
    #[arg(long = "vapid-subject", value_name = "URI", env = "PM_VAPID_SUBJECT", global = true,
          default_value = crate::pwa::push::DEFAULT_SUBJECT, value_parser = parse_vapid_subject)]
    pub vapid_subject: String,

    /// The OAuth callback URL as providers reach it, i.e. this server's public
    /// `…/api/v1/oauth/callback` (register it with each provider's OAuth app). OAuth connections
    /// are off without it. Clients per provider come from `PM_OAUTH_<PROVIDER>_CLIENT_ID`,
    /// `_CLIENT_SECRET`, and optionally `_BASE_URL` (another origin for the provider's OAuth
    /// endpoints) and `_SCOPES` (comma-separated, replacing the provider's defaults).
    #[arg(long = "oauth-redirect-url", value_name = "URL", env = "PM_OAUTH_REDIRECT_URL",
          global = true, value_parser = parse_oauth_redirect_url)]
    pub oauth_redirect_url: Option<String>,

    /// Most WebSocket frames written to one connection before a flush (frames already queued
    /// for it go out in one `send`); 1 flushes each frame on its own.
    #[arg(long = "ws-write-batch", value_name = "N", env = "PM_WS_WRITE_BATCH",
          default_value = DEFAULT_WS_WRITE_BATCH, global = true, value_parser = parse_ws_write_batch)]
    pub ws_write_batch: usize,
    /// Bind the listener with `SO_REUSEPORT` (Linux/BSD), so several `pm-server` processes can
    /// listen on the same address and the kernel spreads connections over them (e.g. to hold
    /// more WebSockets than one process's open-file limit). Off by default: a second server on a
    /// taken port is then an error rather than a silent co-tenant. `true`/`false` (or `1`/`0`).
    #[arg(long = "reuse-port", value_name = "BOOL", env = "PM_REUSE_PORT", default_value = "false",
          global = true, value_parser = parse_reuse_port, action = clap::ArgAction::Set)]
    pub reuse_port: bool,
}

impl Config {
    /// Where attachment bytes live (see [`Config::blob_dir`]).
    pub fn blob_dir(&self) -> std::path::PathBuf {
        if let Some(d) = &self.blob_dir {
            return d.clone();
        }
        match self
            .database_url
            .strip_prefix("sqlite://")
            .or_else(|| self.database_url.strip_prefix("sqlite:"))
        {
            Some(path) if !path.contains(":memory:") => {
                let file = path.split('?').next().unwrap_or(path);
                std::path::PathBuf::from(format!("{file}.blobs"))
            }
            _ => std::path::PathBuf::from("pm-blobs"),
        }
    }

    /// The configured trusted proxies (validated when parsed).
    pub fn trusted_proxies(&self) -> crate::forwarded::TrustedProxies {
        crate::forwarded::TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default()
    }

    /// The configured CORS origins.
    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The configured rate limits.
    pub fn rate_limits(&self) -> crate::ratelimit::RateLimits {
        crate::ratelimit::RateLimits {
            per_credential: self.rate_limit_per_minute,
            per_ip: self.rate_limit_ip_per_minute,
        }
    }

    /// The realtime broker: `PM_REALTIME_BROKER`, or the default for the database.
    pub fn realtime_broker(&self) -> crate::realtime::BrokerKind {
        self.realtime_broker
            .unwrap_or_else(|| crate::realtime::BrokerKind::default_for(&self.database_url))
    }

    /// The keyring of `PM_ENCRYPTION_KEY`, if set. Cannot fail: validated on parse.
    pub fn keyring(&self) -> Option<pm_integrations::crypto::Keyring> {
        self.encryption_key.as_deref().and_then(|k| crate::integrations::parse_keyring(k).ok())
    }

    /// The outbound target policy of `PM_WEBHOOK_ALLOW`. Cannot fail: validated on parse.
    pub fn target_policy(&self) -> pm_integrations::ssrf::TargetPolicy {
        pm_integrations::ssrf::TargetPolicy::parse_allow_list(&self.webhook_allow)
            .unwrap_or_default()
    }

    /// The database URL with any password replaced by `***`, for logs and messages.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }

    /// The log filter, ready to install. Cannot fail: [`Config::log`] was validated on parse.
    pub fn env_filter(&self) -> EnvFilter {
        EnvFilter::try_new(&self.log).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG))
    }

    /// The authentication settings these values select (throttling keeps its defaults).
    pub fn auth_settings(&self) -> AuthSettings {
        AuthSettings {
            registration: self.registration,
            access_ttl: self.access_ttl,
            refresh_ttl: self.refresh_ttl,
            ..AuthSettings::default()
        }
    }
}

// Hand-written so the database password never reaches a log line through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &self.database_url_redacted())
            .field("database_pool_size", &self.database_pool_size)
            .field("bind", &self.bind)
            .field("log", &self.log)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("registration", &self.registration)
            .field("blob_dir", &self.blob_dir())
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("rate_limit_ip_per_minute", &self.rate_limit_ip_per_minute)
            .field("cors_origins", &self.cors_origins())
            .field("trusted_proxies", &self.trusted_proxies)
            .field("realtime_broker", &self.realtime_broker())
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("encryption_key", &self.keyring())
            .field("webhook_allow", &self.webhook_allow)
            .field("oauth_redirect_url", &self.oauth_redirect_url)
            .field("smtp_url", &self.smtp_url.as_deref().map(redact_url))
            .field("vapid_private_key", &self.vapid_private_key.as_ref().map(|_| "***"))
            .field("vapid_subject", &self.vapid_subject)
            .field("ws_write_batch", &self.ws_write_batch)
            .field("reuse_port", &self.reuse_port)
            .finish()
    }
}

fn parse_vapid_key(s: &str) -> Result<String, String> {
    crate::pwa::webpush::Vapid::parse_private(s).map(|_| s.trim().to_owned()).map_err(|_| {
        "PM_VAPID_PRIVATE_KEY (--vapid-private-key) must be base64url of a 32-byte P-256 private \
         key"
        .to_owned()
    })
}

fn parse_vapid_subject(s: &str) -> Result<String, String> {
    if (s.starts_with("mailto:") && s.len() > 7) || s.starts_with("https://") {
        Ok(s.to_owned())
    } else {
        Err("PM_VAPID_SUBJECT (--vapid-subject) must be a mailto: or https: URI".to_owned())
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

fn parse_database_pool_size(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n @ 1..=crate::db::MAX_POOL_SIZE) => Ok(n),
        _ => Err(format!(
            "PM_DATABASE_POOL_SIZE (--database-pool-size) must be a whole number from 1 to {}, \
             not {s:?}",
            crate::db::MAX_POOL_SIZE
        )),
    }
}

fn parse_broker(s: &str) -> Result<crate::realtime::BrokerKind, String> {
    crate::realtime::BrokerKind::parse(s).ok_or_else(|| {
        format!(
            "PM_REALTIME_BROKER (--realtime-broker) must be `memory`, `postgres` or `redis`, not {s:?}"
        )
    })
}

fn parse_encryption_key(s: &str) -> Result<String, String> {
    crate::integrations::parse_keyring(s).map(|_| s.to_owned()).map_err(|e| {
        format!(
            "PM_ENCRYPTION_KEY (--encryption-key) must be `key_id:base64` entries of 32-byte keys, \
             comma-separated, e.g. k1:$(openssl rand -base64 32) ({e})"
        )
    })
}

fn parse_trusted_proxies(s: &str) -> Result<String, String> {
    crate::forwarded::TrustedProxies::parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("PM_TRUSTED_PROXIES (--trusted-proxies): {e}"))
}

fn parse_webhook_allow(s: &str) -> Result<String, String> {
    pm_integrations::ssrf::TargetPolicy::parse_allow_list(s).map(|_| s.to_owned()).map_err(|e| {
        format!("PM_WEBHOOK_ALLOW (--webhook-allow) must be comma-separated CIDRs ({e})")
    })
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

fn parse_jwt_secret(s: &str) -> Result<String, String> {
    if s.len() >= crate::auth::secret::MIN_SECRET_LEN {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "PM_JWT_SECRET (--jwt-secret) must be at least {} bytes long (it is {}); \
             e.g. the output of `openssl rand -base64 48`",
            crate::auth::secret::MIN_SECRET_LEN,
            s.len()
        ))
    }
}

fn parse_ws_write_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ 1..=MAX_WS_WRITE_BATCH) => Ok(n),
        _ => Err(format!(
            "PM_WS_WRITE_BATCH (--ws-write-batch) must be a whole number from 1 to \
             {MAX_WS_WRITE_BATCH}, not {s:?}"
        )),
    }
}

fn parse_reuse_port(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("PM_REUSE_PORT (--reuse-port) must be `true` or `false`, not {s:?}")),
    }
}

fn parse_ttl(var: &str, flag: &str, s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(0) => Err(format!("{var} ({flag}) must be at least 1 second")),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(e) => Err(format!("{var} ({flag}) must be a whole number of seconds ({e})")),
    }
}

fn parse_access_ttl(s: &str) -> Result<Duration, String> {
    parse_ttl("PM_ACCESS_TTL_SECS", "--access-ttl-secs", s)
}

fn parse_refresh_ttl(s: &str) -> Result<Duration, String> {
    parse_ttl("PM_REFRESH_TTL_SECS", "--refresh-ttl-secs", s)
}

fn parse_registration(s: &str) -> Result<Registration, String> {
    match s {
        "open" => Ok(Registration::Open),
        "invite" => Ok(Registration::Invite),
        _ => Err(format!("PM_REGISTRATION (--registration) must be `open` or `invite`, not {s:?}")),
    }
}

fn parse_oauth_redirect_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "PM_OAUTH_REDIRECT_URL (--oauth-redirect-url) must be an http(s) URL such as \
             https://pm.example.com/api/v1/oauth/callback, not {s:?}"
        )),
    }
}

/// The OAuth clients configured in the environment (`var` reads a variable) for the providers
/// of `registry` that connect with OAuth: `PM_OAUTH_<KEY>_CLIENT_ID` (the key upper-cased, `-`
/// as `_`) enables one, with `_CLIENT_SECRET`, `_BASE_URL` and `_SCOPES`. Errors name the
/// variable.
pub fn oauth_clients(
    registry: &pm_integrations::providers::Registry,
    var: impl Fn(&str) -> Option<String>,
) -> Result<
    Vec<(pm_integrations::provider::ProviderKey, pm_integrations::oauth::OAuthClient)>,
    String,
> {
    use pm_integrations::crypto::Secret;
    use pm_integrations::oauth::OAuthClient;
    let mut clients = Vec::new();
    for p in registry.all() {
        let Some(mut config) = p.oauth() else { continue };
        let key = p.info().key;
        let prefix = format!("PM_OAUTH_{}", key.as_str().to_ascii_uppercase().replace('-', "_"));
        let get =
            |suffix: &str| var(&format!("{prefix}_{suffix}")).filter(|v| !v.trim().is_empty());
        let Some(client_id) = get("CLIENT_ID") else { continue };
        if let Some(scopes) = get("SCOPES") {
            config.scopes =
                scopes.split([',', ' ']).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        let mut client =
            OAuthClient::new(&config, client_id.trim(), get("CLIENT_SECRET").map(Secret::new))
                .map_err(|e| format!("{prefix}_CLIENT_ID: {e}"))?
                .with_scope_separator(p.scope_separator());
        if let Some(base) = get("BASE_URL") {
            client =
                client.with_base_url(base.trim()).map_err(|e| format!("{prefix}_BASE_URL: {e}"))?;
        }
        clients.push((key, client));
    }
    Ok(clients)
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
        assert!(parse_jwt_secret("short").unwrap_err().contains("PM_JWT_SECRET"));
        assert!(parse_access_ttl("0").unwrap_err().contains("PM_ACCESS_TTL_SECS"));
        assert!(parse_refresh_ttl("x").unwrap_err().contains("PM_REFRESH_TTL_SECS"));
        assert!(parse_registration("closed").unwrap_err().contains("PM_REGISTRATION"));
        assert!(parse_broker("kafka").unwrap_err().contains("PM_REALTIME_BROKER"));
        assert!(parse_ws_write_batch("0").unwrap_err().contains("PM_WS_WRITE_BATCH"));
        assert!(parse_ws_write_batch("5000").unwrap_err().contains("PM_WS_WRITE_BATCH"));
        assert!(parse_reuse_port("maybe").unwrap_err().contains("PM_REUSE_PORT"));
        for bad in ["0", "1001", "-1", "many", ""] {
            let err = parse_database_pool_size(bad).unwrap_err();
            assert!(err.contains("PM_DATABASE_POOL_SIZE"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn oauth_clients_come_from_the_environment() {
        let registry = pm_integrations::providers::Registry::default();
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert!(oauth_clients(&registry, env(&[])).unwrap().is_empty());
        let clients = oauth_clients(
            &registry,
            env(&[
                ("PM_OAUTH_GITHUB_CLIENT_ID", "gh-id"),
                ("PM_OAUTH_GITHUB_CLIENT_SECRET", "gh-secret"),
                ("PM_OAUTH_GITHUB_BASE_URL", "http://127.0.0.1:9"),
                ("PM_OAUTH_GITHUB_SCOPES", "repo, read:user"),
            ]),
        )
        .unwrap();
        assert_eq!(clients.len(), 1);
        let (key, c) = &clients[0];
        assert_eq!(key.as_str(), "github");
        assert_eq!(c.client_id, "gh-id");
        assert_eq!(c.token_url, "http://127.0.0.1:9/login/oauth/access_token");
        assert_eq!(c.scopes, ["repo", "read:user"]);
        let bad = oauth_clients(
            &registry,
            env(&[("PM_OAUTH_JIRA_CLIENT_ID", "j"), ("PM_OAUTH_JIRA_BASE_URL", "nope")]),
        );
        assert!(bad.unwrap_err().contains("PM_OAUTH_JIRA_BASE_URL"));
        assert!(
            parse_oauth_redirect_url("pm.example").unwrap_err().contains("PM_OAUTH_REDIRECT_URL")
        );
    }

    #[test]
    fn parses_valid_values() {
        assert_eq!(parse_bind("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse::<SocketAddr>().unwrap());
        assert_eq!(parse_shutdown_timeout("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_log(DEFAULT_LOG).unwrap(), DEFAULT_LOG);
        assert_eq!(parse_registration("invite").unwrap(), Registration::Invite);
        assert_eq!(parse_access_ttl(DEFAULT_ACCESS_TTL_SECS).unwrap(), Duration::from_secs(900));
        assert!(parse_jwt_secret(&"s".repeat(32)).is_ok());
        assert_eq!(parse_ws_write_batch(DEFAULT_WS_WRITE_BATCH).unwrap(), 64);
        assert_eq!(parse_ws_write_batch("1").unwrap(), 1);
        assert!(parse_reuse_port("1").unwrap());
        assert!(!parse_reuse_port("false").unwrap());
        assert_eq!(parse_database_pool_size(DEFAULT_DATABASE_POOL_SIZE).unwrap(), 16);
        assert_eq!(
            parse_database_pool_size(DEFAULT_DATABASE_POOL_SIZE).unwrap(),
            crate::db::DEFAULT_POOL_SIZE
        );
        assert_eq!(parse_database_pool_size("1000").unwrap(), 1000);
    }
}
