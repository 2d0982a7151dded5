//! `pm-server`: runs the pm reference server (`serve`, the default), applies database
//! migrations (`migrate`), seeds the default permissions and roles (`init-permissions`) or
//! creates a user with a password (`create-user`). Configuration: see [`pm_server::config`].
//!
//! Logs go to stderr; `migrate`, `init-permissions` and `create-user` report their result on
//! stdout.

use std::io::IsTerminal as _;

// The server allocates many small, short-lived objects per request (rows, JSON); mimalloc's
// thread-local free lists cut the allocator's share of CPU time under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use pm_core::Pm;
use pm_core::authz::AllowAll;
use pm_core::event::{Actor, Origin};
use pm_core::model::{Email, Name};
use pm_core::service::NewUser;
use pm_core::store::Stores;
use pm_permissions::PermissionService;
use pm_permissions::store::AuthzStores;
use pm_server::AppState;
use pm_server::auth::store::AuthStore;
use pm_server::auth::{Auth, password, secret};
use pm_server::config::Config;
use tokio::sync::watch;

mod cli;

use cli::{Cli, Command, CreateUser};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(cli.config.env_filter())
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for journald/log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command_or_default() {
        Command::Serve => serve(&cli.config).await,
        Command::Migrate => migrate(&cli.config).await,
        Command::InitPermissions => init_permissions(&cli.config).await,
        Command::InitIntegrations => init_integrations(&cli.config).await,
        Command::CreateUser(args) => create_user(&cli.config, &args).await,
    }
}

/// The configured database with its schema up to date.
struct Opened {
    /// The process's database: every store below (and the workflow engine's, the realtime
    /// broker's `NOTIFY`s) shares its one PostgreSQL pool.
    database: pm_server::db::Database,
    stores: Stores,
    auth_store: Arc<dyn AuthStore>,
    pwa_stores: pm_server::pwa::store::PwaStores,
    authz_stores: AuthzStores,
    realtime_stores: pm_realtime::store::RealtimeStores,
    integration_stores: pm_integrations::store::IntegrationStores,
}

/// Opens the configured database and brings its schema up to date: pm-core's tables, then
/// pm-server's authentication tables (which refer to pm-core's users), then pm-permissions'
/// tables, then pm-realtime's, then pm-integrations' (each crate tracks its own migrations).
/// On PostgreSQL all of them share one pool of `PM_DATABASE_POOL_SIZE` connections.
async fn open_and_migrate(config: &Config) -> anyhow::Result<Opened> {
    let url = config.database_url_redacted();
    let database =
        pm_server::db::Database::connect(&config.database_url, config.database_pool_size)
            .await
            .with_context(|| format!("opening database {url}"))?;
    let stores = database.core_stores().await.with_context(|| format!("opening database {url}"))?;
    stores
        .admin
        .migrate()
        .await
        .with_context(|| format!("migrating {} database {url}", stores.admin.backend()))?;
    let auth_store =
        database.auth_store().await.with_context(|| format!("opening the auth tables of {url}"))?;
    auth_store.migrate().await.with_context(|| format!("migrating the auth tables of {url}"))?;
    // The PWA tables are pm-server's too: the auth store's migrator created them already.
    let pwa_stores =
        database.pwa_stores().await.with_context(|| format!("opening the PWA tables of {url}"))?;
    let authz_stores = database
        .authz_stores()
        .await
        .with_context(|| format!("opening the permission tables of {url}"))?;
    authz_stores
        .admin
        .migrate()
        .await
        .with_context(|| format!("migrating the permission tables of {url}"))?;
    let realtime_stores = database
        .realtime_stores()
        .await
        .with_context(|| format!("opening the realtime tables of {url}"))?;
    realtime_stores
        .admin
        .migrate()
        .await
        .with_context(|| format!("migrating the realtime tables of {url}"))?;
    let integration_stores = database
        .integration_stores()
        .await
        .with_context(|| format!("opening the integration tables of {url}"))?;
    integration_stores
        .admin
        .migrate()
        .await
        .with_context(|| format!("migrating the integration tables of {url}"))?;
    Ok(Opened {
        database,
        stores,
        auth_store,
        pwa_stores,
        authz_stores,
        realtime_stores,
        integration_stores,
    })
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let Opened { stores, .. } = open_and_migrate(config).await?;
    println!(
        "migrated {} database {}: all pm-core, pm-server, pm-permissions, pm-realtime and pm-integrations migrations applied, schema is up to date",
        stores.admin.backend(),
        config.database_url_redacted()
    );
    Ok(())
}

