//! A running site: the router started from the site folder, the grant service, the admin API,
//! and reload (re-read the folder, apply only the difference).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use skiff_router::link::{
    InboundPolicy, LinkSpec as RouterLinkSpec, Router, RouterConfig, TransportChoice,
};
use skiff_router::wire::RouterMode;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::SiteError;
use crate::admin::{self, AdminListener};
use crate::folder::{SiteFolder, remove_file};
use crate::grant::{GrantService, LinkedSites, SharedGrantService};
use crate::reload::{Applied, Changes, Failed, ReloadReport, Skipped, changes, restart_needed};
use crate::resources::Site;
use crate::services::{connector_spec, list_connectors, list_listeners, listener_spec};
use crate::site::{list_linked_sites, list_links, load_site};

/// Options of `skiff site run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Also serve the admin API on this TCP address.
    pub admin_address: Option<SocketAddr>,
    /// Bind link access to this address instead of the one chosen from the link hosts
    /// (loopback when every host is a loopback address, else every interface).
    pub link_bind: Option<IpAddr>,
    /// Where redemptions are committed besides the folder before they are answered (set
    /// before the link port opens, so no redemption escapes it).
    pub grant_commit_hook: Option<Arc<dyn crate::grant::CommitHook>>,
    /// A check that holds readiness from the start (name, reason) until the caller releases
    /// it with [`crate::probes::Probes::release`] (Kubernetes: its first pass over the API).
    pub hold_readiness: Option<(&'static str, String)>,
}

/// What the admin API and reload share.
pub struct SiteState {
    folder: SiteFolder,
    site: Site,
    router: Router,
    linked: Arc<LinkedSites>,
    grants: Option<Arc<GrantService>>,
    reload_lock: tokio::sync::Mutex<()>,
    applied: std::sync::Mutex<Applied>,
    started: std::time::SystemTime,
    controller_status: std::sync::Mutex<Option<serde_json::Value>>,
    probes: Arc<crate::probes::Probes>,
}

/// A site started from its folder; stop it with [`RunningSite::stop`].
pub struct RunningSite {
    state: Arc<SiteState>,
    admin_tasks: Vec<JoinHandle<AdminListener>>,
    renewal_task: JoinHandle<()>,
    admin_stop: tokio::sync::watch::Sender<bool>,
    admin_tcp: Option<SocketAddr>,
    _lock: File,
}

