// kube-test-apiserver: a small but real Kubernetes API server for skiff's controller tests.
//
// It is built from k8s.io/apiserver (the library kube-apiserver is made of) with an embedded
// etcd, so clients get the real API machinery: discovery, OpenAPI v2 and v3, watch with
// bookmarks, label and field selectors, optimistic concurrency (409 on a stale
// resourceVersion), server-side apply, dry run, 410 Gone for too old resource versions.
// What it lacks compared to kube-apiserver is listed in README.md.
//
// Usage: kube-test-apiserver --data-dir DIR [--secure-port N] [-v LEVEL]
//
// It serves HTTPS on 127.0.0.1 (port N, or a free one when N is 0). Every request is
// treated as coming from a cluster admin. Once /readyz answers ok it writes DIR/kubeconfig
// (atomically) for the server; etcd data and the certificates live in DIR too, so a restart
// with the same DIR and port keeps all objects and the kubeconfig stays valid. It logs to
// stderr and exits cleanly on SIGTERM or SIGINT.
//
// Test hook: POST /skiff-test/compact compacts etcd to its current revision.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/component-base/compatibility"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"skiff.dev/kube-test-apiserver/openapi"
)

// processStart is when the process started; the "ready" log line says how long it took.
var processStart = time.Now()

func main() {
	klog.InitFlags(nil) // -v N and the other klog flags; klog writes to stderr
	dataDir := flag.String("data-dir", "", "folder for etcd data, certificates and the kubeconfig (required)")
	port := flag.Int("secure-port", 0, "HTTPS port on 127.0.0.1; 0 picks a free one")
	flag.Parse()
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "kube-test-apiserver: --data-dir is required")
		os.Exit(2)
	}
	if err := run(*dataDir, *port); err != nil {
		klog.Errorf("kube-test-apiserver: %v", err)
		klog.Flush()
		os.Exit(1)
	}
	klog.Info("kube-test-apiserver: stopped")
	klog.Flush()
}

// run serves until SIGTERM or SIGINT.
func run(dataDir string, port int) error {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	// A kubeconfig left by an earlier run must not make anyone think this one is ready.
	kubeconfigPath := filepath.Join(dataDir, "kubeconfig")
	if err := os.Remove(kubeconfigPath); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := registerTypes(); err != nil {
		return fmt.Errorf("registering types: %w", err)
	}
	certs, err := ensureServingCerts(dataDir)
	if err != nil {
		return fmt.Errorf("serving certificates: %w", err)
	}
	etcd, err := startEtcd(dataDir)
	if err != nil {
		return err
	}
	defer etcd.close()

	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("listening on 127.0.0.1:%d: %w", port, err)
	}
	port = listener.Addr().(*net.TCPAddr).Port

	server, stores, err := newServer(listener, certs, etcd.clientURL)
	if err != nil {
		return err
	}
	server.Handler.NonGoRestfulMux.HandleFunc("/skiff-test/compact", etcd.compactHandler)
	server.AddPostStartHookOrDie("skiff-default-namespaces", func(ctx genericapiserver.PostStartHookContext) error {
		return createDefaultNamespaces(ctx, stores.namespaces)
	})

	ctx := genericapiserver.SetupSignalContext()
	go func() {
		if err := writeKubeconfigWhenReady(ctx, kubeconfigPath, certs.caFile, port); err != nil {
			klog.Errorf("kubeconfig: %v", err)
		}
	}()
	klog.Infof("kube-test-apiserver: serving on https://127.0.0.1:%d (data in %s)", port, dataDir)
	return server.PrepareRun().RunWithContext(ctx)
}

// servedStores holds the stores other parts of the server need.
type servedStores struct {
	namespaces *resourceStorage
}

