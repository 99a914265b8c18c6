"""Subcommands of the ``zeroproof`` tool (see :mod:`zeroproof.cli`)."""