impl RunningSite {
    /// Starts the site in `folder`: takes the run lock, starts the router (link access, links),
    /// the grant service and the admin API.
    pub async fn start(folder: SiteFolder, opts: RunOptions) -> Result<Self, SiteError> {
        let loaded = load_site(&folder)?;
        let lock = folder.lock_for_run()?;
        let spec = &loaded.site.spec;
        let overlap = spec.certificate_overlap()?;
        let linked = Arc::new(LinkedSites::default());
        linked.replace(list_linked_sites(&folder)?);
        let link_listen = spec.link_access.then(|| {
            let ip = opts.link_bind.unwrap_or_else(|| bind_ip(&spec.link_hosts));
            SocketAddr::new(ip, spec.link_port)
        });
        let grants = if spec.link_access {
            // The grant service signs with its own handle on the CA.
            let ca = skiff_certs::SiteCa::from_pem(loaded.ca.cert_pem(), loaded.ca.key_pem())?;
            Some(Arc::new(GrantService::new(
                folder.clone(),
                ca,
                loaded.id(),
                loaded.name().to_string(),
                spec.link_hosts.clone(),
                linked.clone(),
            )))
        } else {
            None
        };
        let mut config = RouterConfig::new(
            loaded.id(),
            loaded.name().to_string(),
            if spec.edge {
                RouterMode::Edge
            } else {
                RouterMode::Interior
            },
            loaded.router_cert_pem.clone(),
            loaded.router_key_pem.clone(),
            loaded.ca.cert_pem().to_string(),
        );
        config.link_listen = link_listen;
        // The CA key persists; the router key changes at every router.pem renewal.
        config.stateless_reset_secret = Some(loaded.ca.key_pem().to_string());
        let router = Router::start(
            config,
            linked.clone() as Arc<dyn InboundPolicy>,
            grants.clone().map(|g| {
                Arc::new(SharedGrantService(g)) as Arc<dyn skiff_router::link::GrantHandler>
            }),
        )
        .await?;
        if let (Some(g), Some(hook)) = (&grants, &opts.grant_commit_hook) {
            g.set_commit_hook(hook.clone());
        }
        if let Some(g) = &grants {
            g.set_certificate_overlap(overlap);
        }
        if let (Some(g), Some(addr)) = (&grants, router.link_addr()) {
            let _ = g.link_port.set(addr.port());
        }
        let state = Arc::new(SiteState {
            folder: folder.clone(),
            site: loaded.site.clone(),
            router,
            linked,
            grants,
            reload_lock: tokio::sync::Mutex::new(()),
            applied: std::sync::Mutex::new(Applied::default()),
            started: std::time::SystemTime::now(),
            controller_status: std::sync::Mutex::new(None),
            probes: Arc::default(),
        });
        if let Some((check, reason)) = opts.hold_readiness {
            state.probes.hold(check, reason);
        }
        let (want, skipped) = state.desired()?;
        for s in &skipped {
            tracing::warn!(kind = s.kind, name = %s.name, problem = %s.problem, "skipped");
        }
        state.apply(want);
        state.probes.started();

        // The lock is ours, so a socket file left here belongs to a dead run.
        let sock = folder.admin_socket();
        remove_file(&sock)?;
        let unix = UnixListener::bind(&sock).map_err(|e| SiteError::io("listen on", &sock, e))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| SiteError::io("set permissions of", &sock, e))?;
        let (admin_stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut admin_tasks = vec![tokio::spawn(admin::serve(
            AdminListener::Unix(unix),
            state.clone(),
            stop_rx.clone(),
        ))];
        let mut admin_tcp = None;
        if let Some(addr) = opts.admin_address {
            let tcp = TcpListener::bind(addr).await.map_err(|e| SiteError::Io {
                action: "listen for the admin API on",
                path: addr.to_string().into(),
                source: e,
            })?;
            admin_tcp = tcp.local_addr().ok();
            admin_tasks.push(tokio::spawn(admin::serve(
                AdminListener::Tcp(tcp),
                state.clone(),
                stop_rx,
            )));
        }
        tracing::info!(
            site = %state.site.metadata.name,
            id = %state.site.spec.id,
            link_access = ?state.router.link_addr(),
            admin = %sock.display(),
            admin_tcp = ?admin_tcp,
            "site running"
        );
        let renewal_task = tokio::spawn(renew_certificates(Arc::downgrade(&state)));
        Ok(RunningSite {
            state,
            admin_tasks,
            renewal_task,
            admin_stop,
            admin_tcp,
            _lock: lock,
        })
    }

    /// The bound link-access address, if the site accepts links.
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.state.router.link_addr()
    }

    /// The bound admin TCP address, if one was asked for.
    pub fn admin_tcp_addr(&self) -> Option<SocketAddr> {
        self.admin_tcp
    }

    /// The shared state (links, reload). Do not keep a clone of it past [`RunningSite::stop`].
    pub fn state(&self) -> &SiteState {
        &self.state
    }

    /// A handle on the shared state for a task that runs beside the site; the task must drop
    /// it before [`RunningSite::stop`].
    pub fn shared_state(&self) -> Arc<SiteState> {
        self.state.clone()
    }

    /// Marks the site unready (`GET /readyz` answers 503) before anything closes; [`stop`]
    /// does it too. For a caller with work of its own before [`stop`] (Kubernetes).
    ///
    /// [`stop`]: RunningSite::stop
    pub fn begin_stopping(&self) {
        self.state.probes.stopping();
    }

    /// Marks the site unready, closes the listeners and links (flows in progress drain) and
    /// releases the folder. Meanwhile the admin API answers the probes only (`/readyz` 503,
    /// `/livez` 200; the other routes 503), so load balancers see the site leave.
    pub async fn stop(self) {
        self.begin_stopping();
        self.renewal_task.abort();
        let _ = self.renewal_task.await;
        let _ = self.admin_stop.send(true);
        let (probes_stop, probes_rx) = tokio::sync::watch::channel(false);
        let mut probe_tasks = Vec::new();
        for t in self.admin_tasks {
            if let Ok(listener) = t.await {
                probe_tasks.push(tokio::spawn(admin::serve_stopping(
                    listener,
                    self.state.probes.clone(),
                    probes_rx.clone(),
                )));
            }
        }
        let socket = self.state.folder.admin_socket();
        match Arc::try_unwrap(self.state) {
            Ok(state) => state.router.shutdown().await,
            // Not reachable while the admin servers are the only other holders; dropping the
            // router still stops its tasks, in the background.
            Err(_) => {
                tracing::warn!("site state still shared at stop; links close in the background")
            }
        }
        let _ = probes_stop.send(true);
        for t in probe_tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(socket);
    }
}

