//! `skiff`: the command line of a skiff site. A clap front end only: every verb calls a
//! library function of `skiff-site-controller`, and every error is printed as one sentence
//! with a hint, never a backtrace.

mod apply;
mod completion;
mod debug;
mod demo;
mod logging;
mod offline;
mod output;
mod reload;
mod service;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::run::{RunOptions, run_site};
use skiff_site_controller::site::{self, Created, SiteOptions};
use skiff_site_controller::token::{self as tokens, IssueOptions, RedeemOptions};
use skiff_site_controller::{SiteError, error_chain};

/// skiff: a Virtual Application Network. Sites linked over mutual TLS; a service at one site
/// reachable at every other.
#[derive(Parser)]
#[command(name = "skiff", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: logging::LogArgs,
}

/// The site folder, taken by every verb.
#[derive(Args, Clone)]
struct DirArg {
    /// The site folder [default: $XDG_DATA_HOME/skiff, or /var/lib/skiff for root]
    #[arg(long, env = "SKIFF_DIR", global = true)]
    dir: Option<PathBuf>,
}

impl DirArg {
    /// Every verb's folder, checked first: as root in another user's folder (a service's),
    /// entries that user swapped for links or FIFOs are refused before the verb acts.
    fn folder(&self) -> SiteFolder {
        let folder = SiteFolder::new(self.dir.clone().unwrap_or_else(SiteFolder::default_root));
        if let Err(e) = folder.check_safe_for_root() {
            logging::report_error(&error_chain(&e), e.hint().as_deref());
            std::process::exit(1);
        }
        folder
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create, run, inspect and delete the site in a folder.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Issue and redeem link tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List, delete, revoke and renew links.
    #[command(subcommand)]
    Link(LinkCommand),
    /// Ports here that send connections to a routing key.
    #[command(subcommand)]
    Listener(ServiceCommand),
    /// Backends here that serve a routing key.
    #[command(subcommand)]
    Connector(ServiceCommand),
    /// The whole network as this site sees it.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Gather what a bug report needs.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Create or update listeners, connectors, links and the site's settings from YAML files
    /// (the resources `skiff get` prints); nothing is written unless every document is valid.
    Apply(apply::ApplyArgs),
    /// Delete the listeners, connectors and links named in YAML files.
    Delete(apply::DeleteArgs),
    /// Print listeners, connectors, links or the site as YAML (what apply -f takes) or JSON.
    Get(apply::GetArgs),
    /// Two sites on this machine, linked with a token, a service reached across them.
    Demo,
    /// Print the version and link protocol version.
    Version,
    /// Print the shell completion script (bash, zsh or fish) on stdout.
    Completion {
        /// The shell.
        shell: completion::Shell,
    },
}

#[derive(Subcommand)]
enum SiteCommand {
    /// Create a site (or update the settings of the site of this name in the folder).
    Create {
        /// The site's name (a DNS label).
        name: String,
        /// Accept links from other sites (and serve token redemptions).
        #[arg(long)]
        enable_link_access: bool,
        /// Host name or address other sites use to reach this one; repeat for several.
        #[arg(long = "link-host")]
        link_host: Vec<String>,
        /// Port of link access (TCP and UDP) [default: 45671].
        #[arg(long)]
        link_port: Option<u16>,
        /// Edge site: dial out only, never carry transit traffic.
        #[arg(long)]
        edge: bool,
        /// The new site's id (the one an offline link file names) [default: a random id].
        #[arg(long)]
        id: Option<skiff_certs::SiteId>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Run the site in the foreground until SIGINT or SIGTERM; SIGHUP reloads its folder.
    Run {
        /// Also serve the admin API on this TCP address (e.g. 127.0.0.1:9090).
        #[arg(long)]
        admin_address: Option<SocketAddr>,
        /// Run inside Kubernetes: settings, identity, links and services come from the API of
        /// one namespace (see docs/kubernetes.md); the folder is rebuilt from it at start.
        #[arg(long)]
        kubernetes: bool,
        /// The namespace (default: POD_NAMESPACE, else the pod's service account namespace).
        #[arg(long, requires = "kubernetes")]
        namespace: Option<String>,
        /// Ports the router pod's listeners for keys served elsewhere may use: FIRST-LAST.
        #[arg(long, requires = "kubernetes", default_value = "20000-29999", value_parser = parse_port_range)]
        listener_ports: std::ops::RangeInclusive<u16>,
        /// A host other sites dial, carried by tokens before the site ConfigMap's linkHosts
        /// and the link Service's load balancer addresses (repeatable).
        #[arg(long = "link-host", requires = "kubernetes")]
        link_hosts: Vec<String>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Show the running site; exits 0 only if it runs and answers.
    Status {
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Ask the running site to re-read its folder (as SIGHUP does) and print what changed.
    Reload {
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Delete the site: its identity, links and grants. Refused while it runs.
    Delete {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Run the site as a hardened systemd service: system user, folder ownership, unit file,
    /// systemctl enable --now. Needs root unless --print or --unit-dir DIR.
    InstallService {
        #[command(flatten)]
        args: service::InstallServiceArgs,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Write a token that lets another site link to this one.
    Issue {
        /// Where to write the token (0600); `-` for standard output.
        file: String,
        /// How long the token may be redeemed (e.g. 15m, 2h, 1d).
        #[arg(long, default_value = "15m")]
        expiration_window: String,
        /// How many sites may redeem it.
        #[arg(long, default_value_t = 1)]
        redemptions_allowed: u32,
        /// Cost of links made with it.
        #[arg(long, default_value_t = 1)]
        cost: u32,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Redeem a token: link this site to the site that issued it. An offline link file
    /// (skiff link generate) is installed as it is, without a network.
    Redeem {
        /// The token or offline link file; `-` for standard input.
        file: String,
        /// Name of the link [default: the issuing site's name].
        #[arg(long)]
        name: Option<String>,
        /// Cost of the link [default: the token's].
        #[arg(long)]
        cost: Option<u32>,
        /// quic, tls or auto (QUIC, falling back to TLS over TCP) [default: auto, or the
        /// offline link file's].
        #[arg(long)]
        transport: Option<String>,
        /// Redeem and link through this HTTP proxy (CONNECT): http://host:port or
        /// http://user:password@host:port. The link is then TLS over TCP.
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Write an offline link file for a site that cannot reach this one's grant endpoint: a
    /// certificate signed in advance with its private key. Prefer tokens when you can.
    Generate {
        #[command(flatten)]
        args: offline::GenerateArgs,
        #[command(flatten)]
        dir: DirArg,
    },
    /// List this site's links (outbound and inbound) with their status.
    List {
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Delete an outbound link: it closes at once.
    Delete {
        /// The link's name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// At the accepting site: revoke a site that linked here. Its links close at once; its
    /// re-dials and certificate renewals are refused, and this site stops dialling it too.
    Revoke {
        /// The linked site's name, id, or id prefix (8 characters or more).
        site: String,
        /// Undo a revocation: the site may link and renew again.
        #[arg(long)]
        undo: bool,
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Renew the client certificate of outbound links at their issuers (all links, or the
    /// links to the peer of NAME). Established links stay up; the next dial uses the new
    /// certificate.
    Renew {
        /// A link's name [default: every outbound link].
        name: Option<String>,
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Create one (or replace the one of that name).
    Create {
        /// Its name (a DNS label); also the routing key unless --routing-key says otherwise.
        name: String,
        /// Listener: the port to listen on (0: any free port). Connector: the backend's port.
        port: u16,
        /// The routing key [default: NAME].
        #[arg(long)]
        routing_key: Option<String>,
        /// Listener: bind address [default: 0.0.0.0]. Connector: backend host [default: 127.0.0.1].
        #[arg(long)]
        host: Option<String>,
        /// tcp: connections. http: HTTP/1.1 and h2c, routed request by request (a connector's
        /// backend speaks HTTP/1.1). http2: the same, with an HTTP/2 backend (gRPC). udp:
        /// datagrams, a flow per client address (docs/udp.md).
        #[arg(
            long = "type",
            default_value = "tcp",
            value_name = "tcp|http|http2|udp"
        )]
        protocol: String,
        /// Listener only: what keeps a client on one site while it stays reachable: none,
        /// client-ip (tcp, udp), header:NAME or cookie:NAME (http, http2) [default: none]
        /// (docs/affinity.md).
        #[arg(long, value_name = "none|client-ip|header:NAME|cookie:NAME")]
        affinity: Option<String>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// List them with their status.
    List {
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Delete one; connections in progress through others are not disturbed.
    Delete {
        /// Its name.
        name: String,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Every site, its links and every routing key with the sites that serve it.
    Status {
        /// `json` for scripts.
        #[arg(long)]
        output: Option<output::Format>,
        #[command(flatten)]
        dir: DirArg,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Write one .tar.gz (0600) with the site's status, metrics, recent log lines and
    /// configuration, without private keys, grant codes or proxy passwords; works on a
    /// stopped site too (configuration only).
    Dump {
        /// Where to write it; `-` for standard output.
        file: String,
        #[command(flatten)]
        dir: DirArg,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    skiff_certs::install_crypto_provider();
    let cli: Cli = logging::parse_args();
    let quiet = !matches!(cli.command, Command::Site(SiteCommand::Run { .. }));
    logging::init(&cli.log, !quiet);
    if !quiet {
        raise_open_file_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            logging::report_error(&format!("could not start the async runtime: {e}"), None);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(&error_chain(&e), e.hint().as_deref());
            ExitCode::FAILURE
        }
    }
}

/// Keeps glibc's allocator from handing memory back to the kernel after every burst. A
/// router allocates and frees 64 KiB buffers (link frames) thousands of times a second;
/// with glibc's defaults each free at the top of the heap trimmed it (`madvise`) and the next
/// allocation faulted the pages back in, a tenth of the router's CPU under load
/// (docs/benchmarks.md, "Where the time goes"). Free memory is now kept up to 4 MiB per
/// arena, allocations up to 512 KiB come from the heap, and one arena per CPU (2 to 8) serves
/// all threads (fewer half-empty heaps). An operator's own `GLIBC_TUNABLES` or `MALLOC_*`
/// settings win: then nothing is changed.
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator_set = std::env::vars_os()
            .any(|(k, _)| k == "GLIBC_TUNABLES" || k.to_string_lossy().starts_with("MALLOC_"));
        if operator_set {
            return;
        }
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        // SAFETY: mallopt only changes allocator parameters; called before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, for `site run`: the
/// router serves as many clients at once as the soft limit allows (docs/flows.md), and
/// systemd's default soft limit (1 024) would hold a busy site to ~480 while its hard limit
/// (524 288) allows far more. An operator's lower hard limit (`LimitNOFILE`, `prlimit`) is
/// kept as it is.
#[allow(unsafe_code)]
fn raise_open_file_limit() {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write only the struct passed, which lives
        // on this stack frame.
        let raised = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0
                || limit.rlim_cur >= limit.rlim_max
            {
                return;
            }
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(before)
            } else {
                Err(before)
            }
        };
        match raised {
            Ok(before) => tracing::debug!(
                from = before,
                to = limit.rlim_max,
                "raised the open-file limit to its hard limit"
            ),
            Err(soft) => tracing::warn!(
                soft,
                "could not raise the open-file limit; clients beyond what it allows wait in \
                 the kernel's queue"
            ),
        }
    }
}

async fn execute(command: Command) -> Result<ExitCode, SiteError> {
    match command {
        Command::Site(c) => site_command(c).await,
        Command::Token(c) => token_command(c).await,
        Command::Link(c) => link_command(c).await,
        Command::Listener(c) => service_command(output::Service::Listener, c).await,
        Command::Connector(c) => service_command(output::Service::Connector, c).await,
        Command::Network(NetworkCommand::Status { output, dir }) => {
            output::network_status(&dir.folder(), output).await
        }
        Command::Debug(DebugCommand::Dump { file, dir }) => debug::dump(&dir.folder(), &file).await,
        Command::Apply(args) => apply::apply(args).await,
        Command::Delete(args) => apply::delete(args).await,
        Command::Get(args) => apply::get(args).await,
        Command::Demo => demo::run().await,
        Command::Completion { shell } => Ok(completion::print(shell, Cli::command())),
        Command::Version => {
            println!(
                "skiff {} (link protocol {})",
                env!("CARGO_PKG_VERSION"),
                skiff_router::wire::PROTOCOL_VERSION
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn site_command(c: SiteCommand) -> Result<ExitCode, SiteError> {
    match c {
        SiteCommand::Create {
            name,
            enable_link_access,
            link_host,
            link_port,
            edge,
            id,
            dir,
        } => {
            let folder = dir.folder();
            let opts = SiteOptions {
                link_access: enable_link_access,
                link_hosts: link_host,
                link_port,
                edge,
            };
            let (s, how) = site::create_site_with_id(&folder, &name, &opts, id)?;
            let verb = match how {
                Created::New => "created",
                Created::Updated => "updated",
            };
            println!(
                "site {name:?} {verb} in {} (id {})",
                folder.root().display(),
                s.spec.id
            );
            if s.spec.link_access {
                println!(
                    "link access on port {} for hosts {}",
                    s.spec.link_port,
                    s.spec.link_hosts.join(", ")
                );
            }
            if how == Created::Updated && folder.is_locked() {
                println!("the site is running: restart it to apply the new settings");
            } else {
                println!(
                    "start it with: skiff site run --dir {}",
                    folder.root().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Run {
            admin_address,
            kubernetes: true,
            namespace,
            listener_ports,
            link_hosts,
            dir,
        } => {
            use skiff_site_controller::kubernetes::{
                KubeOptions, namespace_from_environment, run_kubernetes_site,
            };
            let namespace = namespace_from_environment(namespace).ok_or_else(|| {
                SiteError::InvalidArgument(
                    "no namespace: pass --namespace, or set POD_NAMESPACE (the Deployment in deploy/ sets it)".into(),
                )
            })?;
            let mut opts = KubeOptions::new(namespace);
            opts.admin_address = admin_address;
            opts.listener_ports = listener_ports;
            opts.link_hosts = link_hosts;
            skiff_site_controller::run::ignore_hangups(
                "in Kubernetes the API is the record and the site follows it by itself",
            )?;
            run_kubernetes_site(dir.folder(), opts, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Run {
            admin_address, dir, ..
        } => {
            let folder = dir.folder();
            run_site(
                folder,
                RunOptions {
                    admin_address,
                    ..Default::default()
                },
                shutdown_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Status { output, dir } => output::site_status(&dir.folder(), output).await,
        SiteCommand::Reload { output, dir } => reload::reload(&dir.folder(), output).await,
        SiteCommand::Delete { dir } => {
            let name = site::delete_site(&dir.folder())?;
            println!("site {name:?} deleted");
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::InstallService { args, dir } => service::install_service(&dir.folder(), args),
    }
}

async fn token_command(c: TokenCommand) -> Result<ExitCode, SiteError> {
    match c {
        TokenCommand::Issue {
            file,
            expiration_window,
            redemptions_allowed,
            cost,
            dir,
        } => {
            let window = skiff_certs::parse_duration(&expiration_window)
                .map_err(|e| SiteError::InvalidArgument(format!("--expiration-window: {e}")))?;
            let folder = dir.folder();
            let token = tokens::issue_token(
                &folder,
                &IssueOptions {
                    expiration_window: window,
                    redemptions_allowed,
                    cost,
                },
            )
            .await?;
            let yaml = token.to_yaml();
            if file == "-" {
                print!("{yaml}");
            } else {
                let path = PathBuf::from(&file);
                skiff_site_controller::folder::write_atomic(
                    &path,
                    yaml.as_bytes(),
                    skiff_site_controller::folder::SECRET_MODE,
                )?;
                eprintln!(
                    "token written to {file}: redeemable {redemptions_allowed} time(s) until {}",
                    token.spec.expires_at.as_deref().unwrap_or("?")
                );
                eprintln!("redeem it at the other site with: skiff token redeem {file}");
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Redeem {
            file,
            name,
            cost,
            transport,
            proxy,
            dir,
        } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .take(1024 * 1024)
                    .read_to_string(&mut s)
                    .map_err(|e| {
                        SiteError::io("read", std::path::Path::new("standard input"), e)
                    })?;
                s
            } else {
                // A token or link file is a few KiB: a FIFO or /dev/zero given by mistake is
                // refused after 1 MiB instead of read without end.
                let path = std::path::Path::new(&file);
                let mut s = String::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(1024 * 1024 + 1).read_to_string(&mut s))
                    .map_err(|e| SiteError::io("read", path, e))?;
                if s.len() > 1024 * 1024 {
                    return Err(SiteError::InvalidArgument(format!(
                        "{file} holds more than 1 MiB: it is not a token or link file"
                    )));
                }
                s
            };
            let folder = dir.folder();
            let link = tokens::redeem(
                &folder,
                &text,
                &RedeemOptions {
                    name,
                    cost,
                    transport,
                    proxy,
                },
            )
            .await?;
            if link.spec.proxy.is_some() {
                eprintln!(
                    "note: the link goes through the proxy: TLS over TCP (an HTTP proxy tunnels TCP; QUIC is UDP)"
                );
            }
            println!(
                "link {:?} to site {:?} created ({}, cost {})",
                link.metadata.name,
                link.spec.peer_site_name,
                link.spec.endpoints.join(", "),
                link.spec.cost
            );
            if file != "-" && folder.link_own_key_file(&link.metadata.name).is_file() {
                eprintln!(
                    "note: {file} holds the link's private key, now also in {}: delete {file} (e.g. shred -u {file})",
                    folder.link_own_key_file(&link.metadata.name).display()
                );
            }
            if folder.is_locked() {
                println!("check it with: skiff link list");
            } else {
                println!("the site is not running: it dials when started with: skiff site run");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn link_command(c: LinkCommand) -> Result<ExitCode, SiteError> {
    match c {
        LinkCommand::List { output, dir } => output::link_list(&dir.folder(), output).await,
        LinkCommand::Generate { args, dir } => offline::generate(args, &dir.folder()).await,
        LinkCommand::Delete { name, dir } => {
            let folder = dir.folder();
            site::delete_link(&folder, &name)?;
            tokens::reload_if_running(&folder).await?;
            println!("link {name:?} deleted");
            Ok(ExitCode::SUCCESS)
        }
        LinkCommand::Revoke {
            site,
            undo: true,
            output,
            dir,
        } => {
            let r = tokens::unrevoke(&dir.folder(), &site).await?;
            let s = &r.site.spec;
            if output == Some(output::Format::Json) {
                let v = serde_json::json!({
                    "site": s.site_name,
                    "id": s.site_id.to_string(),
                    "revoked": false,
                    "wasRevoked": r.newly,
                    "applied": r.applied,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            if r.newly {
                println!(
                    "site {:?} ({}) is no longer revoked",
                    s.site_name, s.site_id
                );
            } else {
                println!("site {:?} ({}) was not revoked", s.site_name, s.site_id);
            }
            if r.applied {
                println!("it may link and renew again; this site's links to it are dialled again");
            } else {
                println!("the site is not running: this holds from its next start");
            }
            Ok(ExitCode::SUCCESS)
        }
        LinkCommand::Revoke {
            site,
            undo: false,
            output,
            dir,
        } => {
            let r = tokens::revoke(&dir.folder(), &site).await?;
            let s = &r.site.spec;
            if output == Some(output::Format::Json) {
                let v = serde_json::json!({
                    "site": s.site_name,
                    "id": s.site_id.to_string(),
                    "revoked": true,
                    "revokedAt": s.revoked_at,
                    "alreadyRevoked": !r.newly,
                    "applied": r.applied,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(ExitCode::SUCCESS);
            }
            let when = s.revoked_at.as_deref().unwrap_or("earlier");
            if r.newly {
                println!("site {:?} ({}) revoked", s.site_name, s.site_id);
            } else {
                println!(
                    "site {:?} ({}) was already revoked (at {when})",
                    s.site_name, s.site_id
                );
            }
            if r.applied {
                println!(
                    "its links are closed; its re-dials and renewals are refused, and this site does not dial it (undo with: skiff link revoke {} --undo)",
                    s.site_id
                );
            } else {
                println!("the site is not running: the revocation holds from its next start");
            }
            Ok(ExitCode::SUCCESS)
        }
        LinkCommand::Renew { name, output, dir } => {
            let folder = dir.folder();
            let selection = match &name {
                Some(n) => tokens::RenewSelection::Link(n),
                None => tokens::RenewSelection::All,
            };
            let outcomes = tokens::renew_links(&folder, selection).await?;
            let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
            if output == Some(output::Format::Json) {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&outcomes).unwrap_or_default()
                );
            } else if outcomes.is_empty() {
                println!("no outbound links: nothing to renew");
            } else {
                for o in outcomes.iter().filter(|o| o.error.is_none()) {
                    println!(
                        "link {} (to {}): renewed, serial {}, expires {}; the old certificate links until {}",
                        o.links.join(", "),
                        o.peer_site_name,
                        o.serial.as_deref().unwrap_or_default(),
                        o.expires.as_deref().unwrap_or_default(),
                        o.previous_valid_until.as_deref().unwrap_or_default()
                    );
                }
            }
            let not_renewed: Vec<String> = outcomes
                .iter()
                .filter_map(|o| {
                    let e = o.error.as_ref()?;
                    Some(format!(
                        "link {} (to {}): not renewed: {e}",
                        o.links.join(", "),
                        o.peer_site_name
                    ))
                })
                .collect();
            // The renewed certificates are stored whatever happens now: say so first, then
            // hand them to the running site.
            let mut reload_failed = false;
            if outcomes.iter().any(|o| o.error.is_none())
                && let Err(e) = tokens::reload_if_running(&folder).await
            {
                reload_failed = true;
                logging::report_error(
                    &format!(
                        "the renewed certificates are stored in the link files, but the running site did not take them: {}",
                        skiff_site_controller::error_chain(&e)
                    ),
                    Some(
                        "its established links are unaffected; it uses the new certificates after: skiff site run (restart), or the next command that reloads it",
                    ),
                );
            }
            if failed > 0 {
                logging::report_errors(
                    &not_renewed,
                    Some(
                        "a link that was not renewed keeps its certificate and works until it expires; check that the issuing site runs and has not revoked this one, then retry",
                    ),
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(if reload_failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn service_command(kind: output::Service, c: ServiceCommand) -> Result<ExitCode, SiteError> {
    use skiff_site_controller::services::{self, Saved};
    match c {
        ServiceCommand::Create {
            name,
            port,
            routing_key,
            host,
            protocol,
            affinity,
            dir,
        } => {
            let folder = dir.folder();
            let (key, saved, where_) = match kind {
                output::Service::Listener => {
                    let (l, saved) = services::create_listener(
                        &folder,
                        &name,
                        port,
                        routing_key.as_deref(),
                        host.as_deref(),
                        &protocol,
                        affinity.as_deref(),
                    )?;
                    let key = l.spec.routing_key.clone().unwrap_or_default();
                    let mut where_ = format!("{}:{}", l.spec.host, l.spec.port);
                    if l.spec.protocol != "tcp" {
                        where_.push_str(&format!(" ({})", l.spec.protocol));
                    }
                    if let Some(a) = &l.spec.affinity {
                        where_.push_str(&format!(" with affinity {a}"));
                    }
                    (key, saved, where_)
                }
                output::Service::Connector => {
                    if let Some(a) = &affinity {
                        return Err(SiteError::InvalidArgument(format!(
                            "--affinity {a} is a listener's setting: a connector serves whichever \
                             site's listener sends it a flow; give --affinity to `skiff listener \
                             create` at the sites where clients connect"
                        )));
                    }
                    let (c, saved) = services::create_connector(
                        &folder,
                        &name,
                        port,
                        routing_key.as_deref(),
                        host.as_deref(),
                        &protocol,
                    )?;
                    let mut where_ = format!("{}:{}", c.spec.host, c.spec.port);
                    if c.spec.protocol != "tcp" {
                        where_.push_str(&format!(" ({})", c.spec.protocol));
                    }
                    (c.spec.routing_key.clone(), saved, where_)
                }
            };
            let verb = match saved {
                Saved::Created => "created",
                Saved::Updated => "updated",
            };
            let running = tokens::reload_if_running(&folder).await?;
            println!("{kind} {name:?} {verb}: {where_} <-> routing key {key:?}");
            if running && let Some(reason) = output::service_error(kind, &folder, &name).await {
                return Err(SiteError::InvalidArgument(format!(
                    "{kind} {name:?} is saved but the running site cannot use it: {reason}"
                )));
            }
            if !running {
                println!(
                    "the site is not running: it applies this when started with: skiff site run"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ServiceCommand::List { output, dir } => {
            output::service_list(kind, &dir.folder(), output).await
        }
        ServiceCommand::Delete { name, dir } => {
            let folder = dir.folder();
            match kind {
                output::Service::Listener => services::delete_listener(&folder, &name)?,
                output::Service::Connector => services::delete_connector(&folder, &name)?,
            }
            tokens::reload_if_running(&folder).await?;
            println!("{kind} {name:?} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--listener-ports FIRST-LAST`.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad =
        || format!("{text:?} is not FIRST-LAST, two ports with FIRST <= LAST (e.g. 20000-29999)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
