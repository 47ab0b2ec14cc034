"""Importers of the shared measurement data sets: each is a pure function `path -> (DataFrame, ImportReport)`."""
