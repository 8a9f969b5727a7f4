//! `skiff site install-service`: the systemd unit that runs the site of a folder, with the
//! hardening of examples/systemd/skiff@.service, and its installation: the system user, the
//! folder given to it, the unit written atomically, `systemctl enable --now`.
//!
//! A folder `/var/lib/skiff/NAME` is run by the template `skiff@.service` as instance `NAME`
//! (systemd makes the folder, `StateDirectory=`); a folder anywhere else by a plain unit
//! `skiff-SITE.service` naming it. The unit grants `CAP_NET_BIND_SERVICE`, and nothing else,
//! only when the site's link port or one of its listeners' ports is below 1024.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::SiteError;
use crate::folder::{PUBLIC_MODE, SiteFolder, remove_file, write_atomic};
use crate::resources::validate_name;
use crate::services::list_listeners;
use crate::site::load_site;

/// Where units go unless `--unit-dir` says otherwise; only there does install-service run
/// `systemctl`.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
/// The folder under which sites are run by the template unit (systemd's `%S/skiff`).
pub const STATE_ROOT: &str = "/var/lib/skiff";
/// The system user the service runs as unless `--user` says otherwise.
pub const DEFAULT_USER: &str = "skiff";
/// The template unit's file name.
pub const TEMPLATE_UNIT: &str = "skiff@.service";
/// Where the binary is expected by the example unit.
pub const DEFAULT_BINARY: &str = "/usr/local/bin/skiff";
/// The drop-in that gives a template instance `CAP_NET_BIND_SERVICE`.
const LOW_PORTS_DROP_IN: &str = "50-low-ports.conf";
/// The drop-in that gives a template instance its own user or binary (`--user`, `--binary`
/// other than the template's): the template, shared by every instance, is never changed for
/// one of them.
const RUN_AS_DROP_IN: &str = "40-user-binary.conf";

/// What `skiff site install-service` was asked for.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The system user the service runs as (created when missing).
    pub user: String,
    /// The `skiff` binary the unit runs.
    pub binary: PathBuf,
    /// Where the unit files go.
    pub unit_dir: PathBuf,
    /// `systemctl enable --now` the unit (when systemd runs and the unit dir is the default).
    pub start: bool,
}

/// One file of a rendered service.
#[derive(Debug, Clone)]
pub struct UnitFile {
    /// Where it goes.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// A rendered service: the files to write and what they mean.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    /// The site's name.
    pub site: String,
    /// The folder, absolute.
    pub folder: PathBuf,
    /// The unit to enable (`skiff@west.service`, `skiff-west.service`).
    pub unit: String,
    /// True when the folder is run by the template unit.
    pub template: bool,
    /// Files to write, in order.
    pub files: Vec<UnitFile>,
    /// Files to remove (a drop-in the site no longer needs).
    pub stale: Vec<PathBuf>,
    /// Why the unit grants `CAP_NET_BIND_SERVICE` (`link port 443`, `listener "web" on port
    /// 80`); empty: it grants no capability.
    pub low_ports: Vec<String>,
    /// The group the service runs as.
    pub group: String,
    /// What may keep the service from working, for the user to fix (a parent folder the
    /// service's user cannot pass through).
    pub warnings: Vec<String>,
}

/// What install-service did, one line each, in order, for the user to read.
pub type Steps = Vec<String>;

/// Refuses early, before reading anything, what only root may do: install into
/// [`DEFAULT_UNIT_DIR`] (it also makes a user and gives the folder away).
pub fn check_may_install(opts: &ServiceOptions) -> Result<(), SiteError> {
    if crate::folder::running_as_root() || opts.unit_dir != Path::new(DEFAULT_UNIT_DIR) {
        return Ok(());
    }
    Err(SiteError::InvalidArgument(format!(
        "install-service needs root: it creates the system user {user}, gives it the site folder \
         and writes the unit into {DEFAULT_UNIT_DIR}; run it with sudo, or see the unit with \
         --print, or write it to a folder of yours with --unit-dir DIR",
        user = opts.user,
    )))
}

