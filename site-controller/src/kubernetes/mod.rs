//! The Kubernetes site (`skiff site run --kubernetes`): the same running site as on a VM,
//! with its folder fed from the Kubernetes API of one namespace. No CRDs, no cluster rights.
//!
//! At start, the site's settings come from ConfigMap `skiff-site`, its identity from Secret
//! `skiff-site-identity` (created on first start), its links, grants and linked sites from
//! Secrets (see [`mirror`]); then the site runs as on a VM. A control loop then reconciles,
//! on every change the API reports and every few seconds:
//! 1. token Secrets are redeemed ([`tokens`]);
//! 2. links, grants and linked sites are mirrored between folder and Secrets ([`mirror`]);
//! 3. exposed Services, listener/connector ConfigMaps and the keys other sites serve give
//!    the listeners, connectors and Services the site should have ([`desired`]); the
//!    folder's `listeners/` and `connectors/` are rewritten to match and the site reloads
//!    them (the VM reconciler: unchanged ones are not touched); managed Services are applied;
//! 4. problems (name conflicts, bad resources) become Warning Events and the site's status.
//!
//! Every pass reads the API afresh (a LIST per kind) and computes the whole desired state,
//! so a pass is idempotent and a missed watch event costs at most one resync interval.
//! Watches (kube-runtime's watcher, which relists on 410 Gone and backs off on errors) only
//! wake the loop early.
//!
//! # Layout
//! - [`names`]: labels, annotations, object names.
//! - [`desired`]: the desired state as a pure function, and the Service steps.
//! - [`keys`]: which keys served elsewhere keep their Service (held while a site restarts).
//! - [`mirror`]: the three-way merge of links, grants and linked sites.
//! - `identity`: the site's settings and identity Secret.
//! - `tokens`: redemption of token Secrets.

pub mod desired;
mod identity;
pub mod keys;
pub mod mirror;
pub mod names;
mod tokens;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event, EventSource, ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use skiff_certs::SiteId;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::SiteError;
use crate::folder::{PUBLIC_MODE, SiteFolder, read_text, remove_file, write_atomic, yaml_files};
use crate::resources::{Resource, to_yaml};
use crate::run::{RunOptions, RunningSite, SiteState};
use desired::{Inputs, Problem, RemoteKey, ServiceStep};
use identity::SiteSettings;
use mirror::{Blobs, Item, Kind, Step};
use names::{
    ANNOTATION_NAME, FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_TYPE, LINK_SERVICE, MANAGED_BY,
};

/// Default `--listener-ports`: where listeners for remote keys bind on the router pod.
pub const DEFAULT_LISTENER_PORTS: RangeInclusive<u16> = 20000..=29999;
/// Default interval between full passes (watches wake the loop sooner).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(5);
/// How often the router's view of the network is checked for new or gone keys.
const NETWORK_POLL: Duration = Duration::from_secs(1);

/// Options of `skiff site run --kubernetes`.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The namespace the site lives in.
    pub namespace: String,
    /// Ports for listeners of keys served elsewhere.
    pub listener_ports: RangeInclusive<u16>,
    /// Also serve the admin API on this TCP address (probes, metrics).
    pub admin_address: Option<SocketAddr>,
    /// Bind address of link access (every interface in a pod).
    pub link_bind: IpAddr,
    /// Interval between full passes.
    pub resync: Duration,
    /// Hosts tokens carry before those of the site's ConfigMap (`--link-host`).
    pub link_hosts: Vec<String>,
    /// How long the Service of a key is kept while the site serving it is unreachable, and
    /// the Services found at start while the links come up.
    pub key_hold: Duration,
}

impl KubeOptions {
    /// Defaults for a namespace: every interface, default ports and resync.
    pub fn new(namespace: impl Into<String>) -> Self {
        KubeOptions {
            namespace: namespace.into(),
            listener_ports: DEFAULT_LISTENER_PORTS,
            admin_address: None,
            link_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            resync: DEFAULT_RESYNC,
            link_hosts: Vec::new(),
            key_hold: keys::DEFAULT_KEY_HOLD,
        }
    }
}

