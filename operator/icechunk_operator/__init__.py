"""icechunk-operator: versioned, virtual Icechunk stores of NetCDF/HDF5 archives."""

__version__ = "0.1.0"
