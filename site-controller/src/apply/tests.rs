//! Tests of `apply`: every problem names its file, line and field; nothing is written unless
//! every document is good; what `get` gives back applies unchanged.

use super::*;

const HEAD: &str = "apiVersion: skiff.io/v1alpha1\n";

fn input(text: &str) -> Vec<Input> {
    vec![Input {
        origin: "svc.yaml".into(),
        text: text.into(),
    }]
}

/// The problems of `text`, which must be refused.
fn problems(text: &str) -> Vec<Problem> {
    match parse(&input(text), Purpose::Apply) {
        Ok(docs) => panic!("accepted: {docs:?}"),
        Err(p) => p,
    }
}

/// The one problem of `text`.
fn problem(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

fn listener(name: &str, spec: &str) -> String {
    format!("{HEAD}kind: Listener\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

#[test]
fn an_unknown_field_is_named_with_its_line_and_column() {
    let p = problem(&listener(
        "db",
        "  port: 5432\n  routingKey: db\n  colour: red\n",
    ));
    assert_eq!((p.line, p.column), (8, Some(3)), "{p}");
    assert_eq!(p.field.as_deref(), Some("spec.colour"));
    assert!(p.message.contains("unknown field `colour`"), "{p}");
    assert!(
        p.to_string().starts_with("svc.yaml:8:3: spec.colour: "),
        "{p}"
    );

    // The first key of its mapping: still the key, not the mapping.
    let p = problem(&listener(
        "db",
        "  colour: red\n  port: 5432\n  routingKey: db\n",
    ));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (6, Some("spec.colour")),
        "{p}"
    );

    let p = problem(&format!(
        "{HEAD}kind: Connector\nmetadata: {{name: db, namespace: x}}\nspec: {{routingKey: db, port: 5432}}\n"
    ));
    assert_eq!(p.line, 3, "{p}");
    assert_eq!(p.field.as_deref(), Some("metadata.namespace"), "{p}");
}

#[test]
fn a_bad_port_is_named_with_its_value() {
    let p = problem(&listener("db", "  routingKey: db\n  port: 70000\n"));
    assert_eq!((p.line, p.column), (7, Some(9)), "{p}");
    assert_eq!(p.field.as_deref(), Some("spec.port"));
    assert!(p.message.contains("\"70000\" is not a port"), "{p}");

    let p = problem(&listener("db", "  routingKey: db\n  port: abc\n"));
    assert_eq!((p.line, p.field.as_deref()), (7, Some("spec.port")), "{p}");
    assert!(p.message.contains("\"abc\" is not a port"), "{p}");

    let p = problem(&listener("db", "  routingKey: db\n"));
    assert_eq!(p.field.as_deref(), Some("spec.port"), "{p}");
    assert!(p.message.contains("missing field `port`"), "{p}");

    // A connector's port 0: refused by the connector check, at the line of the port.
    let p = problem(&format!(
        "{HEAD}kind: Connector\nmetadata:\n  name: db\nspec:\n  routingKey: db\n  host: ''\n  port: 0\n"
    ));
    assert_eq!((p.line, p.field.as_deref()), (8, Some("spec.port")), "{p}");
    assert!(p.message.contains("not 0"), "{p}");
    let p = problem(&format!(
        "{HEAD}kind: Connector\nmetadata:\n  name: db\nspec:\n  routingKey: db\n  host: ''\n  port: 5\n"
    ));
    assert_eq!((p.line, p.field.as_deref()), (7, Some("spec.host")), "{p}");
}

#[test]
fn a_host_that_is_not_an_address_or_name_is_named_at_its_line() {
    let p = problem(&format!(
        "{HEAD}kind: Connector\nmetadata:\n  name: db\nspec:\n  routingKey: db\n  host: '<img src=x onerror=alert(1)>'\n  port: 5\n"
    ));
    assert_eq!((p.line, p.field.as_deref()), (7, Some("spec.host")), "{p}");
    assert!(
        p.to_string()
            .contains("svc.yaml:7:9: spec.host: host \"<img src=x onerror=alert(1)>\" is neither an IP address nor a DNS name"),
        "{p}"
    );
    let p = problem(&listener(
        "db",
        "  routingKey: db\n  host: '\"><svg onload=alert(1)>'\n  port: 1\n",
    ));
    assert_eq!((p.line, p.field.as_deref()), (7, Some("spec.host")), "{p}");
    assert!(p.message.contains("not an address to listen on"), "{p}");
    // A Kubernetes service name is a host.
    let ok = format!(
        "{HEAD}kind: Connector\nmetadata: {{name: db}}\nspec: {{routingKey: db, host: redis.ns.svc.cluster.local, port: 6379}}\n"
    );
    assert!(parse(&input(&ok), Purpose::Apply).is_ok());
}

#[test]
fn a_bad_affinity_is_named_at_its_line_and_udp_is_a_type() {
    let p = problem(&listener(
        "dns",
        "  routingKey: dns\n  port: 1\n  type: udp\n  affinity: header:x-user\n",
    ));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (9, Some("spec.affinity")),
        "{p}"
    );
    assert!(
        p.message
            .contains("needs an HTTP listener (--type http or http2)"),
        "{p}"
    );
    let p = problem(&listener(
        "web",
        "  routingKey: web\n  port: 1\n  affinity: sticky\n",
    ));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (8, Some("spec.affinity")),
        "{p}"
    );
    assert!(
        p.message
            .contains("expected none, client-ip, header:NAME or cookie:NAME"),
        "{p}"
    );
    for ok in [
        "  routingKey: dns\n  port: 1\n  type: udp\n  affinity: client-ip\n",
        "  routingKey: web\n  port: 1\n  type: http\n  affinity: cookie:session\n",
    ] {
        assert!(
            parse(&input(&listener("a", ok)), Purpose::Apply).is_ok(),
            "{ok}"
        );
    }
    let c = format!(
        "{HEAD}kind: Connector\nmetadata: {{name: dns}}\nspec: {{routingKey: dns, host: 127.0.0.1, port: 53, type: udp}}\n"
    );
    assert!(parse(&input(&c), Purpose::Apply).is_ok());
}

