//! A Kubernetes site's settings and identity: the `skiff-site` ConfigMap says what the site
//! is; Secret `skiff-site-identity` keeps who it is (id, CA, link key) across pods. The site
//! folder (an emptyDir) is rebuilt from them at every start.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use skiff_certs::{API_VERSION, SiteId};

use super::Ctx;
use super::names::{
    IDENTITY_SECRET, KEY_SITE, LABEL_MANAGED_BY, LABEL_TYPE, LINK_SERVICE, MANAGED_BY,
    SITE_CONFIGMAP,
};
use crate::SiteError;
use crate::folder::{PUBLIC_MODE, SECRET_MODE, read_text, write_atomic};
use crate::resources::{Site, SiteSpec, to_yaml, validate_name};
use crate::site::{SiteOptions, create_site};

/// The Site resource as a Kubernetes site's ConfigMap holds it: no `id` (the site's id lives
/// in its identity Secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfig {
    api_version: String,
    kind: String,
    metadata: crate::resources::Metadata,
    #[serde(default)]
    spec: SiteConfigSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfigSpec {
    #[serde(default)]
    link_access: bool,
    #[serde(default)]
    link_hosts: Vec<String>,
    #[serde(default)]
    link_port: Option<u16>,
    #[serde(default)]
    edge: bool,
}

/// What the site is, from its ConfigMap (or the namespace's name when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    /// The site's name.
    pub name: String,
    /// Settings, with the link hosts as configured (before load balancer addresses).
    pub options: SiteOptions,
}

pub(super) async fn read_settings(ctx: &Ctx) -> Result<SiteSettings, SiteError> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let cm = api
        .get_opt(SITE_CONFIGMAP)
        .await
        .map_err(|e| ctx.kube_error(format!("read ConfigMap {SITE_CONFIGMAP}"), e))?;
    let Some(cm) = cm else {
        validate_name("site", &ctx.namespace)?;
        tracing::info!(
            namespace = %ctx.namespace,
            "no ConfigMap {SITE_CONFIGMAP}: the site is named after the namespace and accepts no links"
        );
        return Ok(SiteSettings {
            name: ctx.namespace.clone(),
            options: SiteOptions::default(),
        });
    };
    let origin = format!("ConfigMap {SITE_CONFIGMAP} key {KEY_SITE}");
    let bad = |reason: String| SiteError::BadResource {
        path: origin.clone().into(),
        reason,
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_SITE))
        .ok_or_else(|| bad("missing: put the Site resource YAML there".into()))?;
    let config: SiteConfig = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    if config.api_version != API_VERSION || config.kind != "Site" {
        return Err(bad(format!(
            "expected apiVersion {API_VERSION} kind Site, found {} {}",
            config.api_version, config.kind
        )));
    }
    validate_name("site", &config.metadata.name)?;
    Ok(SiteSettings {
        name: config.metadata.name,
        options: SiteOptions {
            link_access: config.spec.link_access,
            link_hosts: config.spec.link_hosts,
            link_port: config.spec.link_port,
            edge: config.spec.edge,
        },
    })
}

/// The hosts tokens carry: `--link-host`, then the ConfigMap's, then the load balancer
/// addresses of the link Service, then the Service's in-cluster name (other namespaces of the
/// same cluster reach it there; other clusters skip it).
pub(super) fn link_hosts(
    ctx: &Ctx,
    settings: &SiteSettings,
    link_service: Option<&Service>,
) -> Vec<String> {
    let mut hosts = ctx.opts.link_hosts.clone();
    for h in &settings.options.link_hosts {
        if !hosts.contains(h) {
            hosts.push(h.clone());
        }
    }
    let ingress = link_service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    for i in ingress {
        if let Some(h) = i.hostname.or(i.ip)
            && !hosts.contains(&h)
        {
            hosts.push(h);
        }
    }
    let internal = format!("{LINK_SERVICE}.{}.svc", ctx.namespace);
    if !hosts.contains(&internal) {
        hosts.push(internal);
    }
    hosts
}

/// Rebuilds the site folder from the identity Secret, or creates the site and stores its
/// identity when there is none yet.
pub(super) async fn prepare_folder(
    ctx: &Ctx,
    settings: &SiteSettings,
    hosts: Vec<String>,
) -> Result<SiteId, SiteError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let existing = api
        .get_opt(IDENTITY_SECRET)
        .await
        .map_err(|e| ctx.kube_error(format!("read Secret {IDENTITY_SECRET}"), e))?;
    let folder = &ctx.folder;
    folder.create_dirs()?;
    let mut opts = settings.options.clone();
    opts.link_hosts = hosts;
    if let Some(secret) = &existing {
        let field = |key: &str| -> Result<String, SiteError> {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .ok_or_else(|| SiteError::BadResource {
                    path: format!("Secret {IDENTITY_SECRET} key {key}").into(),
                    reason: "missing or not text; restore the Secret from a backup, or delete it to give the site a new identity (its links must then be made again)".into(),
                })
        };
        let id: SiteId = field("site-id")?
            .trim()
            .parse()
            .map_err(|e| SiteError::BadResource {
                path: format!("Secret {IDENTITY_SECRET} key site-id").into(),
                reason: format!("{e}"),
            })?;
        write_atomic(
            &folder.ca_cert_file(),
            field("ca.crt")?.as_bytes(),
            PUBLIC_MODE,
        )?;
        write_atomic(
            &folder.ca_key_file(),
            field("ca.key")?.as_bytes(),
            SECRET_MODE,
        )?;
        write_atomic(
            &folder.link_key_file(),
            field("link.key")?.as_bytes(),
            SECRET_MODE,
        )?;
        // site.yaml with the stored id; create_site then keeps that identity and issues the
        // router's certificate.
        let site = Site::new(
            &settings.name,
            SiteSpec {
                id,
                link_access: opts.link_access,
                link_hosts: vec![],
                link_port: crate::resources::DEFAULT_LINK_PORT,
                edge: opts.edge,
                certificate_overlap: None,
            },
        );
        write_atomic(&folder.site_file(), to_yaml(&site).as_bytes(), PUBLIC_MODE)?;
        create_site(folder, &settings.name, &opts)?;
        return Ok(id);
    }
    let (site, _) = create_site(folder, &settings.name, &opts)?;
    let data = BTreeMap::from([
        ("site-id".to_string(), site.spec.id.to_string()),
        ("ca.crt".to_string(), read_text(&folder.ca_cert_file())?),
        ("ca.key".to_string(), read_text(&folder.ca_key_file())?),
        ("link.key".to_string(), read_text(&folder.link_key_file())?),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(IDENTITY_SECRET.into()),
            labels: Some(BTreeMap::from([
                (LABEL_TYPE.to_string(), "site-identity".to_string()),
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            ])),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret)
        .await
        .map_err(|e| ctx.kube_error(format!("create Secret {IDENTITY_SECRET}"), e))?;
    tracing::info!(site = %settings.name, id = %site.spec.id, "new site identity stored in Secret {IDENTITY_SECRET}");
    Ok(site.spec.id)
}
