"""Materialized ingest: files a reader turns into datasets, written as real chunks along a time axis.

Virtual ingest stores references; files that cannot be referenced (GNSS RINEX is text) are read,
encoded and written instead. The modules split the work the usual way: :mod:`.grid` and
:mod:`.placement` are pure (times and the store's state in, indices and decisions out),
:mod:`.readers` turns a file into a dataset, :mod:`.tasks` runs on Dask workers, :mod:`.layout` and
:mod:`.registry` own the store's arrays and file registry, and :mod:`.run` drives one batch.
"""
