from memo.db.models import (
    Base,
    Chunk,
    Collection,
    Document,
    DocumentStatus,
    ExecutiveConfig,
    Job,
    JobKind,
    JobState,
    MemoryVersion,
    Reflection,
    VersionStatus,
)
from memo.db.session import Database

__all__ = [
    "Base",
    "Chunk",
    "Collection",
    "Database",
    "Document",
    "DocumentStatus",
    "ExecutiveConfig",
    "Job",
    "JobKind",
    "JobState",
    "MemoryVersion",
    "Reflection",
    "VersionStatus",
]
