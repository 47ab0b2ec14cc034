"""Measurement: backends (vLLM, torch, replay), importers of public data, the store, sampler and campaigns."""