#[test]
fn a_bad_routing_key_or_type_or_strategy_is_named() {
    let p = problem(&listener("db", "  routingKey: 'Bad Key!'\n  port: 1\n"));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (6, Some("spec.routingKey")),
        "{p}"
    );
    assert!(p.message.contains("Bad Key!"), "{p}");

    let p = problem(&listener(
        "db",
        "  port: 1\n  priority:\n  - good\n  - 'no good'\n",
    ));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (9, Some("spec.priority[1]")),
        "{p}"
    );

    let p = problem(&listener(
        "db",
        "  routingKey: db\n  port: 1\n  type: grpc\n",
    ));
    assert_eq!((p.line, p.field.as_deref()), (8, Some("spec.type")), "{p}");
    assert!(
        p.message.contains("not one of tcp, http, http2, udp"),
        "{p}"
    );

    let p = problem(&listener("db", "  port: 1\n"));
    assert!(p.message.contains("exactly one of routingKey"), "{p}");
    assert_eq!((p.line, p.field.as_deref()), (6, Some("spec")), "{p}");

    let p = problem(&listener("Db_1", "  routingKey: db\n  port: 1\n"));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (4, Some("metadata.name")),
        "{p}"
    );
    assert!(p.message.contains("invalid listener name"), "{p}");
}

#[test]
fn a_wrong_kind_or_api_version_is_refused_with_the_reason() {
    let p = problem("apiVersion: skiff.io/v1alpha1\nkind: Service\nmetadata: {name: a}\n");
    assert_eq!((p.line, p.field.as_deref()), (2, Some("kind")), "{p}");
    assert!(
        p.message
            .contains("not one of Site, Listener, Connector, Link"),
        "{p}"
    );

    let p = problem("\n# a token\napiVersion: skiff.io/v1alpha1\nkind: AccessToken\n");
    assert_eq!(p.line, 4, "{p}");
    assert!(p.message.contains("skiff token redeem"), "{p}");

    let p = problem("kind: LinkedSite\n");
    assert!(p.message.contains("skiff link revoke"), "{p}");

    let p = problem(&listener("db", "  routingKey: db\n  port: 1\n").replace("v1alpha1", "v2"));
    assert_eq!((p.line, p.field.as_deref()), (1, Some("apiVersion")), "{p}");
    assert!(p.message.contains("is not skiff.io/v1alpha1"), "{p}");

    let p = problem("\n\nmetadata: {name: a}\n");
    assert_eq!((p.line, p.field.as_deref()), (3, None), "{p}");
    assert!(p.message.contains("no kind"), "{p}");

    let p = problem("- a\n- b\n");
    assert!(p.message.contains("must be a resource"), "{p}");
    assert!(p.message.contains("use -o yaml"), "{p}");
}

