"""Why a file cannot be virtualized: the classes its failure record names.

Each says what is wrong with the file, not which library tripped over it: a parser's own
``KeyError`` or ``OSError`` on a corrupt file becomes a :class:`MalformedFileError` whose message
keeps the original class and text.
"""

from __future__ import annotations


class UnusableFileError(ValueError):
    """A file that can never be virtualized as it is (empty, truncated, no data, bad format)."""


class EmptyFileError(UnusableFileError):
    pass


class TruncatedFileError(UnusableFileError):
    pass


class NoDataVariablesError(UnusableFileError):
    pass


class UnknownFormatError(UnusableFileError):
    pass


class TimeDecodingError(UnusableFileError):
    pass


class MalformedFileError(UnusableFileError):
    """The file's structure is broken or contradicts itself: its parser could not read it, or
    what it read does not make a dataset."""


class FixFailedError(UnusableFileError):
    """A ``virtualization.fixes`` function raised on this file."""


class UnstorableAttributeError(UnusableFileError):
    """An attribute Zarr's JSON cannot hold in a form readers decode as the source's reader
    does (a non-finite ``scale_factor``, an infinite ``missing_value``)."""


class InvalidMetadataError(UnusableFileError):
    """A Zarr document built for the file is not strict JSON (the store would refuse it)."""


class RefusedByStoreError(UnusableFileError):
    """The store refused this file's group at write time; its message says why."""
