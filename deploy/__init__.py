"""nndeploy.deploy: Kubernetes manifests for a plan."""
