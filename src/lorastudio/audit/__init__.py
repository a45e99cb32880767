"""Dataset audit: caption lint rules, pixel / CLIP / tagger detectors, style contamination."""

from lorastudio.audit.run import AuditOptions, AuditResult, audit_dataset

__all__ = ["AuditOptions", "AuditResult", "audit_dataset"]
