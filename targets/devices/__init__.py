"""Devices: the capability registry (profiles/*.yaml), cluster.yaml parsing and measured profiles. No TVM."""