/// Renders the service for the site in `folder`, without writing anything.
pub fn plan(folder: &SiteFolder, opts: &ServiceOptions) -> Result<ServicePlan, SiteError> {
    let loaded = load_site(folder)?;
    if let Some(namespace) = folder.kubernetes_namespace() {
        return Err(SiteError::InvalidArgument(format!(
            "the site in {} is run by Kubernetes (namespace {namespace}), not by systemd",
            folder.root().display()
        )));
    }
    let site = loaded.site.metadata.name.clone();
    let root = folder.root();
    let abs = fs::canonicalize(root).map_err(|e| SiteError::io("resolve", root, e))?;
    let folder_text = unit_path("site folder", &abs)?;
    for private in ["/tmp", "/var/tmp"] {
        if abs.starts_with(private) {
            return Err(SiteError::InvalidArgument(format!(
                "the site folder {folder_text} is under {private}, which the service cannot see \
                 (PrivateTmp=yes gives it its own): move the site to a folder such as \
                 {STATE_ROOT}/{site} (skiff site create {site} --dir {STATE_ROOT}/{site}, then \
                 link it again) and run install-service there"
            )));
        }
    }
    // A relative path is made absolute, but symbolic links are kept: a link swapped to a new
    // version upgrades the service.
    let binary_path =
        std::path::absolute(&opts.binary).map_err(|e| SiteError::io("resolve", &opts.binary, e))?;
    check_binary(&binary_path)?;
    let binary = unit_path("binary", &binary_path)?;
    validate_user(&opts.user)?;
    let group = match lookup_user(&opts.user)? {
        Some(u) => u.group,
        // useradd makes a group of the user's name.
        None => opts.user.clone(),
    };

    let mut low_ports = Vec::new();
    let spec = &loaded.site.spec;
    if spec.link_access && (1..1024).contains(&spec.link_port) {
        low_ports.push(format!("link port {}", spec.link_port));
    }
    for l in list_listeners(folder)? {
        if (1..1024).contains(&l.spec.port) {
            low_ports.push(format!(
                "listener {:?} on port {}",
                l.metadata.name, l.spec.port
            ));
        }
    }

    let instance = abs
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| validate_name("site", n).is_ok() && abs.parent() == Some(Path::new(STATE_ROOT)))
        .map(str::to_string);
    let params = UnitParams {
        binary: &binary,
        user: &opts.user,
        group: &group,
    };
    let mut files = Vec::new();
    let mut stale = Vec::new();
    let (unit, template) = match instance {
        Some(instance) => {
            // The template always has the defaults; this instance's own user or binary go
            // into a drop-in of its own.
            let defaults = UnitParams {
                binary: DEFAULT_BINARY,
                user: DEFAULT_USER,
                group: DEFAULT_USER,
            };
            files.push(UnitFile {
                path: opts.unit_dir.join(TEMPLATE_UNIT),
                text: template_unit(&defaults),
            });
            let unit = format!("skiff@{instance}.service");
            let drop_ins = opts.unit_dir.join(format!("{unit}.d"));
            let run_as = drop_ins.join(RUN_AS_DROP_IN);
            if (params.binary, params.user, params.group)
                == (defaults.binary, defaults.user, defaults.group)
            {
                if run_as.exists() {
                    stale.push(run_as);
                }
            } else {
                files.push(UnitFile {
                    path: run_as,
                    text: run_as_drop_in(&site, &params),
                });
            }
            let drop_in = drop_ins.join(LOW_PORTS_DROP_IN);
            if low_ports.is_empty() {
                if drop_in.exists() {
                    stale.push(drop_in);
                }
            } else {
                files.push(UnitFile {
                    path: drop_in,
                    text: low_ports_drop_in(&site, &low_ports),
                });
            }
            (unit, true)
        }
        None => {
            let unit = format!("skiff-{site}.service");
            let path = opts.unit_dir.join(&unit);
            check_not_another_folder(&path, &folder_text)?;
            files.push(UnitFile {
                path,
                text: plain_unit(&params, &site, &folder_text, &low_ports),
            });
            (unit, false)
        }
    };
    let warnings = unreachable_parents(&abs, &opts.user);
    Ok(ServicePlan {
        site,
        folder: abs,
        unit,
        template,
        files,
        stale,
        low_ports,
        group,
        warnings,
    })
}