/// What the control loop shares.
pub(crate) struct Ctx {
    client: Client,
    namespace: String,
    folder: SiteFolder,
    opts: KubeOptions,
}

/// Kind of an Event.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EventType {
    Normal,
    Warning,
}

impl Ctx {
    fn kube_error(&self, action: String, source: kube::Error) -> SiteError {
        SiteError::Kube {
            action: format!("{action} (namespace {})", self.namespace),
            source,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn list<K>(&self, what: &str, labels: Option<&str>) -> Result<Vec<K>, SiteError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        self.api::<K>()
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|e| self.kube_error(format!("list {what}"), e))
    }

    /// Records an Event about an object; failures are logged, never fatal.
    async fn event(
        &self,
        kind: &str,
        name: &str,
        uid: Option<&str>,
        kind_of_event: EventType,
        reason: &str,
        message: &str,
    ) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{nanos:x}")),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
                name: Some(name.into()),
                namespace: Some(self.namespace.clone()),
                uid: uid.map(str::to_string),
                ..Default::default()
            },
            reason: Some(reason.into()),
            // Events hold at most 1 KiB of message.
            message: Some(message.chars().take(1000).collect()),
            type_: Some(
                match kind_of_event {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some("skiff".into()),
                host: None,
            }),
            reporting_component: Some("skiff.io/site-controller".into()),
            reporting_instance: Some(self.namespace.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        if let Err(e) = self
            .api::<Event>()
            .create(&PostParams::default(), &event)
            .await
        {
            tracing::warn!(object = %format!("{kind}/{name}"), %reason, cause = %e, "could not record an Event");
        }
    }
}

/// A Kubernetes site: the running site and its control loop.
pub struct KubeSite {
    site: RunningSite,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    ctx: Arc<Ctx>,
    base: SharedBase,
}

impl KubeSite {
    /// Prepares the folder from the API, starts the site and its control loop.
    pub async fn start(
        client: Client,
        folder: SiteFolder,
        opts: KubeOptions,
    ) -> Result<KubeSite, SiteError> {
        let ctx = Ctx {
            client,
            namespace: opts.namespace.clone(),
            folder: folder.clone(),
            opts,
        };
        let settings = identity::read_settings(&ctx).await?;
        let link_service = ctx
            .api::<Service>()
            .get_opt(LINK_SERVICE)
            .await
            .map_err(|e| ctx.kube_error(format!("read Service {LINK_SERVICE}"), e))?;
        let hosts = identity::link_hosts(&ctx, &settings, link_service.as_ref());
        let id = identity::prepare_folder(&ctx, &settings, hosts.clone()).await?;
        // Links, grants and linked sites. A container restarted in the same pod finds its
        // folder and the base it last saved: a normal pass then keeps what the API has not
        // seen yet. A new folder (a new pod) takes the API as the record.
        let base = match mirror::load_base(&folder)? {
            Some(b) => b,
            None => mirror::read_folder(&folder)?,
        };
        let base: SharedBase = Arc::new(tokio::sync::Mutex::new(base));
        let restored = mirror_sync(&ctx, &base, false).await?;
        for why in &restored.failed {
            tracing::warn!(cause = %why, "a link, grant or linked site is not in step yet; the control loop retries");
        }
        for p in &restored.problems {
            tracing::warn!(secret = %p.name, problem = %p.message, "Secret left alone");
        }
        // Marks the folder: the CLI then refuses to edit listeners and connectors here.
        write_atomic(
            &folder.kubernetes_marker(),
            format!("{}\n", ctx.namespace).as_bytes(),
            PUBLIC_MODE,
        )?;
        let ctx = Arc::new(ctx);
        let site = RunningSite::start(
            folder,
            RunOptions {
                admin_address: ctx.opts.admin_address,
                link_bind: Some(ctx.opts.link_bind),
                // A redemption here is answered only once its spent grant is in a Secret.
                grant_commit_hook: Some(Arc::new(SecretCommit {
                    ctx: ctx.clone(),
                    base: base.clone(),
                })),
                // Released by the control loop's first pass that succeeds.
                hold_readiness: Some((
                    READY_CHECK,
                    "the first pass over the Kubernetes API (Services to expose, listeners for \
                     the network's keys) has not finished"
                        .into(),
                )),
            },
        )
        .await?;
        tracing::info!(
            namespace = %ctx.namespace,
            site = %settings.name,
            %id,
            "Kubernetes site started"
        );
        let (stop, stop_rx) = watch::channel(false);
        let state = site.shared_state();
        let task = tokio::spawn(control_loop(
            ctx.clone(),
            state,
            settings,
            hosts,
            base.clone(),
            stop_rx,
        ));
        Ok(KubeSite {
            site,
            stop,
            task,
            ctx,
            base,
        })
    }