#[test]
fn the_same_kind_and_name_twice_is_refused_at_the_second() {
    let one = listener("db", "  routingKey: db\n  port: 1\n");
    let text = format!("{one}---\n{one}");
    let p = problem(&text);
    assert_eq!(
        (p.line, p.field.as_deref()),
        (12, Some("metadata.name")),
        "{p}"
    );
    assert!(p.message.contains("also given at svc.yaml:4"), "{p}");

    // Across files too; a connector of the same name is another resource.
    let connector = format!(
        "{HEAD}kind: Connector\nmetadata:\n  name: db\nspec:\n  routingKey: db\n  port: 1\n"
    );
    let two = vec![
        Input {
            origin: "a.yaml".into(),
            text: format!("{one}---\n{connector}"),
        },
        Input {
            origin: "b.yaml".into(),
            text: one.clone(),
        },
    ];
    let p = parse(&two, Purpose::Apply).unwrap_err();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].origin, "b.yaml");
    assert!(p[0].message.contains("a.yaml:4"), "{}", p[0]);
}

#[test]
fn a_bad_second_document_is_named_by_its_own_line() {
    let good = listener("web", "  routingKey: web\n  port: 8080\n");
    let bad = listener("db", "  routingKey: db\n  port: 99999\n");
    let text = format!("# services\n---\n{good}---\n{bad}...\n");
    let p = problem(&text);
    // good: lines 3-9, `---` 10, bad from 11; its port on line 17.
    assert_eq!((p.line, p.field.as_deref()), (17, Some("spec.port")), "{p}");
    // Every bad document is reported, not only the first.
    let text = format!("{bad}---\n{bad}").replacen("name: db", "name: y", 1);
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!((p[0].line, p[1].line), (7, 15), "{p:#?}");
    // A syntax error: its line, in the second document.
    let p = problem(&format!(
        "{good}---\n{HEAD}kind: Listener\nmetadata: {{name: [\n"
    ));
    assert_eq!(p.line, 11, "{p}");
}

#[test]
fn empty_documents_are_skipped_and_an_empty_file_is_refused() {
    let good = listener("web", "  routingKey: web\n  port: 8080\n");
    let docs = parse(
        &input(&format!("---\n# nothing\n---\n{good}---\n")),
        Purpose::Apply,
    )
    .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].line, 4);
    let docs = parse(&input(&format!("%YAML 1.2\n---\n{good}")), Purpose::Apply).unwrap();
    assert_eq!(docs[0].line, 3);
    let p = problem("# only a comment\n");
    assert!(p.message.contains("no resource"), "{p}");
}

#[test]
fn delete_reads_only_kind_and_name() {
    let odd = listener("db", "  port: 1\n");
    let docs = parse(&input(&odd), Purpose::Delete).unwrap();
    assert_eq!(docs[0].id(), "listener/db");
    assert!(parse(&input(&odd), Purpose::Apply).is_err());
}

