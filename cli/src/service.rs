//! `skiff site install-service`: the command line of the systemd unit of a site (rendering
//! and installing are in `skiff_site_controller::service`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use skiff_site_controller::SiteError;
use skiff_site_controller::folder::SiteFolder;
use skiff_site_controller::service::{self, ServiceOptions};

/// The flags of `skiff site install-service`.
#[derive(clap::Args)]
pub struct InstallServiceArgs {
    /// The system user the service runs as; created when missing, and given the folder.
    #[arg(long, default_value = service::DEFAULT_USER)]
    user: String,
    /// The skiff binary the unit runs [default: this executable, by the path it was started
    /// with: a symbolic link is kept].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where the unit files go; systemctl is run only for the default.
    #[arg(long, default_value = service::DEFAULT_UNIT_DIR)]
    unit_dir: PathBuf,
    /// Install everything but do not enable or start the service.
    #[arg(long)]
    no_start: bool,
    /// Print the unit files and change nothing (no root needed).
    #[arg(long)]
    print: bool,
}

/// Renders the unit for the site in `folder`, then prints it (`--print`) or installs it.
pub fn install_service(
    folder: &SiteFolder,
    args: InstallServiceArgs,
) -> Result<ExitCode, SiteError> {
    let binary = match args.binary {
        Some(b) => b,
        None => this_binary()?,
    };
    let opts = ServiceOptions {
        user: args.user,
        binary,
        unit_dir: args.unit_dir,
        start: !args.no_start,
    };
    if !args.print {
        service::check_may_install(&opts)?;
    }
    let plan = service::plan(folder, &opts)?;
    if args.print {
        for (i, file) in plan.files.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("# {}", file.path.display());
            print!("{}", file.text);
        }
        if !plan.low_ports.is_empty() {
            eprintln!(
                "the service may bind ports below 1024 (CAP_NET_BIND_SERVICE only): {}",
                plan.low_ports.join(", ")
            );
        }
        for w in &plan.warnings {
            eprintln!("{w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "installing site {:?} ({}) as {}",
        plan.site,
        plan.folder.display(),
        plan.unit
    );
    for step in service::install(&plan, &opts)? {
        println!("{step}");
    }
    Ok(ExitCode::SUCCESS)
}

/// This executable by the path it was started with (`/usr/local/bin/skiff`, found in `PATH`
/// when started as `skiff`), so that a symbolic link stays in the unit: a link swapped to a
/// new version upgrades the service. The resolved file (`current_exe`) when that path does not
/// lead to this executable.
fn this_binary() -> Result<PathBuf, SiteError> {
    let exe = std::env::current_exe()
        .map_err(|e| SiteError::io("find", Path::new("this executable"), e))?;
    let Some(named) = std::env::args_os().next().map(PathBuf::from) else {
        return Ok(exe);
    };
    let candidate = if named.components().count() > 1 {
        std::path::absolute(&named).ok()
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .filter(|d| d.is_absolute())
                .map(|d| d.join(&named))
                .find(|p| p.is_file())
        })
    };
    let same = |p: &Path| fs::canonicalize(p).ok() == fs::canonicalize(&exe).ok();
    Ok(candidate.filter(|c| same(c)).unwrap_or(exe))
}