/// The parent folders of `folder` that others may not pass through (no `x` for others), so a
/// service running as `user` could not reach its folder. Home directories are left out: the
/// unit binds such a folder into an empty /home of its own (`BindPaths=`).
fn unreachable_parents(folder: &Path, user: &str) -> Vec<String> {
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| folder.starts_with(h))
    {
        return Vec::new();
    }
    folder
        .ancestors()
        .skip(1)
        .filter_map(|dir| {
            let mode = fs::metadata(dir).ok()?.mode();
            (mode & 0o001 == 0).then(|| {
                format!(
                    "warning: {} (mode {:o}) does not let others pass: the service's user {user} \
                     cannot reach {}; allow it with: chmod o+x {}",
                    dir.display(),
                    mode & 0o7777,
                    folder.display(),
                    dir.display()
                )
            })
        })
        .collect()
}

/// Installs a planned service: the system user (made when missing), the folder given to it,
/// the unit files written, and, when systemd runs and the unit went to [`DEFAULT_UNIT_DIR`],
/// `systemctl daemon-reload` and `systemctl enable --now`. Returns what it did.
///
/// Only root may make users and give folders away: run by another user, those steps are
/// skipped and the returned steps say what root must do.
pub fn install(plan: &ServicePlan, opts: &ServiceOptions) -> Result<Steps, SiteError> {
    let mut steps = Steps::new();
    let root = crate::folder::running_as_root();
    let default_dir = opts.unit_dir == Path::new(DEFAULT_UNIT_DIR);
    check_may_install(opts)?;
    if root {
        let user = match lookup_user(&opts.user)? {
            Some(u) => {
                steps.push(format!("user {} exists (uid {})", opts.user, u.uid));
                u
            }
            None => {
                create_user(&opts.user)?;
                let u = lookup_user(&opts.user)?.ok_or_else(|| {
                    SiteError::InvalidArgument(format!(
                        "useradd succeeded but user {} cannot be found (getent passwd)",
                        opts.user
                    ))
                })?;
                steps.push(format!(
                    "created system user {} (uid {}, no home, shell /usr/sbin/nologin)",
                    opts.user, u.uid
                ));
                u
            }
        };
        let count = give_tree(&plan.folder, user.uid, user.gid)?;
        steps.push(format!(
            "gave {} ({count} entries) to {}:{}",
            plan.folder.display(),
            opts.user,
            user.group
        ));
    } else {
        steps.push(format!(
            "not root: user {user} not created and {folder} not given to it; as root run: \
             useradd --system --no-create-home --home-dir /nonexistent --shell \
             /usr/sbin/nologin {user}; \
             chown -R {user}: {folder}",
            user = opts.user,
            folder = plan.folder.display()
        ));
    }

    for file in &plan.files {
        let dir = file.path.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| SiteError::io("create folder", dir, e))?;
        }
        let replaced = fs::read_to_string(&file.path)
            .ok()
            .filter(|old| *old != file.text);
        write_atomic(&file.path, file.text.as_bytes(), PUBLIC_MODE)?;
        steps.push(format!("wrote {}", file.path.display()));
        if replaced.is_some() && file.path.file_name() == Some(TEMPLATE_UNIT.as_ref()) {
            steps.push(format!(
                "{TEMPLATE_UNIT} had other settings: every skiff@ service without a drop-in of \
                 its own gets these at its next (re)start"
            ));
        }
    }
    for path in &plan.stale {
        remove_file(path)?;
        let why = if path.file_name() == Some(RUN_AS_DROP_IN.as_ref()) {
            "the template's user and binary again"
        } else {
            "no port below 1024 any more"
        };
        steps.push(format!("removed {} ({why})", path.display()));
    }
    if !plan.low_ports.is_empty() {
        steps.push(format!(
            "the service may bind ports below 1024 (CAP_NET_BIND_SERVICE, and no other \
             capability): {}",
            plan.low_ports.join(", ")
        ));
    }
    steps.extend(plan.warnings.iter().cloned());

    let unit_name = plan.unit.trim_end_matches(".service");
    let start_by_hand = format!(
        "runuser -u {} -- {} site run --dir {}",
        opts.user,
        std::path::absolute(&opts.binary)
            .unwrap_or_else(|_| opts.binary.clone())
            .display(),
        plan.folder.display()
    );
    if !default_dir {
        steps.push(format!(
            "systemd reads units from {DEFAULT_UNIT_DIR}: copy the files there, then run: \
             systemctl daemon-reload && systemctl enable --now {unit_name}"
        ));
    } else if !systemd_runs() {
        steps.push(format!(
            "systemd is not running on this host (no /run/systemd/system): the unit is written \
             for when it does; start the site now with: {start_by_hand}"
        ));
    } else {
        systemctl(&["daemon-reload"])?;
        let active = Command::new("systemctl")
            .args(["is-active", "--quiet", &plan.unit])
            .status()
            .is_ok_and(|s| s.success());
        if !opts.start {
            steps.push(format!(
                "systemd knows the unit now; start it with: systemctl enable --now {unit_name}"
            ));
        } else if active {
            systemctl(&["enable", &plan.unit])?;
            steps.push(format!(
                "{} was running and runs on with its old settings; apply the new unit with: \
                 systemctl restart {unit_name}",
                plan.unit
            ));
        } else {
            if SiteFolder::new(&plan.folder).is_locked() {
                steps.push(format!(
                    "warning: a `skiff site run` holds {} now; the service fails with 'already \
                     running' until it stops",
                    plan.folder.display()
                ));
            }
            systemctl(&["enable", "--now", &plan.unit])?;
            steps.push(format!(
                "enabled and started {}: check it with: systemctl status {unit_name}; \
                 journalctl -u {unit_name}",
                plan.unit
            ));
        }
    }
    Ok(steps)
}