fn site_folder() -> (tempfile::TempDir, SiteFolder) {
    skiff_certs::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let folder = SiteFolder::new(dir.path().join("west"));
    site::create_site(
        &folder,
        "west",
        &SiteOptions {
            link_access: true,
            link_hosts: vec![],
            link_port: Some(0),
            edge: false,
        },
    )
    .unwrap();
    (dir, folder)
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
                out.push((p, vec![]));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn apply_text(folder: &SiteFolder, text: &str) -> Result<Vec<String>, ApplyError> {
    let docs = parse(&input(text), Purpose::Apply).map_err(ApplyError::Invalid)?;
    let outcomes = apply(folder, &docs, |_| {})?;
    Ok(outcomes.iter().map(|o| o.to_string()).collect())
}

#[test]
fn apply_creates_configures_and_leaves_unchanged() {
    let (_dir, folder) = site_folder();
    let web = listener("web", "  routingKey: web\n  port: 8080\n");
    let db = format!(
        "{HEAD}kind: Connector\nmetadata: {{name: db}}\nspec: {{routingKey: db, host: db.internal, port: 5432, type: http}}\n"
    );
    let both = format!("{web}---\n{db}");
    assert_eq!(
        apply_text(&folder, &both).unwrap(),
        ["listener/web created", "connector/db created"]
    );
    assert_eq!(
        apply_text(&folder, &both).unwrap(),
        ["listener/web unchanged", "connector/db unchanged"]
    );
    let moved = both.replace("8080", "8081");
    assert_eq!(
        apply_text(&folder, &moved).unwrap(),
        ["listener/web configured", "connector/db unchanged"]
    );
    let l = services::list_listeners(&folder).unwrap();
    assert_eq!(l[0].spec.port, 8081);

    // What get gives back applies unchanged, byte for byte.
    let mut all = get(&folder, GetKind::Listeners, None).unwrap();
    all.extend(get(&folder, GetKind::Connectors, None).unwrap());
    all.extend(get(&folder, GetKind::Site, None).unwrap());
    let stream = to_yaml_stream(&all);
    assert_eq!(
        apply_text(&folder, &stream).unwrap(),
        [
            "listener/web unchanged",
            "connector/db unchanged",
            "site/west unchanged"
        ]
    );
    let err = get(&folder, GetKind::Listeners, Some("nope")).unwrap_err();
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn nothing_is_written_when_one_document_fails_against_the_site() {
    let (_dir, folder) = site_folder();
    let before = snapshot(folder.root());
    let web = listener("web", "  routingKey: web\n  port: 8080\n");
    let other_site =
        format!("{HEAD}kind: Site\nmetadata:\n  name: east\nspec:\n  linkAccess: true\n");
    let err = apply_text(&folder, &format!("{web}---\n{other_site}")).unwrap_err();
    let ApplyError::Invalid(p) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (p[0].line, p[0].field.as_deref()),
        (12, Some("metadata.name")),
        "{p:#?}"
    );
    assert!(p[0].message.contains("holds site \"west\""), "{}", p[0]);
    let wrong_id = format!(
        "{HEAD}kind: Site\nmetadata:\n  name: west\nspec:\n  id: {}\n",
        SiteId::random()
    );
    let ApplyError::Invalid(p) = apply_text(&folder, &format!("{web}---\n{wrong_id}")).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        (p[0].line, p[0].field.as_deref()),
        (14, Some("spec.id")),
        "{p:#?}"
    );
    let edge_and_access = format!(
        "{HEAD}kind: Site\nmetadata:\n  name: west\nspec:\n  edge: true\n  linkAccess: true\n"
    );
    let ApplyError::Invalid(p) = apply_text(&folder, &edge_and_access).unwrap_err() else {
        panic!()
    };
    assert_eq!(p[0].field.as_deref(), Some("spec.edge"), "{p:#?}");
    // A link host no certificate can name: refused while planning, not after the listener
    // before it was written (the router certificate is issued only when writing).
    for bad in ["bad!host", "a..b", "exämple.org"] {
        let bad_host = format!(
            "{HEAD}kind: Site\nmetadata:\n  name: west\nspec:\n  linkAccess: true\n  linkHosts: [\"{bad}\"]\n"
        );
        let ApplyError::Invalid(p) =
            apply_text(&folder, &format!("{web}---\n{bad_host}")).unwrap_err()
        else {
            panic!("{bad}: not refused as invalid")
        };
        assert_eq!(
            p[0].field.as_deref(),
            Some("spec.linkHosts"),
            "{bad}: {p:#?}"
        );
    }
    // A link made for another site: refused by site::check_link, nothing written.
    let (_other_dir, other) = site_folder();
    let foreign_cert = other.root().join("router.pem");
    let cert = std::fs::read_to_string(foreign_cert).unwrap();
    let ca = std::fs::read_to_string(other.ca_cert_file()).unwrap();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let link = format!(
        "{HEAD}kind: Link\nmetadata:\n  name: east\nspec:\n  peerSiteId: {}\n  endpoints: ['127.0.0.1:1']\n  peerCa: |\n{}  clientCertificate: |\n{}",
        SiteId::random(),
        indent(&ca),
        indent(&cert),
    );
    let ApplyError::Invalid(p) = apply_text(&folder, &format!("{web}---\n{link}")).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(
        p[0].field.as_deref(),
        Some("spec.clientCertificate"),
        "{p:#?}"
    );
    assert!(p[0].message.contains("made for site"), "{}", p[0]);
    assert_eq!(snapshot(folder.root()), before, "something was written");
}

