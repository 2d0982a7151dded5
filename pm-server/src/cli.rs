//! The `pm-server` command line: subcommands over one shared [`Config`].
//!
//! `serve` is the default, so a bare `pm-server` (or `cargo run -p pm-server`) starts the
//! server.

use clap::{Parser, Subcommand};
use pm_server::config::Config;

/// pm reference server. Settings come from `PM_*` environment variables or the matching flags.
#[derive(Debug, Parser)]
#[command(name = "pm-server", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
}

/// A `pm-server` subcommand.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve HTTP until SIGINT/SIGTERM (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Apply pending migrations, then register the default permissions, role templates and
    /// system roles (admin, project_manager, team_member, viewer) that are missing, and print
    /// what was created. Idempotent: a second run creates nothing.
    InitPermissions,
    /// Apply pending migrations, then register the built-in integration providers (GitHub,
    /// Jira, Slack, Google Calendar, Outlook) that are missing, and print what was created.
    /// Idempotent: a second run creates nothing.
    InitIntegrations,
    /// Create a user who can log in with a password (works with any `PM_REGISTRATION`). For an
    /// existing user without a password, sets one.
    CreateUser(CreateUser),
}

/// Arguments of `create-user`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateUser {
    /// E-mail address (the login).
    #[arg(long)]
    pub email: String,
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Read the password from the first line of standard input instead of generating one
    /// (a generated password is printed once).
    #[arg(long)]
    pub password_stdin: bool,
}

impl Cli {
    /// The subcommand to run, defaulting to [`Command::Serve`].
    pub fn command_or_default(&self) -> Command {
        self.command.clone().unwrap_or(Command::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["pm-server"]).unwrap();
        assert_eq!(cli.command_or_default(), Command::Serve);
        let cli = Cli::try_parse_from(["pm-server", "migrate"]).unwrap();
        assert_eq!(cli.command_or_default(), Command::Migrate);
        let cli = Cli::try_parse_from(["pm-server", "init-permissions"]).unwrap();
        assert_eq!(cli.command_or_default(), Command::InitPermissions);
    }

    #[test]
    fn create_user_takes_email_name_and_password_stdin() {
        let cli = Cli::try_parse_from([
            "pm-server",
            "create-user",
            "--email",
            "a@example.com",
            "--name",
            "Ada",
            "--password-stdin",
        ])
        .unwrap();
        assert_eq!(
            cli.command_or_default(),
            Command::CreateUser(CreateUser {
                email: "a@example.com".into(),
                name: "Ada".into(),
                password_stdin: true,
            })
        );
        assert!(Cli::try_parse_from(["pm-server", "create-user", "--name", "Ada"]).is_err());
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "pm-server",
            "--bind",
            "127.0.0.1:9000",
            "serve",
            "--database-url",
            "sqlite://x.db",
        ])
        .unwrap();
        assert_eq!(cli.config.bind.port(), 9000);
        assert_eq!(cli.config.database_url, "sqlite://x.db");
    }

    #[test]
    fn bad_bind_names_the_variable() {
        let err = Cli::try_parse_from(["pm-server", "--bind", "nope"]).unwrap_err().to_string();
        assert!(err.contains("PM_BIND"), "{err}");
    }
}