/// The values a unit is rendered with.
struct UnitParams<'a> {
    binary: &'a str,
    user: &'a str,
    group: &'a str,
}

/// The text shared by both kinds of unit, from `User=` to `ExecStart=` and the hardening,
/// around `paths` (the folder's lines) and `caps` (the capability lines).
fn service_section(p: &UnitParams<'_>, env_dir: &str, paths: &str, caps: &str) -> String {
    format!(
        "[Service]
Type=exec
# A dedicated system user, not DynamicUser=: the operator's CLI verbs (skiff listener create,
# skiff token redeem, ...) write files into the folder that the service must read, so the
# folder needs an owner that stays the same between runs and that those files can be given.
User={user}
Group={group}
{env_dir}ExecStart={binary} site run
ExecReload=/bin/kill -HUP $MAINPID
# On SIGTERM the router withdraws its connectors and drains its links (up to ~5.5 s).
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

# Hardening: the site needs its folder, the network and nothing else.
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
{paths}PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
{caps}
[Install]
WantedBy=multi-user.target
",
        user = p.user,
        group = p.group,
        binary = p.binary,
    )
}

/// `skiff@.service`: the template, instance = the folder's name under `/var/lib/skiff`.
fn template_unit(p: &UnitParams<'_>) -> String {
    let head =
        "# A skiff site as a systemd service: one instance per site, instance name = site name, the
# site's folder /var/lib/skiff/INSTANCE. `skiff site install-service` writes this file (an
# instance with another --user or --binary gets them in skiff@NAME.service.d/40-user-binary.conf);
# see docs/vm.md.
#   systemctl enable --now skiff@west    run the site in /var/lib/skiff/west, now and at boot
#   systemctl reload skiff@west          re-read the folder (SIGHUP, as `skiff site reload`)
#   journalctl -u skiff@west             its log
[Unit]
Description=skiff site %i
Wants=network-online.target
After=network-online.target

";
    let env_dir =
        "StateDirectory=skiff/%i\nStateDirectoryMode=0700\nEnvironment=SKIFF_DIR=%S/skiff/%i\n";
    let paths = "ReadWritePaths=%S/skiff/%i\nProtectHome=yes\n";
    let caps = "# No capabilities: the link port (45671) and the listeners' ports are above 1023. For a port
# below 1024 install-service writes CapabilityBoundingSet=CAP_NET_BIND_SERVICE and
# AmbientCapabilities=CAP_NET_BIND_SERVICE in a drop-in for that instance
# (skiff@NAME.service.d/50-low-ports.conf).
CapabilityBoundingSet=
";
    format!("{head}{}", service_section(p, env_dir, paths, caps))
}