#[test]
fn a_site_document_without_id_updates_the_settings_and_keeps_the_identity() {
    let (_dir, folder) = site_folder();
    let id = site::load_site(&folder).unwrap().id();
    let doc = format!(
        "{HEAD}kind: Site\nmetadata: {{name: west}}\nspec: {{linkAccess: true, linkHosts: [west.example.com], linkPort: 0, certificateOverlap: 1h}}\n"
    );
    assert_eq!(apply_text(&folder, &doc).unwrap(), ["site/west configured"]);
    let s = site::load_site(&folder).unwrap();
    assert_eq!(s.id(), id);
    assert_eq!(s.site.spec.link_hosts, ["west.example.com"]);
    assert_eq!(s.site.spec.certificate_overlap.as_deref(), Some("1h"));
    let router = std::fs::read(folder.router_file()).unwrap();
    assert_eq!(apply_text(&folder, &doc).unwrap(), ["site/west unchanged"]);
    assert_eq!(
        std::fs::read(folder.router_file()).unwrap(),
        router,
        "router.pem rewritten"
    );
    let p = problem(&doc.replace("1h", "soon"));
    assert_eq!(p.field.as_deref(), Some("spec.certificateOverlap"), "{p}");
}

#[test]
fn delete_reports_the_missing_and_deletes_the_others() {
    let (_dir, folder) = site_folder();
    let web = listener("web", "  routingKey: web\n  port: 8080\n");
    apply_text(&folder, &web).unwrap();
    let both = format!(
        "{}---\n{web}",
        listener("gone", "  routingKey: x\n  port: 1\n")
    );
    let docs = parse(&input(&both), Purpose::Delete).unwrap();
    let out: Vec<String> = delete(&folder, &docs, |_| {})
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(out, ["listener/gone not found", "listener/web deleted"]);
    assert!(services::list_listeners(&folder).unwrap().is_empty());
    let site = format!("{HEAD}kind: Site\nmetadata: {{name: west}}\nspec: {{}}\n");
    let docs = parse(&input(&site), Purpose::Delete).unwrap();
    let Err(ApplyError::Invalid(p)) = delete(&folder, &docs, |_| {}) else {
        panic!()
    };
    assert!(p[0].message.contains("skiff site delete"), "{}", p[0]);
}

#[test]
fn a_link_with_a_bad_transport_or_proxy_is_named() {
    let link = |spec: &str| {
        format!(
            "{HEAD}kind: Link\nmetadata: {{name: east}}\nspec:\n  peerSiteId: {}\n  endpoints: ['127.0.0.1:1']\n  peerCa: x\n  clientCertificate: y\n{spec}",
            SiteId::random()
        )
    };
    let p = problem(&link("  transport: udp\n"));
    assert_eq!(
        (p.line, p.field.as_deref()),
        (9, Some("spec.transport")),
        "{p}"
    );
    assert!(p.message.contains("expected quic, tls or auto"), "{p}");
    let p = problem(&link("  proxy: ftp://proxy:3128\n"));
    assert_eq!((p.line, p.field.as_deref()), (9, Some("spec.proxy")), "{p}");
    let p = problem(&link("  transport: quic\n  proxy: http://proxy:3128\n"));
    assert_eq!(p.field.as_deref(), Some("spec.transport"), "{p}");
    assert!(p.message.contains("QUIC is UDP"), "{p}");
}

/// A Link named `name` to the site of `ca`, certified by `signer` for the site `for_site`,
/// carrying its own key (as `skiff link generate` writes it).
fn offline_link(name: &str, ca: &SiteCa, signer: &SiteCa, for_site: SiteId) -> Link {
    let key = skiff_certs::generate_link_key().unwrap();
    let csr = skiff_certs::link_csr(for_site, "west", &key).unwrap();
    let (_, cert) = signer
        .sign_link_csr(&csr, std::time::Duration::from_secs(3600))
        .unwrap();
    let spec = serde_json::from_value(serde_json::json!({
        "peerSiteId": ca.site_id(),
        "peerSiteName": "east",
        "endpoints": ["127.0.0.1:1"],
        "peerCa": ca.cert_pem(),
        "clientCertificate": cert.cert_pem,
        "clientKey": key,
    }))
    .unwrap();
    Link::new(name, spec)
}

/// The problems `apply` finds in `text` against `folder` (which must refuse it).
fn refused(folder: &SiteFolder, text: &str) -> Vec<Problem> {
    match apply_text(folder, text) {
        Err(ApplyError::Invalid(p)) => p,
        other => panic!("not refused as invalid: {other:?}"),
    }
}

use skiff_certs::SiteCa;

