//go:build tools

// Package tools pins the Kubernetes control-plane commands that the test
// harness runs; build.sh adds the go.mod (with the staging-module replaces
// derived from the upstream go.mod) and builds these packages.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
