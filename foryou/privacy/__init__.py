"""User-data protection (docs/privacy.md): what the engine holds about a user, and the user's rights
over it. So far: the export (right of access and portability) and the tamper-evident audit log."""

from foryou.privacy.audit import AuditLog, verify
from foryou.privacy.export import ExportService

__all__ = ["AuditLog", "ExportService", "verify"]
