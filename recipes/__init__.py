"""The facts, as data (installed as provision.recipes): backends, torch indexes, llama.cpp flags,
resolver targets, serve rules. Read through provision.backends and provision.planner.recipes."""
