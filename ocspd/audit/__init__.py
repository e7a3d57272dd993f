"""The tamper-evident audit trail (AA7.1, AA7.2): MAC keys and the hash chain.

Storage-agnostic: ocspd/store/audit.py keeps the operator's records in audit_events; other
tables of chained records (the responder's request log) reuse the same key and chain code.
"""