/// `init-permissions`: seeds what is missing of the defaults and says what it created.
async fn init_permissions(config: &Config) -> anyhow::Result<()> {
    let Opened { authz_stores, .. } = open_and_migrate(config).await?;
    let service = PermissionService::open(authz_stores, pm_server::authz::service_config())
        .await
        .context("loading the permission engine")?;
    let report =
        service.seed_defaults(&Actor::System).await.context("seeding the default permissions")?;
    let db = config.database_url_redacted();
    if report.is_empty() {
        println!(
            "nothing to create in {db}: the default permissions, templates and roles already exist"
        );
        return Ok(());
    }
    println!("initialized permissions in {db}:");
    if !report.permissions.is_empty() {
        println!(
            "created {} permissions: {}",
            report.permissions.len(),
            report.permissions.join(", ")
        );
    }
    if !report.templates.is_empty() {
        println!(
            "created {} role templates: {}",
            report.templates.len(),
            report.templates.join(", ")
        );
    }
    if !report.roles.is_empty() {
        println!("created {} roles: {}", report.roles.len(), report.roles.join(", "));
    }
    Ok(())
}

/// `init-integrations`: registers the missing built-in providers and says which.
async fn init_integrations(config: &Config) -> anyhow::Result<()> {
    let Opened { integration_stores, .. } = open_and_migrate(config).await?;
    let registry = pm_integrations::providers::Registry::default();
    let created = pm_server::integrations::seed_providers(
        &integration_stores,
        &registry,
        pm_core::model::now(),
    )
    .await
    .context("seeding the integration providers")?;
    let db = config.database_url_redacted();
    if created.is_empty() {
        println!("nothing to create in {db}: the built-in integration providers already exist");
    } else {
        println!("created {} integration providers in {db}: {}", created.len(), created.join(", "));
    }
    Ok(())
}

