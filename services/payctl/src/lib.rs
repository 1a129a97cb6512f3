//! payctl: the operator's command line (DESIGN.md §6). Verbs grow with the operator issues;
//! `token`, `migrate` and `topics create` are what the fleet needs to come up.

use clap::{Parser, Subcommand};
use paystream_domain::topics;
use paystream_kit::auth::{self, Role};
use paystream_kit::config::{DEFAULT_DATABASE_URL, DEFAULT_JWT_SECRET, DEFAULT_KAFKA};

#[derive(Debug, Parser)]
#[command(name = "payctl", about = "Operate a paystream fleet", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a JWT for dev and tests (HS256, PAYSTREAM_JWT_SECRET).
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[arg(long, env = "PAYSTREAM_JWT_SECRET", default_value = DEFAULT_JWT_SECRET, hide_env_values = true)]
        secret: String,
    },
    /// Apply the database migrations.
    Migrate {
        #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
        database_url: String,
    },
    /// Kafka topics of the fleet.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the contract topics and the retry topic of every consumer group (idempotent).
    Create {
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = DEFAULT_KAFKA)]
        bootstrap: String,
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Consumer groups of the fleet, each with its `<group>.retry` topic.
pub const CONSUMER_GROUPS: &[&str] = &[
    "api-ingress",
    "risk-engine",
    "psp-gateway",
    "order-store",
    "account-store",
    "validator",
];

/// Every topic the fleet uses: the contract topics plus one retry topic per consumer group.
pub fn fleet_topics() -> Vec<String> {
    let mut all: Vec<String> = topics::ALL.iter().map(|t| (*t).to_owned()).collect();
    all.extend(CONSUMER_GROUPS.iter().map(|g| topics::retry_topic(g)));
    all
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token {
            sub,
            role,
            ttl,
            secret,
        } => {
            println!("{}", auth::mint(&secret, &sub, role, ttl)?);
        }
        Command::Migrate { database_url } => {
            eprintln!("applying migrations ...");
            let pool = paystream_kit::db::connect(&database_url, 2).await?;
            paystream_kit::db::migrate(&pool).await?;
            eprintln!("migrations applied");
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    bootstrap,
                    partitions,
                    replication,
                },
        } => {
            let all = fleet_topics();
            let created = paystream_messaging::admin::ensure_topics(
                &bootstrap,
                &all,
                partitions,
                replication,
            )
            .await?;
            eprintln!(
                "{} topics present, {} created now",
                all.len(),
                created.len()
            );
            for t in created {
                eprintln!("  created {t}");
            }
        }
    }
    Ok(())
}
