//! `skiff link generate FILE`: writes an offline link file (a link certificate signed in
//! advance, with its private key) for a site that cannot reach this site's grant endpoint,
//! and records that site as linked here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use skiff_certs::SiteId;
use skiff_site_controller::SiteError;
use skiff_site_controller::folder::{SECRET_MODE, SiteFolder, write_atomic};
use skiff_site_controller::offline::{self, GenerateOptions};

/// The arguments of `skiff link generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Where to write the link file (0600); `-` for standard output. It holds a private key.
    file: String,
    /// The id of the site that will use the file (`skiff site status` there shows it)
    /// [default: a new id; create that site with `skiff site create NAME --id ID`].
    #[arg(long)]
    site_id: Option<SiteId>,
    /// The name this site records for the linking site [default: offline-<first 8 of its id>].
    #[arg(long)]
    peer_name: Option<String>,
    /// The link's name at the linking site [default: this site's name].
    #[arg(long)]
    name: Option<String>,
    /// Cost of the link.
    #[arg(long)]
    cost: Option<u32>,
    /// quic, tls or auto (QUIC, falling back to TLS over TCP).
    #[arg(long, default_value = "auto")]
    transport: String,
}

/// Runs `skiff link generate` at the site in `folder`.
pub async fn generate(args: GenerateArgs, folder: &SiteFolder) -> Result<ExitCode, SiteError> {
    let made = offline::prepare(
        folder,
        &GenerateOptions {
            site_id: args.site_id,
            peer_name: args.peer_name,
            name: args.name,
            cost: args.cost,
            transport: Some(args.transport),
        },
    )
    .await?;
    let to_stdout = args.file == "-";
    let path = PathBuf::from(&args.file);
    if to_stdout {
        print!("{}", made.file);
    } else {
        write_atomic(&path, made.file.as_bytes(), SECRET_MODE)?;
    }
    if let Err(e) = offline::commit(folder, &made) {
        // Not recorded here: the file would only be refused.
        if !to_stdout {
            let _ = std::fs::remove_file(&path);
        }
        return Err(e);
    }
    // Recorded from here on: the file is valid, and a retry would be refused (the id is
    // linked), so a reload that fails is a warning and the file is kept.
    let running = match offline::admit(folder).await {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "warning: site {} is recorded here ({}), but the running site did not reload: {}; fix that and run: skiff site reload",
                made.site_id,
                folder
                    .peers_dir()
                    .join(format!("{}.yaml", made.site_id))
                    .display(),
                skiff_site_controller::error_chain(&e)
            );
            None
        }
    };
    let id = made.site_id;
    let shown = if to_stdout {
        "the link file on standard output".to_string()
    } else {
        args.file.clone()
    };
    eprintln!(
        "warning: {shown} contains a private key: anyone holding it can link to this site as {id} until it expires ({}) or is revoked (skiff link revoke {id}); move it over a trusted channel and delete it after use",
        made.expires
    );
    let target = if to_stdout { "FILE" } else { &args.file };
    if made.new_site {
        eprintln!(
            "it is for a new site id {id}: create the site there with: skiff site create NAME --id {id}"
        );
    } else {
        eprintln!("it is for site {id}");
    }
    eprintln!("install it there (no network needed) with: skiff token redeem {target}");
    if running == Some(false) {
        eprintln!("this site is not running: it admits site {id} once started");
    }
    Ok(ExitCode::SUCCESS)
}