    /// The running site.
    pub fn site(&self) -> &RunningSite {
        &self.site
    }

    /// Stops the control loop, pushes what the folder has that the API has not seen yet,
    /// then stops the site.
    pub async fn stop(self) {
        // Unready before the last mirror pass, which may take a while.
        self.site.begin_stopping();
        let _ = self.stop.send(true);
        let _ = self.task.await;
        match mirror_sync(&self.ctx, &self.base, true).await {
            Ok(out) if out.failed.is_empty() => {}
            Ok(out) => {
                tracing::warn!(failed = ?out.failed, "some changes did not reach their Secrets")
            }
            Err(e) => {
                tracing::warn!(cause = %crate::error_chain(&e), "last mirror pass failed")
            }
        }
        self.site.stop().await;
    }
}

/// Runs a Kubernetes site until `shutdown` completes, with the client from the environment
/// (in-cluster service account, or `KUBECONFIG`).
pub async fn run_kubernetes_site(
    folder: SiteFolder,
    opts: KubeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SiteError> {
    let client = Client::try_default().await.map_err(|e| SiteError::Kube {
        action: "find the API server (in-cluster service account, or KUBECONFIG)".into(),
        source: e,
    })?;
    let site = KubeSite::start(client, folder, opts).await?;
    shutdown.await;
    tracing::info!("shutting down");
    site.stop().await;
    Ok(())
}

/// The namespace to run in: `--namespace`, else `POD_NAMESPACE`, else the service account's.
pub fn namespace_from_environment(flag: Option<String>) -> Option<String> {
    flag.filter(|n| !n.is_empty())
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|n| !n.is_empty())
        })
}

/// Secrets of a mirrored kind, as blobs.
async fn read_mirrored(ctx: &Ctx) -> Result<Blobs, SiteError> {
    let secrets: Vec<Secret> = ctx
        .list(
            "Secrets",
            Some(&format!(
                "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_TYPE} in (link,grant,peer)"
            )),
        )
        .await?;
    Ok(mirrored_blobs(&secrets))
}

fn mirrored_blobs(secrets: &[Secret]) -> Blobs {
    let mut out = Blobs::new();
    for s in secrets {
        let meta = &s.metadata;
        let Some(kind) = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_TYPE))
            .and_then(|t| Kind::from_label(t))
        else {
            continue;
        };
        let name = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_NAME))
            .cloned()
            .or_else(|| {
                meta.name
                    .as_ref()
                    .and_then(|n| n.strip_prefix(&format!("skiff-{}-", kind.label())))
                    .map(str::to_string)
            });
        let value = s.data.as_ref().and_then(|d| d.get(kind.data_key()));
        if let (Some(name), Some(value)) = (name, value) {
            out.insert((kind, name), value.0.clone());
        }
    }
    out
}

