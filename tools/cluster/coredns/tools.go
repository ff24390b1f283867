//go:build tools

// Package tools pins the CoreDNS that `make cluster` builds.
package tools

import _ "github.com/coredns/coredns"
