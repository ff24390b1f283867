//go:build tools

// Package tools pins the KubeRay operator that `make cluster` builds.
package tools

import _ "github.com/ray-project/kuberay/ray-operator"