async fn apply_mirror_step(ctx: &Ctx, step: &Step) -> Result<(), SiteError> {
    let api = ctx.api::<Secret>();
    match step {
        Step::ToFolder(item, v) => mirror::write_folder(&ctx.folder, item, Some(v)),
        Step::RemoveFromFolder(item) => mirror::write_folder(&ctx.folder, item, None),
        Step::ToApi((kind, name), v) => {
            let secret_name = kind.secret_name(name);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.clone()),
                    labels: Some(BTreeMap::from([
                        (LABEL_TYPE.to_string(), kind.label().to_string()),
                        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_NAME.to_string(),
                        name.clone(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    kind.data_key().to_string(),
                    ByteString(v.clone()),
                )])),
                ..Default::default()
            };
            api.patch(
                &secret_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map(|_| ())
            .map_err(|e| ctx.kube_error(format!("write Secret {secret_name}"), e))
        }
        Step::RemoveFromApi((kind, name)) => {
            let secret_name = kind.secret_name(name);
            match api.delete(&secret_name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(ctx.kube_error(format!("delete Secret {secret_name}"), e)),
            }
        }
    }
}

/// Wakes the loop when any watched kind changes. The watcher relists after 410 Gone and
/// backs off while the API is unreachable; its errors are logged here.
fn watch_kind<K>(ctx: &Ctx, labels: Option<&str>, wake: Arc<Notify>) -> JoinHandle<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let mut config = watcher::Config::default();
    if let Some(l) = labels {
        config = config.labels(l);
    }
    let stream = watcher(ctx.api::<K>(), config).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => wake.notify_one(),
                Err(e) => tracing::warn!(
                    kind = %K::kind(&K::DynamicType::default()),
                    cause = %e,
                    "watch failed; retrying with backoff"
                ),
            }
        }
    })
}

/// The mirror's last in-step state, shared by the loop and the grant commit hook.
type SharedBase = Arc<tokio::sync::Mutex<Blobs>>;

/// What a mirror pass did.
#[derive(Default)]
struct MirrorOutcome {
    /// The folder changed: the site must reload.
    folder_changed: bool,
    /// Secrets that cannot be used (bad name or content), reported and left alone.
    problems: Vec<Problem>,
    /// Steps that failed (their items are tried again at the next pass).
    failed: Vec<String>,
}

/// A mirror pass: both ways, or (`push_only`, for the grant commit hook, which runs inside a
/// redemption where the site cannot reload) only the folder's changes to the API, leaving
/// the API's for the loop.
///
/// A Secret that does not check out is left out of the pass entirely (so neither side
/// changes for it) and reported. A step that fails keeps its item's old base, so its change
/// is still seen from the side it came from at the next pass; the other items go on. The
/// base is saved in the folder after every pass.
async fn mirror_sync(
    ctx: &Ctx,
    shared: &SharedBase,
    push_only: bool,
) -> Result<MirrorOutcome, SiteError> {
    let mut base = shared.lock().await;
    let mut here = mirror::read_folder(&ctx.folder)?;
    let mut there = read_mirrored(ctx).await?;
    let mut out = MirrorOutcome::default();
    let bad: Vec<Item> = there
        .iter()
        .filter_map(|(item, v)| mirror::check(item, v).err().map(|why| (item.clone(), why)))
        .map(|(item, why)| {
            out.problems.push(Problem {
                kind: "Secret",
                name: item.0.secret_name(&item.1),
                reason: "InvalidResource",
                message: format!(
                    "{} of {} {}: {why}; it is left alone until fixed or deleted",
                    item.0.data_key(),
                    item.0.label(),
                    item.1
                ),
            });
            item
        })
        .collect();
    let mut view = base.clone();
    for item in &bad {
        here.remove(item);
        there.remove(item);
        view.remove(item);
    }
    let (steps, next) = mirror::plan(&view, &here, &there);
    let mut failed = BTreeSet::new();
    for step in &steps {
        let item = match step {
            Step::ToFolder(i, _) | Step::RemoveFromFolder(i) => {
                if push_only {
                    failed.insert(i.clone());
                    continue;
                }
                i
            }
            Step::ToApi(i, _) | Step::RemoveFromApi(i) => i,
        };
        match apply_mirror_step(ctx, step).await {
            Ok(()) => {
                out.folder_changed |=
                    matches!(step, Step::ToFolder(..) | Step::RemoveFromFolder(_));
            }
            Err(e) => {
                failed.insert(item.clone());
                out.failed.push(crate::error_chain(&e));
            }
        }
    }
    let mut next = mirror::settle(&view, next, &failed);
    // Bad items keep whatever base they had.
    for item in &bad {
        if let Some(v) = base.get(item) {
            next.insert(item.clone(), v.clone());
        }
    }
    if next != *base {
        mirror::save_base(&ctx.folder, &next)?;
        *base = next;
    }
    Ok(out)
}