/// How often a running site checks whether its link client certificates need renewing.
pub const RENEWAL_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// At start and every [`RENEWAL_CHECK_INTERVAL`]: renews the router certificate and the client
/// certificates of outbound links that have less than a third of their validity left, then
/// reloads (which hands the new link certificates to the dialers without redialling). Failures are logged and retried at the
/// next check. Holds the state weakly, so it never keeps a stopped site alive.
async fn renew_certificates(state: std::sync::Weak<SiteState>) {
    let mut every = tokio::time::interval(RENEWAL_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(folder) = state.upgrade().map(|s| {
            s.refresh_router_certificate();
            s.folder.clone()
        }) else {
            return;
        };
        let outcomes = match crate::token::renew_links(&folder, crate::token::RenewSelection::Due)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(cause = %crate::error_chain(&e), "checking link certificates for renewal failed");
                continue;
            }
        };
        let mut renewed = false;
        for o in &outcomes {
            match &o.error {
                None => renewed = true,
                Some(reason) => tracing::warn!(
                    links = ?o.links,
                    peer = %o.peer_site_id,
                    %reason,
                    "automatic link certificate renewal failed; retrying in {} h",
                    RENEWAL_CHECK_INTERVAL.as_secs() / 3600
                ),
            }
        }
        if renewed {
            let Some(state) = state.upgrade() else {
                return;
            };
            if let Err(e) = state.reload().await {
                tracing::warn!(cause = %crate::error_chain(&e), "reload after renewal failed");
            }
        }
    }
}

/// Runs the site in `folder` until `shutdown` completes. SIGHUP reloads the folder, as
/// `POST /v1/reload` does; a reload that fails (a file it cannot read) is logged and the
/// site runs on as it was.
pub async fn run_site(
    folder: SiteFolder,
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SiteError> {
    // Taken before the site starts: a SIGHUP while it starts reloads once it runs, and never
    // kills it (SIGHUP's default action).
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| SiteError::Io {
        action: "handle SIGHUP for",
        path: folder.root().to_path_buf(),
        source: e,
    })?;
    let site = RunningSite::start(folder, opts).await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: reloading the site folder");
                if let Err(e) = site.state.reload().await {
                    tracing::error!(cause = %crate::error_chain(&e),
                        "reload failed: the site runs on as it was; fix the file, then send SIGHUP again or run: skiff site reload");
                }
            }
        }
    }
    tracing::info!("shutting down");
    site.stop().await;
    Ok(())
}

/// For a site whose folder is not its record (Kubernetes: the API is): logs every SIGHUP and
/// otherwise ignores it, instead of dying of it. Call within the runtime.
pub fn ignore_hangups(reason: &'static str) -> Result<(), SiteError> {
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| SiteError::Io {
        action: "handle SIGHUP",
        path: "(signal)".into(),
        source: e,
    })?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP ignored: {reason}");
        }
    });
    Ok(())
}

/// Bind address of link access: loopback when every advertised host is a loopback address
/// (a site on a laptop is then not reachable from the network), else every interface.
fn bind_ip(hosts: &[String]) -> IpAddr {
    let all_loopback = !hosts.is_empty()
        && hosts.iter().all(|h| {
            h == "localhost"
                || h.parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false)
        });
    if all_loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

