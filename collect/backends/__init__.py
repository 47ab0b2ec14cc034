"""Measurement backends: each turns a configuration into measurement rows in the schema."""