#[test]
fn a_certificate_signed_by_another_ca_is_named_at_the_certificate_and_nothing_is_written() {
    let (_dir, folder) = site_folder();
    let west = site::load_site(&folder).unwrap().id();
    let east = SiteCa::generate("east", SiteId::random()).unwrap();
    let other = SiteCa::generate("other", SiteId::random()).unwrap();
    let before = snapshot(folder.root());
    // peerCa is east's, the certificate other's: the certificate is what was swapped.
    let text = to_yaml(&offline_link("east", &east, &other, west));
    let p = refused(&folder, &text);
    assert_eq!(p.len(), 1, "{p:#?}");
    // The value of a block scalar (`clientCertificate: |`) starts on the line after its key.
    let cert_line = 2 + text
        .lines()
        .position(|l| l.trim_start().starts_with("clientCertificate:"))
        .unwrap() as u64;
    assert_eq!(
        (p[0].field.as_deref(), p[0].line),
        (Some("spec.clientCertificate"), cert_line),
        "{p:#?}"
    );
    assert!(
        p[0].message
            .contains("not a valid link certificate signed by spec.peerCa"),
        "{}",
        p[0]
    );
    assert_eq!(snapshot(folder.root()), before, "something was written");
}

#[test]
fn a_link_named_like_one_to_another_site_is_refused_at_its_name() {
    let (_dir, folder) = site_folder();
    let west = site::load_site(&folder).unwrap().id();
    let east = SiteCa::generate("east", SiteId::random()).unwrap();
    let north = SiteCa::generate("north", SiteId::random()).unwrap();
    let first = to_yaml(&offline_link("a", &east, &east, west));
    assert_eq!(apply_text(&folder, &first).unwrap(), ["link/a created"]);
    let before = snapshot(folder.root());
    let second = to_yaml(&offline_link("a", &north, &north, west));
    let p = refused(&folder, &second);
    assert_eq!(p[0].field.as_deref(), Some("metadata.name"), "{p:#?}");
    assert!(
        p[0].message.contains(&format!(
            "link a already links to site east ({})",
            east.site_id()
        )) && p[0].message.contains("delete link/a first"),
        "{}",
        p[0]
    );
    assert_eq!(
        snapshot(folder.root()),
        before,
        "the link to east was replaced"
    );
    // A new certificate for the same peer is still taken.
    let again = to_yaml(&offline_link("a", &east, &east, west));
    assert_eq!(apply_text(&folder, &again).unwrap(), ["link/a configured"]);
}

#[test]
fn an_offline_link_deleted_then_applied_from_get_output_says_its_key_is_gone() {
    let (_dir, folder) = site_folder();
    let west = site::load_site(&folder).unwrap().id();
    let east = SiteCa::generate("east", SiteId::random()).unwrap();
    let text = to_yaml(&offline_link("a", &east, &east, west));
    assert_eq!(apply_text(&folder, &text).unwrap(), ["link/a created"]);
    let got = to_yaml_stream(&get(&folder, GetKind::Links, None).unwrap());
    assert!(
        !got.contains("PRIVATE KEY") && !got.contains("clientKey"),
        "{got}"
    );
    // While the key is there, get's output applies back unchanged.
    assert_eq!(apply_text(&folder, &got).unwrap(), ["link/a unchanged"]);

    let docs = parse(&input(&got), Purpose::Delete).unwrap();
    let deleted = delete(&folder, &docs, |_| {}).unwrap();
    assert_eq!(
        deleted[0].key_deleted.as_deref(),
        Some(folder.link_own_key_file("a").as_path())
    );
    assert!(!folder.link_own_key_file("a").exists());
    let before = snapshot(folder.root());
    let p = refused(&folder, &got);
    assert_eq!(
        p[0].field.as_deref(),
        Some("spec.clientCertificate"),
        "{p:#?}"
    );
    assert!(
        p[0].message
            .contains("link a is an offline link whose key (links/a.key) is gone")
            && p[0].message.contains(&format!(
                "ask site east ({}) to generate a new link file",
                east.site_id()
            )),
        "{}",
        p[0]
    );
    assert_eq!(snapshot(folder.root()), before, "something was written");
}

#[test]
fn a_file_without_end_is_refused_after_the_input_limit() {
    let started = std::time::Instant::now();
    let err = read_path(Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(err.contains("/dev/zero holds more than 16 MiB"), "{err}");
    eprintln!("/dev/zero refused after 16 MiB in {:?}", started.elapsed());
}