/// The drop-in that runs one template instance as another user or another binary than the
/// template's.
fn run_as_drop_in(site: &str, p: &UnitParams<'_>) -> String {
    format!(
        "# Written by `skiff site install-service` (--user, --binary): the site {site:?} runs as
# this user and binary instead of the template's ({DEFAULT_USER}, {DEFAULT_BINARY}).
[Service]
User={user}
Group={group}
ExecStart=
ExecStart={binary} site run
",
        user = p.user,
        group = p.group,
        binary = p.binary,
    )
}

/// The drop-in that lets one template instance bind ports below 1024.
fn low_ports_drop_in(site: &str, low_ports: &[String]) -> String {
    format!(
        "# Written by `skiff site install-service`: the site {site:?} binds ports below 1024
# ({}), so its service may bind them (CAP_NET_BIND_SERVICE), and gets no other capability.
[Service]
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
",
        low_ports.join(", ")
    )
}

/// `skiff-SITE.service`: one site, its folder named in the unit.
fn plain_unit(p: &UnitParams<'_>, site: &str, folder: &str, low_ports: &[String]) -> String {
    let name = format!("skiff-{site}");
    let head = format!(
        "# The skiff site {site:?} (folder {folder}) as a systemd service. `skiff site
# install-service` writes this file; see docs/vm.md.
#   systemctl enable --now {name}    run it now and at boot
#   systemctl reload {name}          re-read the folder (SIGHUP, as `skiff site reload`)
#   journalctl -u {name}             its log
[Unit]
Description=skiff site {site}
Wants=network-online.target
After=network-online.target

"
    );
    let env_dir = format!("Environment=SKIFF_DIR={folder}\n");
    let in_home = ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| Path::new(folder).starts_with(h));
    let paths = if in_home {
        format!(
            "ReadWritePaths={folder}
# The folder is in a home directory: the others stay hidden (an empty tmpfs), this one is
# bound in.
ProtectHome=tmpfs
BindPaths={folder}
"
        )
    } else {
        format!("ReadWritePaths={folder}\nProtectHome=yes\n")
    };
    let caps = if low_ports.is_empty() {
        "# No capabilities: the link port and the listeners' ports are above 1023. For a port below
# 1024, run install-service again: it writes CapabilityBoundingSet=CAP_NET_BIND_SERVICE and
# AmbientCapabilities=CAP_NET_BIND_SERVICE instead.
CapabilityBoundingSet=
"
        .to_string()
    } else {
        format!(
            "# CAP_NET_BIND_SERVICE, and no other capability: the site binds ports below 1024
# ({}).
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
",
            low_ports.join(", ")
        )
    };
    format!("{head}{}", service_section(p, &env_dir, &paths, &caps))
}