impl SiteState {
    /// Re-reads the folder and applies the difference: new links are dialled, removed ones
    /// closed, changed ones redialled, unchanged ones untouched (a renewed certificate alone
    /// is taken at the next dial); listeners and connectors likewise; sites revoked or
    /// forgotten are disconnected. Every file (site.yaml too) is read before anything is
    /// applied, so a file that cannot be read (`Err`, naming it) leaves the running site as it
    /// was. A link, listener or connector that parses but cannot be used is left out
    /// (`skipped`); one the router could not start (a port in use) is in `failed`. Settings
    /// of site.yaml that need a restart are reported, not applied.
    pub async fn reload(&self) -> Result<ReloadReport, SiteError> {
        let _one = self.reload_lock.lock().await;
        let loaded = load_site(&self.folder)?;
        let overlap = loaded.site.spec.certificate_overlap()?;
        let peers = list_linked_sites(&self.folder)?;
        let (want, skipped) = self.desired()?;
        let mut report = ReloadReport {
            skipped,
            needs_restart: restart_needed(&self.site.spec, &loaded.site.spec),
            ..ReloadReport::default()
        };
        if let Some(g) = &self.grants {
            g.set_certificate_overlap(overlap);
        }
        {
            let _no_redemption = self.linked.update.lock().await;
            let before = self.linked.admitted();
            self.linked.replace(peers);
            let after = self.linked.admitted();
            for gone in before.difference(&after) {
                self.router
                    .disconnect_peer(*gone, "the site's link was revoked here");
                report.disconnected_sites.push(gone.to_string());
            }
        }
        self.refresh_router_certificate();
        (report.links, report.listeners, report.connectors) = self.apply(want);
        report.failed = self.not_started();
        for s in &report.skipped {
            tracing::warn!(kind = s.kind, name = %s.name, problem = %s.problem, "skipped");
        }
        for f in &report.failed {
            tracing::error!(kind = f.kind, name = %f.name, reason = %f.reason,
                "not started by this reload");
        }
        for r in &report.needs_restart {
            tracing::warn!(setting = r.setting, running = %r.running, file = %r.file,
                "site.yaml setting changed: it applies at the next start (restart the site)");
        }
        tracing::info!(
            links = %summary(&report.links),
            listeners = %summary(&report.listeners),
            connectors = %summary(&report.connectors),
            "reloaded the site folder"
        );
        Ok(report)
    }