/// `create-user`: creates the user (or finds one without a password) and sets its password.
async fn create_user(config: &Config, args: &CreateUser) -> anyhow::Result<()> {
    let email = Email::parse(&args.email).context("--email")?;
    let display_name = Name::parse(&args.name).context("--name")?;
    let (generated, password) = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
        (false, line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        (true, password::generate()?)
    };
    password::validate("password", &password).context("the password from stdin")?;
    let Opened { stores, auth_store, .. } = open_and_migrate(config).await?;
    let hash = password::hash(password.clone()).await?;
    let user = match stores.directory.find_user_by_email(&email).await? {
        // A user without a password (e.g. a registration whose credential write failed, or one
        // created by an integration) is completed rather than refused.
        Some(u) if auth_store.password_hash(u.id).await?.is_none() => u,
        Some(_) => anyhow::bail!("a user with e-mail {} already has a password", email.as_str()),
        None => {
            // The system origin is trusted; no permission engine is needed to ask.
            let pm = Pm::new(stores, Arc::new(AllowAll), pm_server::temp_blobs());
            pm.create_user(&Origin::system(), NewUser { email, display_name }).await?
        }
    };
    auth_store.create_credential(user.id, &hash, pm_core::model::now()).await?;
    println!(
        "created user {} <{}> (id {})",
        user.display_name.as_str(),
        user.email.as_str(),
        user.id.0
    );
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let Opened {
        database,
        stores,
        auth_store,
        pwa_stores,
        authz_stores,
        realtime_stores,
        integration_stores,
    } = open_and_migrate(config).await?;
    let permissions = pm_server::authz::start_permissions(authz_stores)
        .await
        .context("loading the permission engine")?;
    let jwt_secret =
        secret::jwt_secret(config.jwt_secret.as_deref(), &config.database_url, &*auth_store)
            .await
            .context("loading the JWT secret (PM_JWT_SECRET)")?;
    let vapid_key = pm_server::pwa::push::vapid_key(
        config.vapid_private_key.as_deref(),
        &config.database_url,
        &*auth_store,
    )
    .await
    .context("loading the VAPID key (PM_VAPID_PRIVATE_KEY)")?;
    let web_push = pm_server::pwa::push::WebPush::new(
        pm_server::pwa::webpush::Vapid::new(vapid_key, config.vapid_subject.clone()),
        config.target_policy(),
    );
    let auth = Auth::new(&jwt_secret, auth_store, config.auth_settings());
    let backend = stores.admin.backend();
    let listener = pm_server::bind_listener(config.bind, config.reuse_port).with_context(|| {
        if config.reuse_port {
            format!("binding {} (PM_BIND, with PM_REUSE_PORT)", config.bind)
        } else {
            format!("binding {} (PM_BIND)", config.bind)
        }
    })?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, backend, reuse_port = config.reuse_port, database = %config.database_url_redacted(), "pm-server listening");

    // The signal fans out twice: to axum (stop accepting, drain) and to the grace timer below.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let blobs = Arc::new(pm_core::blob::FsBlobStore::new(config.blob_dir()));
    let mut state = AppState::with_auth(stores, permissions, auth, blobs)
        .with_pwa(pwa_stores)
        .with_push(web_push);
    let _prune_sync_ops = pm_server::pwa::sync::spawn_pruning(state.pwa.clone());
    state.limiter = pm_server::ratelimit::RateLimiter::new(config.rate_limits());
    state.cors_origins = config.cors_origins();
    state.trusted_proxies = config.trusted_proxies();
    // One broker for everything that crosses instances: the hub's signals and the documents.
    let broker_kind = config.realtime_broker();
    let broker =
        pm_server::realtime::open_broker_on(broker_kind, &database, config.redis_url.as_deref())
            .await
            .with_context(|| {
                format!(
                    "connecting the {} realtime broker (PM_REALTIME_BROKER)",
                    broker_kind.as_str()
                )
            })?;
    // The document registry uses the realtime stores the hub gets (opened and migrated above).
    let doc_store = realtime_stores.docs.clone();
    state.realtime = pm_server::realtime::Realtime::start(pm_server::realtime::RealtimeSetup {
        stores: state.stores.clone(),
        authz: Arc::new(pm_server::authz::ServerAuthorizer::new(state.permissions.clone())),
        realtime_stores,
        broker: broker.clone(),
        config: pm_realtime::HubConfig {
            write_batch: config.ws_write_batch,
            ..pm_realtime::HubConfig::default()
        },
        sinks: vec![state.push_sink()],
    })
    .await
    .context("starting the realtime hub")?;
    let state = state.with_collab(doc_store, broker, pm_realtime::doc::CollabConfig::default());
    let keyring = config.keyring();
    if keyring.is_none() {
        tracing::warn!(
            "PM_ENCRYPTION_KEY is not set: integrations and webhook subscriptions (which hold \
             secrets) cannot be created"
        );
    }
    let integrations = pm_server::integrations::Integrations::new(
        integration_stores,
        keyring,
        config.target_policy(),
    );
    let oauth_clients =
        pm_server::config::oauth_clients(&integrations.registry, |v| std::env::var(v).ok())
            .map_err(anyhow::Error::msg)?;
    let integrations = match &config.oauth_redirect_url {
        Some(redirect) if !oauth_clients.is_empty() => {
            let providers: Vec<String> = oauth_clients.iter().map(|(k, _)| k.to_string()).collect();
            let i = integrations
                .with_oauth(
                    pm_integrations::oauth::OAuthSettings::new(redirect.clone()),
                    oauth_clients,
                )
                .context("configuring OAuth")?;
            if i.oauth.is_some() {
                tracing::info!(providers = %providers.join(", "), "OAuth connections enabled");
            }
            i
        }
        Some(_) => {
            tracing::warn!("PM_OAUTH_REDIRECT_URL is set but no PM_OAUTH_<PROVIDER>_CLIENT_ID is");
            integrations
        }
        None => integrations,
    };
    let seeded = pm_server::integrations::seed_providers(
        &integrations.stores,
        &integrations.registry,
        pm_core::model::now(),
    )
    .await
    .context("seeding the integration providers")?;
    if !seeded.is_empty() {
        tracing::info!(providers = %seeded.join(", "), "registered integration providers");
    }
    let mut integrations = integrations.with_pm(state.pm.clone());
    integrations.chat = pm_server::chat::ChatSettings::from_env(|v| std::env::var(v).ok())
        .map_err(anyhow::Error::msg)?;
    let _integration_workers = integrations.start(state.stores.events.clone());
    let _chat_workers =
        pm_server::chat::start(integrations.clone(), state.pm.clone(), state.stores.events.clone());
    let messages: Arc<dyn pm_workflows::ports::MessageSender> =
        Arc::new(pm_server::chat::SlackMessages::new(integrations.clone()));
    let state = state.with_integrations(integrations);
    // The workflow engine: consumes the event log from its durable cursor, resumes executions a
    // crash interrupted, fires timers.
    let smtp = config
        .smtp_url
        .clone()
        .map(|url| pm_server::workflows::SmtpSettings { url, from: config.smtp_from.clone() });
    let workflow_stores =
        database.workflow_stores().await.context("opening the workflow tables")?;
    let engine = pm_server::workflows::build_engine(
        workflow_stores,
        state.pm.clone(),
        state.permissions.clone(),
        smtp,
        Some(messages),
        Some(Arc::new(pm_server::workflows::InAppNotifier::new(
            state.realtime.clone(),
            state.pm.clone(),
        ))),
    )
    .await
    .context("starting the workflow engine (PM_SMTP_URL?)")?;
    let workflows = engine.clone().spawn();
    let state = state.with_workflows(engine);
    let collab = state.collab.clone();
    let server = pm_server::serve(listener, state, stopped(stop_rx.clone()));
    let grace = config.shutdown_timeout;
    let deadline = async move {
        stopped(stop_rx).await;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: draining in-flight requests");
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res.context("serving HTTP")?,
        () = deadline => {
            tracing::warn!("in-flight requests still running after {}; closing them", fmt_secs(grace));
        }
    }
    // Open documents compact and write their text back before the process exits.
    collab.shutdown(std::time::Duration::from_secs(5)).await;
    // Executions are durable: stopping mid-step only means the next start resumes them.
    workflows.abort();
    tracing::info!("pm-server stopped");
    Ok(())
}

/// Completes once the stop flag is raised (or its sender is gone, which only happens after).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Completes on the first SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