/// A path as a unit file value: absolute, and only characters that need no quoting or escaping
/// in a unit file (`%` would be a specifier, spaces would split it).
fn unit_path(what: &str, path: &Path) -> Result<String, SiteError> {
    let text = path.to_str().unwrap_or_default();
    let plain = text.starts_with('/')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b));
    if plain {
        Ok(text.to_string())
    } else {
        Err(SiteError::InvalidArgument(format!(
            "the {what} path {:?} cannot go into a unit file as it is: use an absolute path of \
             letters, digits and / . _ - + @",
            path.display()
        )))
    }
}

/// The binary must be an executable file the service can see: not in a home directory
/// (ProtectHome=) nor in /tmp (PrivateTmp=), even through a symbolic link.
fn check_binary(binary: &Path) -> Result<(), SiteError> {
    let real = fs::canonicalize(binary).map_err(|e| {
        SiteError::InvalidArgument(format!(
            "the binary {} cannot be used: {e}; pass the path of the skiff binary with --binary",
            binary.display()
        ))
    })?;
    let meta = fs::metadata(&real).map_err(|e| SiteError::io("read", &real, e))?;
    if !meta.is_file() || meta.mode() & 0o111 == 0 {
        return Err(SiteError::InvalidArgument(format!(
            "the binary {} is not an executable file; pass the path of the skiff binary with \
             --binary",
            binary.display()
        )));
    }
    for hidden in ["/home", "/root", "/run/user", "/tmp", "/var/tmp"] {
        if real.starts_with(hidden) {
            return Err(SiteError::InvalidArgument(format!(
                "the binary {} is under {hidden}, which the service cannot see (ProtectHome=, \
                 PrivateTmp=); copy it with: install -m 0755 {} {DEFAULT_BINARY}, then pass \
                 --binary {DEFAULT_BINARY}",
                real.display(),
                real.display()
            )));
        }
    }
    Ok(())
}

/// A user name as useradd takes it, and not `nobody`.
fn validate_user(user: &str) -> Result<(), SiteError> {
    if user == "nobody" {
        return Err(SiteError::InvalidArgument(
            "the user nobody is shared by unrelated programs, which could then read the site's \
             keys (systemd warns: \"Special user nobody configured, this is not safe!\"): use a \
             dedicated user, such as the default skiff"
                .into(),
        ));
    }
    let ok = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SiteError::InvalidArgument(format!(
            "invalid user name {user:?}: use up to 32 lowercase letters, digits, '_' and '-'"
        )))
    }
}

/// A plain unit of this name that runs another folder is not replaced.
fn check_not_another_folder(path: &Path, folder: &str) -> Result<(), SiteError> {
    let Ok(old) = fs::read_to_string(path) else {
        return Ok(());
    };
    let other = old
        .lines()
        .find_map(|l| l.strip_prefix("Environment=SKIFF_DIR="))
        .filter(|d| *d != folder);
    match other {
        Some(d) => Err(SiteError::InvalidArgument(format!(
            "{} already runs the site in {d}, another site of the same name; stop and remove \
             that service first (systemctl disable --now {}; rm {})",
            path.display(),
            path.file_name().unwrap_or_default().to_string_lossy(),
            path.display()
        ))),
        None => Ok(()),
    }
}

/// A user as the system knows it.
#[derive(Debug, Clone)]
pub struct SystemUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Primary group's name.
    pub group: String,
}

/// Looks a user up (`getent passwd`, so every NSS source counts); `None` when unknown.
pub fn lookup_user(user: &str) -> Result<Option<SystemUser>, SiteError> {
    let Some(line) = getent("passwd", user)? else {
        return Ok(None);
    };
    let fields: Vec<&str> = line.split(':').collect();
    let (Some(uid), Some(gid)) = (
        fields.get(2).and_then(|v| v.parse().ok()),
        fields.get(3).and_then(|v| v.parse::<u32>().ok()),
    ) else {
        return Err(SiteError::InvalidArgument(format!(
            "getent passwd {user} gave an entry that is not name:x:uid:gid:...: {line:?}"
        )));
    };
    let group = getent("group", &gid.to_string())?
        .and_then(|g| g.split(':').next().map(str::to_string))
        .unwrap_or_else(|| gid.to_string());
    Ok(Some(SystemUser { uid, gid, group }))
}