    /// Renews router.pem from the site CA when a third of its validity is left, and presents
    /// router.pem on the link port when it differs from the certificate presented now (renewed
    /// here, or replaced by an operator): new handshakes get it, established links keep
    /// running. Failures are logged; the current certificate stays.
    pub fn refresh_router_certificate(&self) {
        let Some(presented) = self.router.router_certificate() else {
            return;
        };
        match crate::site::renew_router_certificate_if_due(&self.folder) {
            Ok(Some(serial)) => tracing::info!(%serial, "router certificate renewed"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(cause = %crate::error_chain(&e), "renewing the router certificate failed");
                return;
            }
        }
        let pem = match crate::folder::read_text(&self.folder.router_file()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(cause = %crate::error_chain(&e), "reading the router certificate failed");
                return;
            }
        };
        if skiff_certs::first_certificate(&pem).ok().as_ref() == Some(&presented) {
            return;
        }
        match self.router.replace_router_certificate(&pem, &pem) {
            Ok(()) => tracing::info!(
                serial = %skiff_certs::certificate_serial_pem(&pem).unwrap_or_default(),
                "link port presents the new router certificate from the next handshake on"
            ),
            Err(e) => tracing::warn!(cause = %skiff_router::link::error_chain(&e),
                "router.pem not presented: it is unusable; the previous certificate stays"),
        }
    }

    /// The listeners and connectors the router does not serve after a reload, with the
    /// reason (a port in use, say): the ones the reload added or changed, and the ones still
    /// down from before (every reload tries to bind those again), so a reload succeeds only
    /// when everything in the folder is served.
    fn not_started(&self) -> Vec<Failed> {
        let error = skiff_router::flow::ResourceState::Error;
        let mut failed: Vec<Failed> = self
            .router
            .listeners()
            .into_iter()
            .filter(|l| l.status == error)
            .map(|l| Failed {
                kind: "listener",
                reason: l.reason.unwrap_or_default(),
                name: l.name,
            })
            .collect();
        failed.extend(
            self.router
                .connectors()
                .into_iter()
                .filter(|c| c.status == error)
                .map(|c| Failed {
                    kind: "connector",
                    reason: c.reason.unwrap_or_default(),
                    name: c.name,
                }),
        );
        failed
    }

    /// The links, listeners and connectors of the folder as router specs, and those left
    /// out because they cannot be used (a hand-edited file with a bad key, an unsupported
    /// type, a link with a bad proxy URL or transport: the others still apply). Reading
    /// nothing but files: an unreadable or unparsable file is the error, naming it.
    fn desired(&self) -> Result<(Applied, Vec<Skipped>), SiteError> {
        let mut want = Applied::default();
        let mut skipped = Vec::new();
        for (link, key) in list_links(&self.folder)? {
            let file = self
                .folder
                .links_dir()
                .join(format!("{}.yaml", link.metadata.name));
            let transport = link.spec.transport.parse::<TransportChoice>().map_err(|_| {
                format!(
                    "transport {:?} is not quic, tls or auto",
                    link.spec.transport
                )
            });
            let usable = transport.and_then(|transport| {
                let proxy = link.proxy_config().map_err(|e| crate::error_chain(&e))?;
                Ok((transport, proxy))
            });
            let (transport, proxy) = match usable {
                Ok(t) => t,
                Err(problem) => {
                    skipped.push(Skipped {
                        kind: "link",
                        name: link.metadata.name.clone(),
                        problem: format!("{}: {problem}", file.display()),
                    });
                    continue;
                }
            };
            let spec = RouterLinkSpec {
                name: link.metadata.name.clone(),
                peer_site_id: link.spec.peer_site_id,
                peer_site_name: Some(link.spec.peer_site_name.clone()).filter(|n| !n.is_empty()),
                peer_ca_pem: link.spec.peer_ca.clone(),
                endpoints: link.spec.endpoints.clone(),
                client_cert_pem: link.spec.client_certificate.clone(),
                client_key_pem: key,
                transport,
                cost: link.spec.cost,
                proxy,
            };
            want.links.insert(spec.name.clone(), spec);
        }
        for l in list_listeners(&self.folder)? {
            match listener_spec(&l) {
                Ok(spec) => {
                    want.listeners.insert(spec.name.clone(), spec);
                }
                Err(problem) => skipped.push(Skipped {
                    kind: "listener",
                    name: l.metadata.name.clone(),
                    problem,
                }),
            }
        }
        for c in list_connectors(&self.folder)? {
            match connector_spec(&c) {
                Ok(spec) => {
                    want.connectors.insert(spec.name.clone(), spec);
                }
                Err(problem) => skipped.push(Skipped {
                    kind: "connector",
                    name: c.metadata.name.clone(),
                    problem,
                }),
            }
        }
        Ok((want, skipped))
    }

    /// Hands `want` to the router, which changes only what differs from what it runs, and
    /// returns what changed since the last call (links, listeners, connectors).
    fn apply(&self, want: Applied) -> (Changes, Changes, Changes) {
        let mut applied = self.applied.lock().unwrap();
        let changed = changes(&applied, &want);
        self.router
            .set_links(want.links.values().cloned().collect());
        self.router
            .set_connectors(want.connectors.values().cloned().collect());
        self.router
            .set_listeners(want.listeners.values().cloned().collect());
        *applied = want;
        changed
    }

    /// Replaces the hosts redeeming sites are told to dial (tokens read them from the
    /// folder's site.yaml, which the caller updates).
    pub fn set_link_hosts(&self, hosts: Vec<String>) {
        if let Some(g) = &self.grants {
            g.set_link_hosts(hosts);
        }
    }

    /// Sets what a controller beside the site reports in `GET /v1/site` (under its own key,
    /// e.g. `kubernetes`: conflicts and token outcomes).
    pub fn set_controller_status(&self, status: serde_json::Value) {
        *self.controller_status.lock().unwrap() = Some(status);
    }

    /// `GET /v1/listeners`.
    pub fn listeners_json(&self) -> serde_json::Value {
        serde_json::to_value(self.router.listeners()).unwrap_or_default()
    }

    /// `GET /v1/connectors`.
    pub fn connectors_json(&self) -> serde_json::Value {
        serde_json::to_value(self.router.connectors()).unwrap_or_default()
    }

    /// `GET /v1/network`.
    pub fn network_json(&self) -> serde_json::Value {
        serde_json::to_value(self.router.network()).unwrap_or_default()
    }

    /// `GET /v1/flows`: `{"active": [...], "recent": [...]}` (recent: ended flows, newest
    /// last, at most [`skiff_router::flow::RECENT_FLOWS`]). With `limit` (`?limit=N`) at most N
    /// active and N recent flows (the newest of each, still oldest first) plus `activeTotal`
    /// and `recentTotal`, so a console polling a busy router does not copy thousands of flows
    /// each time.
    pub fn flows_json(&self, limit: Option<usize>) -> serde_json::Value {
        let mut active = self.router.flows();
        let mut recent = self.router.recent_flows();
        let Some(n) = limit else {
            return serde_json::json!({"active": active, "recent": recent});
        };
        let (active_total, recent_total) = (active.len(), recent.len());
        // Active flows oldest first (by age, in whole seconds), so the newest N are kept.
        active.sort_by_key(|f| std::cmp::Reverse(f.age_seconds));
        active.drain(..active_total.saturating_sub(n));
        recent.drain(..recent_total.saturating_sub(n));
        serde_json::json!({
            "active": active,
            "recent": recent,
            "activeTotal": active_total,
            "recentTotal": recent_total,
        })
    }

    /// The router (for in-process tests and the demo).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// `GET /v1/site`.
    pub fn site_json(&self) -> serde_json::Value {
        let spec = &self.site.spec;
        let mut v = serde_json::json!({
            "name": self.site.metadata.name,
            "id": spec.id.to_string(),
            "mode": if spec.edge { "edge" } else { "interior" },
            "linkAccess": spec.link_access,
            "linkHosts": spec.link_hosts,
            "linkAddress": self.router.link_addr().map(|a| a.to_string()),
            "linkPort": self.router.link_addr().map(|a| a.port()),
            "version": env!("CARGO_PKG_VERSION"),
            "protocolVersion": skiff_router::wire::PROTOCOL_VERSION.to_string(),
            "pid": std::process::id(),
            "uptimeSeconds": self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        });
        if let Some(s) = self.controller_status.lock().unwrap().clone() {
            v["kubernetes"] = s;
        }
        v
    }

    /// The links of the router, outbound and inbound.
    pub fn links(&self) -> Vec<skiff_router::link::LinkStatus> {
        self.router.links()
    }

    /// `GET /v1/links`: the router's links, then one entry per revoked site (status
    /// `revoked`), which has no link here any more but should show in `skiff link list`.
    pub fn links_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.router.links()).unwrap_or_default();
        if let Some(list) = v.as_array_mut() {
            for s in self.linked.revoked() {
                let s = s.spec;
                list.push(serde_json::json!({
                    "name": format!("from-{}", s.site_name),
                    "direction": "inbound",
                    "peer_site_id": s.site_id.to_string(),
                    "peer_site_name": s.site_name,
                    "transport": null,
                    "endpoint": null,
                    "cost": 0,
                    "status": "revoked",
                    "reason": "revoked here (skiff link revoke): its links and renewals are refused",
                    "since": s.revoked_at,
                }));
            }
        }
        v
    }

    /// Readiness and liveness of this site.
    pub fn probes(&self) -> &Arc<crate::probes::Probes> {
        &self.probes
    }

    /// What `GET /readyz` reads from the router.
    pub fn readiness_facts(&self) -> crate::probes::Facts {
        let links = self.router.links();
        crate::probes::Facts {
            link_access: self.site.spec.link_access,
            link_address: self.router.link_addr(),
            not_serving: self
                .not_started()
                .iter()
                .map(|f| format!("{} {} is not serving: {}", f.kind, f.name, f.reason))
                .collect(),
            links_up: links
                .iter()
                .filter(|l| l.state == skiff_router::link::LinkState::Up)
                .count(),
            links_total: links.len(),
        }
    }

    /// `GET /metrics` (Prometheus text, see [`crate::metrics`]).
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(self)
    }

    /// The site's name.
    pub fn site_name(&self) -> &str {
        &self.site.metadata.name
    }
}

/// `added a, b; removed c` for the log; `-` when nothing changed.
fn summary(c: &Changes) -> String {
    let parts: Vec<String> = [
        ("added", &c.added),
        ("removed", &c.removed),
        ("changed", &c.changed),
        ("renewed", &c.renewed),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what} {}", names.join(", ")))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}