// newServer configures the generic API server: serving, authentication (everyone is
// admin), authorization (always allow), OpenAPI, etcd storage, admission, and the API groups.
func newServer(listener net.Listener, certs servingCerts, etcdURL string) (*genericapiserver.GenericAPIServer, servedStores, error) {
	var stores servedStores
	cfg := genericapiserver.NewRecommendedConfig(codecs)
	cfg.EffectiveVersion = compatibility.NewEffectiveVersionFromString(version.Get().GitVersion, "", "")

	// HTTPS with the serving certificate, plus the loopback client the server uses for itself.
	serving := genericoptions.NewSecureServingOptions()
	serving.Listener = listener
	serving.ServerCert.CertKey.CertFile = certs.certFile
	serving.ServerCert.CertKey.KeyFile = certs.keyFile
	if err := serving.WithLoopback().ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return nil, stores, fmt.Errorf("serving options: %w", err)
	}

	// No authentication and no authorization: every request is a cluster admin.
	cfg.Authentication.Authenticator = authenticator.RequestFunc(func(*http.Request) (*authenticator.Response, bool, error) {
		return &authenticator.Response{User: &user.DefaultInfo{
			Name:   "skiff-test-admin",
			Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated},
		}}, true, nil
	})
	cfg.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()

	// OpenAPI v2 and v3 from the definitions openapi-gen generated at build time; server-side
	// apply builds its type information from them.
	namer := openapinamer.NewDefinitionNamer(externalScheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title = "skiff test apiserver"
	cfg.OpenAPIConfig.Info.Version = version.Get().GitVersion
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title = "skiff test apiserver"
	cfg.OpenAPIV3Config.Info.Version = version.Get().GitVersion

	// Storage: JSON in the embedded etcd, each group in its v1 version, behind a watch cache
	// (which sends watch bookmarks). No garbage collector runs, so deletes do not wait for one.
	versions := []schema.GroupVersion{coreV1, discoveryV1, coordinationV1, eventsV1, rbacV1, appsV1}
	storageCodec := codecs.LegacyCodec(versions...)
	etcdOptions := genericoptions.NewEtcdOptions(storagebackend.NewDefaultConfig("/registry", storageCodec))
	etcdOptions.StorageConfig.Transport.ServerList = []string{etcdURL}
	etcdOptions.StorageConfig.EncodeVersioner = schema.GroupVersions(versions)
	etcdOptions.EnableGarbageCollection = false
	etcdOptions.EnableWatchCache = true
	if err := etcdOptions.ApplyTo(&cfg.Config); err != nil {
		return nil, stores, fmt.Errorf("etcd options: %w", err)
	}

	// Shut down quickly: tests restart the server and wait for it. Without
	// ShutdownSendRetryAfter the HTTP server waits up to RequestTimeout for open watches to
	// end; with it, it drains ordinary requests and then gives watches 2 s.
	cfg.ShutdownDelayDuration = 0
	cfg.ShutdownSendRetryAfter = true
	cfg.RequestTimeout = 30 * time.Second

	// Build the stores of every resource, grouped by API group version.
	byGroupVersion := map[schema.GroupVersion]map[string]rest.Storage{}
	var namespaced []*resourceStorage
	for _, r := range resources {
		main, status, err := newStorage(r, cfg.RESTOptionsGetter)
		if err != nil {
			return nil, stores, fmt.Errorf("storage for %s: %w", r.plural, err)
		}
		if byGroupVersion[r.gv] == nil {
			byGroupVersion[r.gv] = map[string]rest.Storage{}
		}
		byGroupVersion[r.gv][r.plural] = main
		if status != nil {
			byGroupVersion[r.gv][r.plural+"/status"] = status
		}
		if r.namespaced {
			namespaced = append(namespaced, main)
		}
		if r.gv == coreV1 && r.plural == "namespaces" {
			stores.namespaces = main
		}
	}
	stores.namespaces.beforeDelete = emptyNamespaceBeforeDelete(namespaced)
	cfg.AdmissionControl = &namespaceExists{namespaces: stores.namespaces.Store}

	server, err := cfg.Complete().New("kube-test-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, stores, fmt.Errorf("creating the server: %w", err)
	}

	// The core group is served under /api, the others under /apis.
	parameterCodec := runtime.NewParameterCodec(scheme)
	core := genericapiserver.NewDefaultAPIGroupInfo("", scheme, parameterCodec, codecs)
	core.VersionedResourcesStorageMap["v1"] = byGroupVersion[coreV1]
	if err := server.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &core); err != nil {
		return nil, stores, fmt.Errorf("installing the core API: %w", err)
	}
	var groups []*genericapiserver.APIGroupInfo
	for _, gv := range versions[1:] {
		info := genericapiserver.NewDefaultAPIGroupInfo(gv.Group, scheme, parameterCodec, codecs)
		info.VersionedResourcesStorageMap[gv.Version] = byGroupVersion[gv]
		groups = append(groups, &info)
	}
	if err := server.InstallAPIGroups(groups...); err != nil {
		return nil, stores, fmt.Errorf("installing the API groups: %w", err)
	}
	return server, stores, nil
}

// createDefaultNamespaces creates the namespaces every cluster has.
func createDefaultNamespaces(ctx context.Context, namespaces *resourceStorage) error {
	for _, name := range []string{"default", "kube-system", "kube-public", "kube-node-lease"} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		// Namespaces are cluster-scoped: the request context carries the empty namespace.
		clusterCtx := genericapirequest.WithNamespace(ctx, metav1.NamespaceNone)
		_, err := namespaces.Create(clusterCtx, ns, rest.ValidateAllObjectFunc, &metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
	}
	return nil
}

// writeKubeconfigWhenReady polls /readyz until it answers ok, then writes the kubeconfig.
func writeKubeconfigWhenReady(ctx context.Context, path, caFile string, port int) error {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	for {
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	kubeconfig := fmt.Sprintf(`# Written by kube-test-apiserver once /readyz answered ok.
apiVersion: v1
kind: Config
clusters:
- name: skiff-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: skiff-test-admin
  user:
    token: skiff-test-admin
contexts:
- name: skiff-test
  context:
    cluster: skiff-test
    user: skiff-test-admin
    namespace: default
current-context: skiff-test
`, server, base64.StdEncoding.EncodeToString(caPEM))
	if err := writeFileAtomically(path, []byte(kubeconfig), 0o600); err != nil {
		return err
	}
	klog.Infof("kube-test-apiserver: ready after %v, kubeconfig in %s", time.Since(processStart).Round(time.Millisecond), path)
	return nil
}
