//! The auditor's side (filled in by the audit issue).
