"""nndeploy.proto: the wire formats (generated Python from the .proto sources here)."""
