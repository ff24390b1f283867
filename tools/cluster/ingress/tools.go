//go:build tools

// Package tools pins the Traefik ingress controller that `make cluster` builds.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
