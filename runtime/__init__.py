"""nndeploy.runtime: stage workers, their wiring and supervision, and the inference endpoint."""