/// One `getent DATABASE KEY` line; `None` when the key is unknown (exit 2).
fn getent(database: &str, key: &str) -> Result<Option<String>, SiteError> {
    let out = Command::new("getent")
        .args([database, key])
        .output()
        .map_err(|e| SiteError::io("run", Path::new("getent"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string))
    } else if out.status.code() == Some(2) {
        Ok(None)
    } else {
        Err(SiteError::InvalidArgument(format!(
            "getent {database} {key} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin
/// [--gid USER] USER`: `--gid` when a group of that name exists already (useradd would refuse
/// to make it), so the user joins it.
fn create_user(user: &str) -> Result<(), SiteError> {
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("useradd");
    let mut cmd = Command::new(useradd);
    cmd.args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
    ]);
    if getent("group", user)?.is_some() {
        cmd.args(["--gid", user]);
    }
    let out = cmd
        .arg(user)
        .output()
        .map_err(|e| SiteError::io("run", Path::new(useradd), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SiteError::InvalidArgument(format!(
            "could not create the system user {user}: useradd exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Gives `root` and everything under it to `uid:gid` (symbolic links themselves, never their
/// targets; nothing outside `root` is followed). Returns how many entries it went through.
///
/// The folder may already belong to the service's user (install-service run again), who could
/// swap a sub-folder for a link to /etc while this runs: each entry is opened without following
/// a link or waiting (`O_NOFOLLOW|O_NONBLOCK`, folders `O_DIRECTORY`), checked to be the one
/// examined, and given through that handle (`fchown`); a folder's entries are reached through
/// its open handle (`/proc/self/fd/N/NAME`), never through its path again. A plain file with
/// more than one name (a hard link, perhaps to a file of root's) is refused, not given.
fn give_tree(root: &Path, uid: u32, gid: u32) -> Result<usize, SiteError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut count = 0;
    // Open folders whose entries are still pending: their handles must outlive those paths.
    let mut open = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        // Named in errors: the path under `root`, not the /proc/self/fd/N one.
        let shown = shown_path(root, &path, &open);
        let meta = fs::symlink_metadata(&path).map_err(|e| SiteError::io("read", &shown, e))?;
        let kind = meta.file_type();
        count += 1;
        if kind.is_symlink() || kind.is_socket() {
            // A link itself (never its target); a socket cannot be opened.
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| SiteError::io("give", &shown, e))?;
            continue;
        }
        if !(kind.is_dir() || kind.is_file() || kind.is_fifo()) {
            return Err(SiteError::InvalidArgument(format!(
                "{} is a device, which a site folder never holds: inspect it, remove it and \
                 run again",
                shown.display()
            )));
        }
        let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        if kind.is_dir() {
            flags |= libc::O_DIRECTORY;
        }
        let handle = fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&path)
            .map_err(|e| SiteError::io("open", &shown, e))?;
        let opened = handle
            .metadata()
            .map_err(|e| SiteError::io("read", &shown, e))?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(SiteError::io(
                "give",
                &shown,
                std::io::Error::other("it was replaced while being given away; run again"),
            ));
        }
        if opened.is_file() && opened.nlink() > 1 {
            return Err(SiteError::InvalidArgument(format!(
                "{} has {} names (hard links): giving it to the service's user would give the \
                 file behind every name; skiff never makes one, so inspect it, remove the other \
                 names (find / -samefile PATH) or copy it, and run again",
                shown.display(),
                opened.nlink()
            )));
        }
        std::os::unix::fs::fchown(&handle, Some(uid), Some(gid))
            .map_err(|e| SiteError::io("give", &shown, e))?;
        if !opened.is_dir() {
            continue;
        }
        let via = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
        for entry in fs::read_dir(&via).map_err(|e| SiteError::io("list", &shown, e))? {
            let entry = entry.map_err(|e| SiteError::io("list", &shown, e))?;
            pending.push(via.join(entry.file_name()));
        }
        open.push((shown, handle));
    }
    Ok(count)
}

/// The path under `root` of `path` (`/proc/self/fd/N/NAME`, N one of the `open` folders).
fn shown_path(root: &Path, path: &Path, open: &[(PathBuf, fs::File)]) -> PathBuf {
    use std::os::fd::AsRawFd;
    for (shown, handle) in open {
        let via = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
        if let Ok(rest) = path.strip_prefix(&via) {
            return shown.join(rest);
        }
    }
    if path == root {
        return root.to_path_buf();
    }
    path.to_path_buf()
}

/// `systemctl ARGS`, its error output in the error.
fn systemctl(args: &[&str]) -> Result<(), SiteError> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| SiteError::io("run", Path::new("systemctl"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SiteError::InvalidArgument(format!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Is systemd this host's init (as `sd_booted()` decides)?
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in examples/systemd is exactly what install-service writes for a site in
    /// /var/lib/skiff with the default binary and user: the two cannot drift apart.
    #[test]
    fn the_example_template_is_what_install_service_writes() {
        let rendered = template_unit(&UnitParams {
            binary: DEFAULT_BINARY,
            user: DEFAULT_USER,
            group: DEFAULT_USER,
        });
        let example = include_str!("../../examples/systemd/skiff@.service");
        assert_eq!(
            rendered, example,
            "examples/systemd/skiff@.service differs from the rendered template"
        );
    }

    /// Root gives a folder away: every entry in it, a link itself but never its target.
    #[test]
    fn giving_a_folder_away_reaches_every_entry_and_no_link_target() {
        if !crate::folder::running_as_root() {
            println!("SKIPPED: needs root (chown to another user)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "root's").unwrap();
        let root = tmp.path().join("west");
        fs::create_dir_all(root.join("links/deeper")).unwrap();
        fs::write(root.join("site.yaml"), "x").unwrap();
        fs::write(root.join("links/deeper/a.yaml"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("links/planted")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("up")).unwrap();
        let count = give_tree(&root, 65534, 65534).unwrap();
        // west, site.yaml, links, deeper, a.yaml, planted, up.
        assert_eq!(count, 7);
        // A hard link to a file of root's (planted where protected_hardlinks is off): refused,
        // naming it, and the file stays root's.
        fs::hard_link(&outside, root.join("links/deeper/b.yaml")).unwrap();
        let err = give_tree(&root, 65534, 65534).unwrap_err().to_string();
        assert!(
            err.contains("links/deeper/b.yaml has 2 names (hard links)"),
            "{err}"
        );
        fs::remove_file(root.join("links/deeper/b.yaml")).unwrap();
        for p in [
            "",
            "site.yaml",
            "links",
            "links/deeper",
            "links/deeper/a.yaml",
            "links/planted",
            "up",
        ] {
            let m = fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p:?} was not given");
        }
        for p in [&outside, &tmp.path().to_path_buf()] {
            assert_eq!(
                fs::metadata(p).unwrap().uid(),
                0,
                "{} was given away",
                p.display()
            );
        }
    }

    #[test]
    fn unit_paths_that_would_need_quoting_are_refused() {
        assert_eq!(
            unit_path("site folder", Path::new("/srv/skiff/west-1")).unwrap(),
            "/srv/skiff/west-1"
        );
        for bad in ["/srv/my site", "/srv/50%", "relative/dir", "/srv/\"x\""] {
            let err = unit_path("site folder", Path::new(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot go into a unit file"), "{bad}: {err}");
        }
    }

    #[test]
    fn user_names_useradd_would_refuse_are_refused_first() {
        assert!(validate_user("skiff").is_ok());
        assert!(validate_user("skiff-test-42").is_ok());
        for bad in ["", "-x", "Skiff", "a b", "x:y", "nobody"] {
            assert!(validate_user(bad).is_err(), "{bad:?} accepted");
        }
    }
}
