"""State archives behind one small interface: a local directory by default."""

from profiles.blobs.base import BlobInfo, BlobStore
from profiles.blobs.local import LocalBlobStore

__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore"]