/// Commits redemptions to Secrets (see [`crate::grant::CommitHook`]).
struct SecretCommit {
    ctx: Arc<Ctx>,
    base: SharedBase,
}

impl std::fmt::Debug for SecretCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretCommit(namespace {})", self.ctx.namespace)
    }
}

impl crate::grant::CommitHook for SecretCommit {
    fn commit(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let out = mirror_sync(&self.ctx, &self.base, true)
                .await
                .map_err(|e| crate::error_chain(&e))?;
            match out.failed.first() {
                Some(why) => Err(why.clone()),
                None => Ok(()),
            }
        })
    }
}

/// What the loop remembers between passes.
struct LoopState {
    settings: SiteSettings,
    hosts: Vec<String>,
    base: SharedBase,
    retries: tokens::Retries,
    reported: BTreeSet<Problem>,
    /// The folder changed and the site has not reloaded it yet (a pass failed after that).
    reload_pending: bool,
    /// Keys served elsewhere, held while their site restarts.
    hold: keys::KeyHold,
    /// Last known problems and token outcomes (kept in the status when a pass fails).
    problems: Vec<Problem>,
    tokens: Vec<tokens::TokenOutcome>,
}

/// The readiness check the control loop holds until its first pass succeeds.
const READY_CHECK: &str = "kubernetes";

async fn control_loop(
    ctx: Arc<Ctx>,
    state: Arc<SiteState>,
    settings: SiteSettings,
    hosts: Vec<String>,
    base: SharedBase,
    mut stop: watch::Receiver<bool>,
) {
    // The Services of keys served elsewhere that exist now keep their keys until the links
    // are up and say otherwise.
    let mut hold = keys::KeyHold::new(ctx.opts.key_hold);
    match ctx
        .list::<Service>(
            "Services",
            Some(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}")),
        )
        .await
    {
        Ok(services) => hold.seed(
            services.iter().filter_map(|s| {
                let key = s.metadata.labels.as_ref()?.get(names::LABEL_ROUTING_KEY)?;
                let port = s.spec.as_ref()?.ports.as_ref()?.first()?;
                // A udp key's Service has a UDP port; the others are held as tcp until the
                // links say which type (http, http2) they are.
                let protocol = match port.protocol.as_deref() {
                    Some("UDP") => "udp",
                    _ => "tcp",
                };
                Some(RemoteKey {
                    key: key.clone(),
                    port: u16::try_from(port.port).ok()?,
                    protocol: protocol.into(),
                })
            }),
            std::time::Instant::now(),
        ),
        Err(e) => {
            tracing::warn!(cause = %crate::error_chain(&e), "could not read the managed Services; keys are known once the links are up")
        }
    }
    let wake = Arc::new(Notify::new());
    let watches = [
        watch_kind::<Service>(&ctx, None, wake.clone()),
        watch_kind::<EndpointSlice>(&ctx, None, wake.clone()),
        watch_kind::<ConfigMap>(&ctx, Some(LABEL_TYPE), wake.clone()),
        watch_kind::<Secret>(&ctx, Some(LABEL_TYPE), wake.clone()),
    ];
    let mut memory = LoopState {
        settings,
        hosts,
        base,
        retries: tokens::Retries::default(),
        reported: BTreeSet::new(),
        reload_pending: false,
        hold,
        problems: Vec::new(),
        tokens: Vec::new(),
    };
    let mut resync = tokio::time::interval(ctx.opts.resync);
    let mut network = tokio::time::interval(NETWORK_POLL);
    let mut last_view = network_view(&state);
    let mut last_folder = mirror::read_folder(&ctx.folder).unwrap_or_default();
    let mut passed_once = false;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = wake.notified() => {
                // Let a burst of changes (an apply of several objects) settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = resync.tick() => {}
            _ = network.tick() => {
                // New or gone keys in the network, or a change the site made in its folder
                // (`skiff token issue` in the pod writes a grant): a pass now.
                let view = network_view(&state);
                let folder = mirror::read_folder(&ctx.folder).unwrap_or_default();
                if view == last_view && folder == last_folder {
                    continue;
                }
                last_view = view;
                last_folder = folder;
            }
        }
        match reconcile(&ctx, &state, &mut memory).await {
            Ok(()) => {
                passed_once = true;
                state.probes().release(READY_CHECK);
            }
            Err(e) => {
                let cause = crate::error_chain(&e);
                tracing::warn!(%cause, "reconcile failed; trying again at the next change or resync");
                if !passed_once {
                    state.probes().hold(
                        READY_CHECK,
                        format!("the first pass over the Kubernetes API failed: {cause}"),
                    );
                }
                set_status(&ctx, &state, &memory, Some(cause));
            }
        }
    }
    for w in watches {
        w.abort();
    }
}

