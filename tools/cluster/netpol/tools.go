//go:build tools

// Package tools pins kube-router, whose network policy controller `make cluster` runs alone
// (no routing, no service proxy) so that the chart's NetworkPolicy is enforced.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
