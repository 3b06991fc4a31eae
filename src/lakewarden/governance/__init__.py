"""Governance: what an agent may do (policy), the security defaults, and quality gates."""
