"""Conformance cases, one module per operator family; each calls ``kit.case``."""
