// TLS material of the test API server: a CA and a serving certificate signed by it.
//
// Both live in the data directory, so a restart on the same directory serves the same
// certificate and an existing kubeconfig stays valid. The serving certificate is a proper
// leaf (not a self-signed CA used as a leaf), because rustls/webpki, which kube-rs uses,
// rejects a CA certificate presented as the server's end-entity certificate.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// servingCerts are the paths of the PEM files the server uses.
type servingCerts struct {
	caFile   string // the CA that signed certFile; goes into the kubeconfig
	certFile string // the serving certificate (leaf) for 127.0.0.1 and localhost
	keyFile  string // the serving certificate's private key
}

// ensureServingCerts returns the certificates in dir, creating them on first use.
func ensureServingCerts(dir string) (servingCerts, error) {
	c := servingCerts{
		caFile:   filepath.Join(dir, "ca.crt"),
		certFile: filepath.Join(dir, "serving.crt"),
		keyFile:  filepath.Join(dir, "serving.key"),
	}
	if fileExists(c.caFile) && fileExists(c.certFile) && fileExists(c.keyFile) {
		return c, nil
	}

	// The CA: only ever used to sign the one serving certificate; its key is not kept.
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "skiff test apiserver CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return c, fmt.Errorf("creating the CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return c, err
	}

	// The serving certificate: an end-entity certificate for loopback only.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	leafTemplate := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTemplate, caCert, &key.PublicKey, caKey)
	if err != nil {
		return c, fmt.Errorf("creating the serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return c, err
	}

	// The CA file is written last: its presence means the set is complete.
	if err := writePEM(c.keyFile, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return c, err
	}
	if err := writePEM(c.certFile, "CERTIFICATE", leafDER, 0o644); err != nil {
		return c, err
	}
	if err := writePEM(c.caFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return c, err
	}
	return c, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	return writeFileAtomically(path, data, mode)
}

// writeFileAtomically writes a temporary file beside path and renames it over path, so a
// reader sees either the old content or the whole new content.
func writeFileAtomically(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
