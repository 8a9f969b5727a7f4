// The embedded etcd that stores the test API server's objects, and the test hook that
// compacts it.
//
// etcd keeps its data in DATA_DIR/etcd, so a restart on the same data directory keeps every
// object and its resourceVersion. It listens on free loopback ports chosen at each start.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"k8s.io/klog/v2"
)

// The peer URL etcd advertises. A single member never dials it, but it is part of the
// member's identity stored in the data directory, so it must not change between restarts,
// while the port etcd actually listens on for peers does.
const etcdAdvertisedPeerURL = "http://127.0.0.1:2380"

// embeddedEtcd is a running single-member etcd.
type embeddedEtcd struct {
	etcd      *embed.Etcd
	clientURL string           // what the API server's storage layer dials
	client    *clientv3.Client // an in-process client, for the compaction hook
}

// startEtcd starts etcd with its data in dataDir/etcd and waits until it serves.
func startEtcd(dataDir string) (*embeddedEtcd, error) {
	clientPort, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	advertisedPeerURL, _ := url.Parse(etcdAdvertisedPeerURL)

	cfg := embed.NewConfig()
	cfg.Name = "skiff-test"
	cfg.Dir = filepath.Join(dataDir, "etcd")
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*advertisedPeerURL}
	cfg.InitialCluster = cfg.Name + "=" + etcdAdvertisedPeerURL
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"stderr"}
	// Tests do not survive machine crashes anyway; skipping fsync makes writes much faster.
	// A clean exit or a killed process still keeps everything (the page cache survives).
	cfg.UnsafeNoFsync = true
	// etcd tells watchers its current revision every interval (10 min by default). The API
	// server's watch cache sends clients bookmarks only once it has seen an event or such a
	// progress notification, so without this a quiet test server would never send any.
	cfg.ExperimentalWatchProgressNotifyInterval = 2 * time.Second

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd did not become ready within 60 s")
	}
	klog.Infof("etcd serves on %s (data in %s)", clientURL.String(), cfg.Dir)
	return &embeddedEtcd{etcd: e, clientURL: clientURL.String(), client: v3client.New(e.Server)}, nil
}

// close stops etcd, flushing its data.
func (e *embeddedEtcd) close() {
	_ = e.client.Close()
	e.etcd.Close()
}

// compact compacts etcd's history up to the current revision and returns that revision.
// Afterwards, reads and watches at an older revision fail with "required revision has been
// compacted", which the API server turns into 410 Gone once its watch cache no longer holds
// those events (that is, after a restart).
func (e *embeddedEtcd) compact(ctx context.Context) (int64, error) {
	// Any read returns the store's current revision in its header.
	resp, err := e.client.Get(ctx, "compact-revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	rev := resp.Header.Revision
	if _, err := e.client.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		return 0, err
	}
	return rev, nil
}

// compactHandler serves POST /skiff-test/compact: compacts etcd, answers with the revision.
func (e *embeddedEtcd) compactHandler(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	rev, err := e.compact(r.Context())
	if err != nil {
		klog.Errorf("compacting etcd: %v", err)
		http.Error(w, "compacting etcd: "+err.Error(), http.StatusInternalServerError)
		return
	}
	klog.Infof("compacted etcd to revision %d", rev)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"compactedRevision\":%d}\n", rev)
}

// freeLoopbackPort asks the kernel for a free TCP port on 127.0.0.1.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
