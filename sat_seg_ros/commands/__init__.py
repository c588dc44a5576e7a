"""Subcommands of the ``sat-seg`` command line; each module has HELP, add_arguments() and run()."""
