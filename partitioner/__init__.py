"""nndeploy.partitioner: cost model, optimal stage search, and cutting a plan into stage models."""
