"""Environments shipped with hybrid_pg, installed as ``hybrid_pg_envs``."""
