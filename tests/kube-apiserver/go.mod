// Not a module build: build.sh compiles this folder in GOPATH mode against Debian's Go
// packages. This file only lets the go command resolve the /v3 import paths of etcd
// ("minimal module compatibility" applies to code that has a go.mod).
module skiff.dev/kube-test-apiserver

go 1.26