/// What the router knows of the other sites: the keys reachable ones serve, and which are
/// reachable.
type NetworkView = (Vec<(SiteId, RemoteKey)>, BTreeSet<SiteId>);

fn network_view(state: &SiteState) -> NetworkView {
    let mut live = Vec::new();
    let mut reachable = BTreeSet::new();
    for r in state.router().network().routers {
        if r.local || !r.reachable {
            continue;
        }
        reachable.insert(r.id);
        for k in r.keys.into_iter().filter(|k| k.connectors > 0) {
            live.push((
                r.id,
                RemoteKey {
                    key: k.key.as_str().to_string(),
                    port: k.port,
                    protocol: k.protocol.to_string(),
                },
            ));
        }
    }
    live.sort_by(|a, b| (a.0, &a.1.key, a.1.port).cmp(&(b.0, &b.1.key, b.1.port)));
    (live, reachable)
}

/// One pass: tokens, mirror, listeners and connectors, Services, problems.
async fn reconcile(ctx: &Ctx, state: &SiteState, memory: &mut LoopState) -> Result<(), SiteError> {
    let services: Vec<Service> = ctx.list("Services", None).await?;
    let slices: Vec<EndpointSlice> = ctx.list("EndpointSlices", None).await?;
    let configmaps: Vec<ConfigMap> = ctx
        .list(
            "ConfigMaps",
            Some(&format!("{LABEL_TYPE} in (listener,connector)")),
        )
        .await?;
    let token_secrets: Vec<Secret> = ctx
        .list("Secrets", Some(&format!("{LABEL_TYPE}=token")))
        .await?;

    // 1. Tokens.
    memory.tokens = tokens::redeem_tokens(ctx, &token_secrets, &mut memory.retries).await;

    // 2. Links, grants and linked sites.
    let mirrored = mirror_sync(ctx, &memory.base, false).await?;
    memory.reload_pending |= mirrored.folder_changed;
    for why in &mirrored.failed {
        tracing::warn!(cause = %why, "a mirror step failed; trying again at the next pass");
    }

    // Hosts tokens carry: the load balancer's address appears after the site started.
    let link_service = services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(LINK_SERVICE));
    let hosts = identity::link_hosts(ctx, &memory.settings, link_service);
    if hosts != memory.hosts {
        let mut opts = memory.settings.options.clone();
        opts.link_hosts = hosts.clone();
        crate::site::create_site(&ctx.folder, &memory.settings.name, &opts)?;
        state.set_link_hosts(hosts.clone());
        tracing::info!(hosts = ?hosts, "link hosts changed; new tokens carry them");
        memory.hosts = hosts;
    }

    // 3. Listeners, connectors, Services.
    let (live, reachable) = network_view(state);
    let remote = memory
        .hold
        .update(&live, &reachable, std::time::Instant::now());
    let current_ports: BTreeMap<String, u16> = crate::services::list_listeners(&ctx.folder)?
        .into_iter()
        .filter_map(|l| Some((l.spec.routing_key?, l.spec.port)))
        .collect();
    let want = desired::desired(&Inputs {
        current_ports: &current_ports,
        services: &services,
        slices: &slices,
        configmaps: &configmaps,
        remote_keys: &remote,
        listener_ports: ctx.opts.listener_ports.clone(),
    });
    memory.reload_pending |= sync_dir(&ctx.folder.listeners_dir(), &want.listeners)?;
    memory.reload_pending |= sync_dir(&ctx.folder.connectors_dir(), &want.connectors)?;
    if memory.reload_pending {
        state.reload().await?;
        memory.reload_pending = false;
    }
    let api = ctx.api::<Service>();
    for step in desired::service_steps(&want.services, &services) {
        match step {
            ServiceStep::Create(m) => {
                match api
                    .create(&PostParams::default(), &desired::service_object(&m))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(service = %m.name, port = m.port, listener_port = m.target_port, "Service created")
                    }
                    // Made by someone else since the LIST: theirs; the next pass reports it.
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(ctx.kube_error(format!("create Service {}", m.name), e)),
                }
            }
            ServiceStep::Apply(m) => {
                api.patch(
                    &m.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&desired::service_object(&m)),
                )
                .await
                .map_err(|e| ctx.kube_error(format!("apply Service {}", m.name), e))?;
                tracing::info!(service = %m.name, port = m.port, listener_port = m.target_port, "Service applied");
            }
            ServiceStep::Delete(name) => match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(service = %name, "Service deleted: its key is gone"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(ctx.kube_error(format!("delete Service {name}"), e)),
            },
        }
    }

    // 4. Problems: each new one once as an Event; all of them in the status.
    let uid = |kind: &str, name: &str| -> Option<String> {
        match kind {
            "Service" => services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .and_then(|s| s.metadata.uid.clone()),
            _ => configmaps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name))
                .and_then(|c| c.metadata.uid.clone()),
        }
    };
    let mut problems = want.problems.clone();
    problems.extend(mirrored.problems);
    problems.sort();
    let now: BTreeSet<Problem> = problems.iter().cloned().collect();
    for p in now.difference(&memory.reported) {
        tracing::warn!(object = %format!("{}/{}", p.kind, p.name), reason = p.reason, message = %p.message, "problem");
        ctx.event(
            p.kind,
            &p.name,
            uid(p.kind, &p.name).as_deref(),
            EventType::Warning,
            p.reason,
            &p.message,
        )
        .await;
    }
    memory.reported = now;
    memory.problems = problems;
    set_status(ctx, state, memory, None);
    Ok(())
}

