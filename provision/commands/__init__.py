"""The CLI's subcommands, one module each, loaded by name from the table in provision/commands/registry.py.

Their shared options are in provision/commands/options.py; their one-line help is in the table.
"""
