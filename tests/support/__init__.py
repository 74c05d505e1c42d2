"""Helpers shared by test modules (not fixtures: plain functions and context managers)."""