fn set_status(ctx: &Ctx, state: &SiteState, memory: &LoopState, error: Option<String>) {
    let problems: Vec<_> = memory
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "object": format!("{}/{}", p.kind, p.name),
                "reason": p.reason,
                "message": p.message,
            })
        })
        .collect();
    state.set_controller_status(serde_json::json!({
        "namespace": ctx.namespace,
        "linkHosts": memory.hosts,
        "problems": problems,
        "tokens": memory.tokens,
        "lastError": error,
    }));
}

/// Makes `dir` hold exactly `want` (one YAML file per resource); says whether it changed.
fn sync_dir<R: Resource>(
    dir: &std::path::Path,
    want: &BTreeMap<String, R>,
) -> Result<bool, SiteError> {
    std::fs::create_dir_all(dir).map_err(|e| SiteError::io("create", dir, e))?;
    let mut changed = false;
    let mut have = BTreeSet::new();
    for path in yaml_files(dir)? {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !want.contains_key(&name) {
            remove_file(&path)?;
            changed = true;
        } else {
            have.insert((name, read_text(&path)?));
        }
    }
    for (name, r) in want {
        let text = to_yaml(r);
        if !have.contains(&(name.clone(), text.clone())) {
            write_atomic(
                &dir.join(format!("{name}.yaml")),
                text.as_bytes(),
                PUBLIC_MODE,
            )?;
            changed = true;
        }
    }
    Ok(changed)
}
