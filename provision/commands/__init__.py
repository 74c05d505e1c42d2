"""The CLI's subcommands, one module each, loaded by name from provision.cli.COMMANDS.

Their shared options are in provision/commands/options.py; their one-line help is in the table.
"""
