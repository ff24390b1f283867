"""The Ray Serve layer: stage deployments, the gateway and the application builder."""
